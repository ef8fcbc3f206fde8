"""The agent's configuration: one YAML file, validated by pydantic models, reported precisely.

Every problem becomes one line ``{file}:{line}: {key.path}: {reason}``; all of them are
collected before the user sees any. Secrets are never written in the file: they come from
``*_file`` keys, environment variables or systemd credentials (``$CREDENTIALS_DIRECTORY``),
and live in the models only as ``SecretStr``.

- ``units``: durations and sizes; ``base``: the strict section base and value types;
- ``secrets``: where secrets come from; ``detectors``: detector and baseline settings;
- ``models``: the sections, from ``AgentConfig`` down; ``loader``: YAML with line numbers.
"""

from agent.config.detectors import (
    BaselineShiftConfig,
    BaselineSpecConfig,
    CusumConfig,
    DetectorConfig,
    EwmaConfig,
    InvalidRateConfig,
    SlopeConfig,
    StaleConfig,
    StuckConfig,
    VarianceChangeConfig,
)
from agent.config.loader import config_from_dict, load_config, read_yaml
from agent.config.models import (
    AgentConfig,
    AlertsConfig,
    ChannelConfig,
    ColorConfig,
    HistoryConfig,
    InfluxConfig,
    InputLimitsConfig,
    LogConfig,
    LotsConfig,
    ModbusDeviceConfig,
    ModbusSourceConfig,
    MqttConfig,
    MqttSourceConfig,
    SelfMetricsConfig,
    SerialSourceConfig,
    SimulatedSourceConfig,
    SourceConfig,
    SpoolConfig,
)
from agent.config.units import parse_duration, parse_size

__all__ = [
    "AgentConfig",
    "AlertsConfig",
    "BaselineShiftConfig",
    "BaselineSpecConfig",
    "ChannelConfig",
    "ColorConfig",
    "CusumConfig",
    "DetectorConfig",
    "EwmaConfig",
    "HistoryConfig",
    "InfluxConfig",
    "InputLimitsConfig",
    "InvalidRateConfig",
    "LogConfig",
    "LotsConfig",
    "ModbusDeviceConfig",
    "ModbusSourceConfig",
    "MqttConfig",
    "MqttSourceConfig",
    "SelfMetricsConfig",
    "SerialSourceConfig",
    "SimulatedSourceConfig",
    "SlopeConfig",
    "SourceConfig",
    "SpoolConfig",
    "StaleConfig",
    "StuckConfig",
    "VarianceChangeConfig",
    "config_from_dict",
    "load_config",
    "parse_duration",
    "parse_size",
    "read_yaml",
]
