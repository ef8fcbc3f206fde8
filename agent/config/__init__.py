"""The agent's configuration: one YAML file, validated by pydantic models, reported precisely.

Every problem becomes one line ``{file}:{line}: {key.path}: {reason}``; all of them are
collected before the user sees any. Secrets are never written in the file: they come from
``*_file`` keys, environment variables or systemd credentials (``$CREDENTIALS_DIRECTORY``),
and live in the models only as ``SecretStr``.
"""

import difflib
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from agent.errors import ConfigError

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
    "InfluxConfig",
    "InvalidRateConfig",
    "LogConfig",
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
    "check_config_command",
    "config_from_dict",
    "load_config",
    "parse_duration",
    "parse_size",
]

Loc = tuple[int | str, ...]

# --------------------------------------------------------------------------- durations, sizes

_DURATION_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "w": 604800.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]+)\s*")
_DURATION_HINT = "use e.g. 30s, 5m, 2h, 7d"

_SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)")
_SIZE_HINT = "use e.g. 512MiB, 1GB, 64KiB or a number of bytes"


def parse_duration(v: str | float | int) -> float:
    """Seconds from ``30s``, ``5m``, ``2h``, ``7d``, ``250ms``, ``1h30m`` or a number of seconds."""
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise ValueError(f"{v!r} is not a duration: {_DURATION_HINT}")
    if isinstance(v, int | float):
        seconds = float(v)
    else:
        text = v.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_duration_text(v, text)
    if not math.isfinite(seconds):
        raise ValueError(f"{v!r} is not a duration: {_DURATION_HINT}")
    if seconds < 0:
        raise ValueError(f"{v!r} is not a duration: it must not be negative")
    return seconds


def _parse_duration_text(original: str, text: str) -> float:
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(text):
        unit = _DURATION_UNITS.get(match.group(2))
        if match.start() != pos or unit is None:
            break
        total += float(match.group(1)) * unit
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"{original!r} is not a duration: {_DURATION_HINT}")
    return total


def parse_size(v: str | int) -> int:
    """Bytes from ``512MiB``, ``1GB``, ``64KiB`` or a whole number of bytes."""
    value: object = v  # YAML may hand over a float or anything else despite the signature
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{v!r} is not a size: {_SIZE_HINT}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{v!r} is not a size: a number of bytes must be whole")
        value = int(value)
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip().lower())
        unit = _SIZE_UNITS.get(match.group(2) or "b") if match else None
        if match is None or unit is None:
            raise ValueError(f"{v!r} is not a size: {_SIZE_HINT}")
        number = float(match.group(1))
        if unit == 1 and not number.is_integer():
            raise ValueError(f"{v!r} is not a size: a number of bytes must be whole")
        size = round(number * unit)
    if size < 0:
        raise ValueError(f"{v!r} is not a size: it must not be negative")
    return size


# --------------------------------------------------------------------------- validation plumbing


@dataclass
class _Loading:
    """What validation needs beyond the data: where relative paths start, the environment."""

    base_dir: Path | None
    env: Mapping[str, str]
    secrets: dict[Path, str] = field(default_factory=dict)
    fields: dict[int, tuple[str, ...]] = field(default_factory=dict)


_CONTEXT_KEY = "driftgate"
_SECRET_FIELDS = frozenset({"password", "token"})


def _loading(info: ValidationInfo) -> _Loading | None:
    context = info.context
    if isinstance(context, dict):
        found = context.get(_CONTEXT_KEY)
        if isinstance(found, _Loading):
            return found
    return None


def _reason(text: str) -> PydanticCustomError:
    # The text goes in through ctx so that braces in user values are not read as placeholders.
    return PydanticCustomError("driftgate", "{reason}", {"reason": text})


def _raise_problems(title: str, problems: list[tuple[Loc, str]]) -> None:
    """Raise several located problems at once; pydantic prefixes each loc with the model's."""
    if problems:
        details = [
            InitErrorDetails(type=_reason(text), loc=loc, input=None) for loc, text in problems
        ]
        raise ValidationError.from_exception_data(title, details)


def _to_duration(v: Any) -> float:
    try:
        return parse_duration(v)
    except ValueError as exc:
        raise _reason(str(exc)) from None


def _to_size(v: Any) -> int:
    try:
        return parse_size(v)
    except ValueError as exc:
        raise _reason(str(exc)) from None


def _positive_duration(v: float) -> float:
    if v <= 0:
        raise _reason("must be longer than zero")
    return v


def _positive(v: float) -> float:
    if v <= 0:
        raise _reason(f"must be greater than 0, got {v:g}")
    return v


def _at_least_one_mib(v: int) -> int:
    if v < 1024**2:
        raise _reason(f"must be at least 1MiB, got {v} bytes")
    return v


def _non_blank(v: str) -> str:
    if not v.strip():
        raise _reason("must not be empty")
    return v


def _name(v: str) -> str:
    if not v.strip():
        raise _reason("must not be empty")
    if any(c.isspace() for c in v):
        raise _reason(f"{v!r} contains whitespace: use e.g. edge_paint.humidity")
    return v


def _aware(v: datetime) -> datetime:
    if v.tzinfo is None or v.utcoffset() is None:
        raise _reason(
            f"'{v.isoformat()}' has no timezone: write e.g. 2024-03-01T08:00:00+01:00 "
            "or 2024-03-01T07:00:00Z"
        )
    return v


def _config_path(v: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the config file's directory, not to the cwd."""
    loading = _loading(info)
    if loading is not None and loading.base_dir is not None and not v.is_absolute():
        return loading.base_dir / v
    return v


def _existing_file(v: Path, info: ValidationInfo) -> Path:
    if _loading(info) is not None and not v.is_file():
        raise _reason(f"file {v} does not exist or is not a regular file")
    return v


def _secret_file(v: Path, info: ValidationInfo) -> Path:
    loading = _loading(info)
    if loading is not None:
        loading.secrets[v] = _read_secret(v)
    return v


def _read_secret(path: Path) -> str:
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise _reason(f"cannot read secret file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _reason(f"secret file {path} is not UTF-8 text") from None
    if not secret:
        raise _reason(f"secret file {path} is empty")
    return secret


Duration = Annotated[float, BeforeValidator(_to_duration)]
PositiveDuration = Annotated[
    float, BeforeValidator(_to_duration), AfterValidator(_positive_duration)
]
Size = Annotated[int, BeforeValidator(_to_size)]
NonBlank = Annotated[str, AfterValidator(_non_blank)]
Name = Annotated[str, AfterValidator(_name)]
ConfigPath = Annotated[Path, AfterValidator(_config_path)]
ExistingFile = Annotated[Path, AfterValidator(_config_path), AfterValidator(_existing_file)]
SecretFile = Annotated[Path, AfterValidator(_config_path), AfterValidator(_secret_file)]
Direction = Literal["up", "down", "both"]


class _Section(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _note_keys(cls, data: Any, info: ValidationInfo) -> Any:
        # Remembered per input mapping so that an unknown key can be answered with "did you mean".
        loading = _loading(info)
        if loading is not None and isinstance(data, dict):
            loading.fields[id(data)] = tuple(k for k in cls.model_fields if k not in _SECRET_FIELDS)
        return data


def _inline_secret(info: ValidationInfo, env_var: str, credential: str) -> PydanticCustomError:
    key = info.field_name or "password"
    return _reason(
        f"inline secrets are not allowed: put the {key} in a file only the driftgate user can "
        f"read and set {key}_file: /etc/driftgate/{credential.replace('_', '-')}, or set the "
        f"environment variable {env_var}, or use systemd "
        f"LoadCredential={credential}:/etc/driftgate/{credential.replace('_', '-')}"
    )


def _find_secret(
    loading: _Loading,
    secret_file: Path | None,
    env_var: str,
    credential: str,
    problems: list[tuple[Loc, str]],
) -> SecretStr | None:
    """The secret from its file key, else the environment variable, else the systemd credential."""
    if secret_file is not None:
        return SecretStr(loading.secrets[secret_file]) if secret_file in loading.secrets else None
    if env_var in loading.env:
        if not loading.env[env_var]:
            problems.append(((), f"environment variable {env_var} is set but empty"))
            return None
        return SecretStr(loading.env[env_var])
    credentials_dir = loading.env.get("CREDENTIALS_DIRECTORY")
    if credentials_dir:
        path = Path(credentials_dir) / credential
        if path.exists():
            try:
                return SecretStr(_read_secret(path))
            except PydanticCustomError as exc:
                problems.append(((), exc.message()))
    return None


# --------------------------------------------------------------------------- the models


class LogConfig(_Section):
    """How the agent logs: level and format (auto = console on a terminal, JSON under systemd)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class SimulatedSourceConfig(_Section):
    """A simulated workshop that produces realistic readings, optionally faster than real time."""

    type: Literal["simulated"]
    name: Name
    scenario: Literal["workshop"] = "workshop"
    speed: Annotated[float, AfterValidator(_positive)] = Field(
        default=1.0, description="simulated seconds per wall-clock second"
    )
    start: Annotated[datetime, AfterValidator(_aware)] | None = None
    days: Annotated[float, AfterValidator(_positive)] | None = Field(
        default=None, description="stop after this much simulated time"
    )
    seed: int = 1
    interval: PositiveDuration = Field(
        default=60.0, description="simulated seconds between samples"
    )


class _DeviceSource(_Section):
    """What every real-device source shares: the profile and where the device is."""

    name: Name
    profile: NonBlank = Field(description="device profile: a firmware_configs name or a path")
    zone: NonBlank | None = None
    line: NonBlank | None = None
    station: NonBlank | None = None
    sensor: NonBlank | None = Field(default=None, description="sensor id if frames carry none")
    tags: dict[NonBlank, NonBlank] = Field(default_factory=dict)
    channel_prefix: NonBlank | None = Field(
        default=None, description="channel names start with this (default: zone, else name)"
    )

    def base_tags(self) -> dict[str, str]:
        """The location tags this source puts on every reading."""
        out = dict(self.tags)
        for key in ("zone", "line", "station", "sensor"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def prefix(self) -> str:
        """The first part of this source's channel names."""
        return self.channel_prefix or self.zone or self.name


class SerialSourceConfig(_DeviceSource):
    """A device on a serial port (USB or RS-485 adapter); use /dev/serial/by-id/... paths."""

    type: Literal["serial"]
    port: NonBlank
    baud: Annotated[int, Field(ge=50, le=4_000_000)] = 115200
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    reconnect_max: PositiveDuration = Field(default=5.0, description="longest reconnect wait")


class MqttSourceConfig(_DeviceSource):
    """Devices publishing to the broker in `mqtt:` (ESPHome, Tasmota, custom JSON)."""

    type: Literal["mqtt"]
    topics: list[NonBlank] = Field(
        default_factory=list,
        description="subscriptions; {name} segments become tags (default: the profile's)",
    )
    qos: Literal[0, 1, 2] = 1


SourceConfig = Annotated[
    SimulatedSourceConfig | SerialSourceConfig | MqttSourceConfig, Field(discriminator="type")
]
_SOURCE_TYPES = ("simulated", "serial", "mqtt")


class _Timing(_Section):
    """How long a condition must hold before an alert, and before it clears."""

    hold: Duration = 0.0
    clear_hold: Duration | None = Field(default=None, description="None: same as hold")


class _ThresholdDetector(_Timing):
    """Settings shared by detectors that compare a drift figure against warn/alarm thresholds."""

    window: PositiveDuration
    warn: Annotated[float, AfterValidator(_positive)]
    alarm: float | None = None
    units: Literal["abs", "sigma"] = Field(
        default="abs",
        description="abs: thresholds in the channel's units; sigma: in baseline std devs",
    )
    direction: Direction = "both"
    hysteresis: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="in the thresholds' units; None: 10% of warn"
    )
    min_samples: Annotated[int, Field(ge=2)] = 10
    max_samples: Annotated[int, Field(le=10_000_000)] = Field(
        default=100_000, description="ring buffer capacity"
    )

    @property
    def effective_clear_hold(self) -> float:
        """Seconds the condition must be gone before the alert clears."""
        return self.hold if self.clear_hold is None else self.clear_hold

    @property
    def effective_hysteresis(self) -> float:
        """How far back below a threshold the figure must come to step down."""
        return 0.1 * self.warn if self.hysteresis is None else self.hysteresis

    @model_validator(mode="after")
    def _check_thresholds(self) -> "_ThresholdDetector":
        problems: list[tuple[Loc, str]] = []
        if self.alarm is not None and self.alarm <= self.warn:
            problems.append(
                (("alarm",), f"alarm ({self.alarm:g}) must be greater than warn ({self.warn:g})")
            )
        if self.hysteresis is not None and self.hysteresis >= self.warn:
            problems.append(
                (
                    ("hysteresis",),
                    f"hysteresis ({self.hysteresis:g}) must be smaller than warn ({self.warn:g}), "
                    "or the alert could never clear",
                )
            )
        if self.max_samples < self.min_samples:
            problems.append(
                (
                    ("max_samples",),
                    f"max_samples ({self.max_samples}) must be at least "
                    f"min_samples ({self.min_samples})",
                )
            )
        _raise_problems(type(self).__name__, problems)
        return self


class BaselineShiftConfig(_ThresholdDetector):
    """Alert when the recent mean moves away from the channel's baseline."""

    type: Literal["baseline_shift"]


class SlopeConfig(_ThresholdDetector):
    """Alert when the trend over a window is steeper than warn/alarm (units, or sigmas, per h)."""

    type: Literal["slope"]


class VarianceChangeConfig(_ThresholdDetector):
    """Alert when the rolling std departs from the baseline's (warn/alarm are ratios, e.g. 1.5)."""

    type: Literal["variance_change"]


class _NoWindow(_Timing):
    """Threshold settings for detectors without a window of their own."""

    warn: Annotated[float, AfterValidator(_positive)]
    alarm: float | None = None
    direction: Direction = "both"
    hysteresis: Annotated[float, Field(ge=0)] | None = None
    min_samples: Annotated[int, Field(ge=2)] = 10

    @model_validator(mode="after")
    def _check_alarm(self) -> "_NoWindow":
        if self.alarm is not None and self.alarm <= self.warn:
            _raise_problems(
                type(self).__name__,
                [(("alarm",), f"alarm ({self.alarm:g}) must be greater than warn ({self.warn:g})")],
            )
        return self


class CusumConfig(_NoWindow):
    """Two-sided tabular CUSUM of standardised readings (k, and warn/alarm = h, in σ)."""

    type: Literal["cusum"]
    k: Annotated[float, Field(ge=0)] = Field(default=0.5, description="allowance, in sigmas")


class EwmaConfig(_NoWindow):
    """EWMA control chart: alert when the EWMA leaves baseline ± L·σ_ewma (warn/alarm = L)."""

    type: Literal["ewma"]
    lam: Annotated[float, Field(gt=0, le=1)] = Field(default=0.05, description="λ, the weight")


class StaleConfig(_Section):
    """Alert when no reading arrived for max_gap (sensor or link down)."""

    type: Literal["stale"]
    max_gap: PositiveDuration


class StuckConfig(_Timing):
    """Alert when the readings do not change at all over a window (a frozen sensor)."""

    type: Literal["stuck"]
    window: PositiveDuration
    tolerance: Annotated[float, Field(ge=0)] = Field(
        default=0.0, description="a spread (std) at or below this counts as flat"
    )
    min_samples: Annotated[int, Field(ge=2)] = 10
    max_samples: Annotated[int, Field(le=10_000_000)] = 100_000


class InvalidRateConfig(_Timing):
    """Alert when the share of out-of-range readings over a window exceeds warn/alarm (0..1)."""

    type: Literal["invalid_rate"]
    window: PositiveDuration
    warn: Annotated[float, Field(gt=0, le=1)] = 0.05
    alarm: Annotated[float, Field(gt=0, le=1)] | None = 0.2
    min_samples: Annotated[int, Field(ge=1)] = 20
    max_samples: Annotated[int, Field(le=10_000_000)] = 100_000


DetectorConfig = Annotated[
    BaselineShiftConfig
    | SlopeConfig
    | VarianceChangeConfig
    | CusumConfig
    | EwmaConfig
    | StaleConfig
    | StuckConfig
    | InvalidRateConfig,
    Field(discriminator="type"),
]
_DETECTOR_TYPES = (
    "baseline_shift",
    "slope",
    "variance_change",
    "cusum",
    "ewma",
    "stale",
    "stuck",
    "invalid_rate",
)


def _baseline_value(v: Any) -> Any:
    if v is None or (isinstance(v, int | float) and not isinstance(v, bool)):
        return v
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    raise _reason(f"{v!r} is not a baseline value: give a number in the channel's units")


class BaselineSpecConfig(_Section):
    """What a channel's detectors compare against.

    A locked baseline (captured with `driftgate baseline capture`, or learned automatically over
    the first `learn` of readings) when there is one, else the mean and std of a long rolling
    `window`. `value` (and `std`) fix it instead.
    """

    value: Annotated[float | None, BeforeValidator(_baseline_value)] = None
    std: Annotated[float, Field(gt=0)] | None = None
    window: PositiveDuration = 7 * 86400.0
    learn: PositiveDuration | None = Field(
        default=None, description="lock a learned baseline after this much data (None: never)"
    )
    min_samples: Annotated[int, Field(ge=2)] = 30


class ChannelConfig(_Section):
    """One stream of one quantity: what it is, what it affects, and how its drift is judged."""

    name: Name
    label: str = ""
    unit: str = ""
    affects: str = ""
    kind: Literal["climate", "tension", "color"] | None = None
    baseline: BaselineSpecConfig | None = Field(
        default=None, description="None: the defaults for the kind"
    )
    detectors: list[DetectorConfig] | None = Field(
        default=None, description="None: the defaults for the kind; []: no detectors"
    )
    enabled: bool = True
    lot_effect: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="lot comparison: smallest mean difference (units) worth an alert"
    )


class AlertsConfig(_Section):
    """How alert events reach people: console sentences, repeats, flapping suppression."""

    console: bool = True
    repeat: PositiveDuration | None = None
    flap_count: Annotated[int, Field(ge=2)] = Field(
        default=6, description="changes within flap_window that make an alert key flap"
    )
    flap_window: PositiveDuration = 6 * 3600.0


def _http_url(v: str) -> str:
    parts = urlsplit(v.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _reason(f"{v!r} is not an http:// or https:// URL, e.g. http://influxdb.local:8086")
    if parts.username is not None or parts.password is not None:
        # Deliberately not echoing the URL: it holds a credential.
        raise _reason("credentials in the URL are not allowed: use username and password_file")
    return v.strip().rstrip("/")


_INFLUX_V1_KEYS = ("database", "retention_policy", "username", "password_file")
_INFLUX_V2_KEYS = ("org", "bucket", "token_file")


class InfluxConfig(_Section):
    """Where readings and alerts are forwarded: an InfluxDB (1.x, 2.x, 3.x) or compatible server."""

    url: Annotated[str, AfterValidator(_http_url)]
    api: Literal["v1", "v2"] = "v1"
    database: NonBlank | None = None
    retention_policy: NonBlank | None = None
    username: NonBlank | None = None
    password_file: SecretFile | None = None
    org: NonBlank | None = None
    bucket: NonBlank | None = None
    token_file: SecretFile | None = None
    gzip: bool = True
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    flush_interval: PositiveDuration = 1.0
    timeout: PositiveDuration = 10.0
    verify_tls: bool = True
    ca_file: ExistingFile | None = None
    max_backoff: PositiveDuration = 60.0
    password: SecretStr | None = None
    token: SecretStr | None = None

    @field_validator("password", "token", mode="before")
    @classmethod
    def _no_inline_secret(cls, v: Any, info: ValidationInfo) -> Any:
        if _loading(info) is not None:
            if info.field_name == "token":
                raise _inline_secret(info, "DRIFTGATE_INFLUX_TOKEN", "influx_token")
            raise _inline_secret(info, "DRIFTGATE_INFLUX_PASSWORD", "influx_password")
        return v

    @model_validator(mode="after")
    def _check_api_and_secrets(self, info: ValidationInfo) -> "InfluxConfig":
        problems: list[tuple[Loc, str]] = []
        if self.api == "v1":
            if self.database is None:
                problems.append((("database",), "api v1 needs database: the database to write to"))
            problems += [
                ((key,), f"{key} is an api v2 setting; with api v1 use database and password_file")
                for key in _INFLUX_V2_KEYS
                if getattr(self, key) is not None
            ]
        else:
            problems += [
                ((key,), f"api v2 needs {key}")
                for key in ("org", "bucket")
                if getattr(self, key) is None
            ]
            problems += [
                ((key,), f"{key} is an api v1 setting; with api v2 use org, bucket and token_file")
                for key in _INFLUX_V1_KEYS
                if getattr(self, key) is not None
            ]
        loading = _loading(info)
        update: dict[str, SecretStr] = {}
        if loading is not None and not problems:
            if self.api == "v1":
                password = _find_secret(
                    loading,
                    self.password_file,
                    "DRIFTGATE_INFLUX_PASSWORD",
                    "influx_password",
                    problems,
                )
                if password is not None:
                    update["password"] = password
                elif self.username is not None and not problems:
                    problems.append(
                        (
                            ("username",),
                            f"username {self.username!r} is set but no password was found: set "
                            "password_file, or DRIFTGATE_INFLUX_PASSWORD, or systemd "
                            "LoadCredential=influx_password:/etc/driftgate/influx-password",
                        )
                    )
            else:
                token = _find_secret(
                    loading, self.token_file, "DRIFTGATE_INFLUX_TOKEN", "influx_token", problems
                )
                if token is not None:
                    update["token"] = token
        _raise_problems("InfluxConfig", problems)
        return self.model_copy(update=update) if update else self


class MqttConfig(_Section):
    """The MQTT broker the agent talks to (sources and alert publishing)."""

    host: NonBlank
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    username: NonBlank | None = None
    password_file: SecretFile | None = None
    client_id: NonBlank | None = None
    tls: bool = False
    ca_file: ExistingFile | None = None
    cert_file: ExistingFile | None = None
    key_file: ExistingFile | None = None
    keepalive: Annotated[int, Field(ge=1, le=65535)] = 60
    session_expiry: PositiveDuration = Field(
        default=86400.0, description="how long the broker keeps our queue while we are away"
    )
    context_topic: NonBlank | None = Field(
        default=None,
        description="production context updates (default driftgate/<site>/context/#)",
    )
    publish_alerts: bool = Field(
        default=True, description="alert events as JSON on driftgate/<site>/<gateway>/alerts"
    )
    watch_dropped: bool = Field(
        default=True, description="read $SYS/broker/publish/messages/dropped into self-metrics"
    )
    password: SecretStr | None = None

    @field_validator("password", mode="before")
    @classmethod
    def _no_inline_secret(cls, v: Any, info: ValidationInfo) -> Any:
        if _loading(info) is not None:
            raise _inline_secret(info, "DRIFTGATE_MQTT_PASSWORD", "mqtt_password")
        return v

    @model_validator(mode="after")
    def _resolve_password(self, info: ValidationInfo) -> "MqttConfig":
        loading = _loading(info)
        if loading is None:
            return self
        problems: list[tuple[Loc, str]] = []
        password = _find_secret(
            loading, self.password_file, "DRIFTGATE_MQTT_PASSWORD", "mqtt_password", problems
        )
        _raise_problems("MqttConfig", problems)
        return self.model_copy(update={"password": password}) if password is not None else self


class SpoolConfig(_Section):
    """The local durable queue (SQLite under state_dir) between reading and forwarding."""

    max_bytes: Annotated[Size, AfterValidator(_at_least_one_mib)] = 1024**3
    synchronous: Literal["normal", "full"] = "normal"
    flush_interval: PositiveDuration = 0.2
    flush_lines: Annotated[int, Field(ge=1)] = 2000


class HistoryConfig(_Section):
    """The local history of per-minute aggregates that `driftgate baseline capture` reads."""

    days: Annotated[float, Field(gt=0)] = Field(
        default=30.0, description="keep this many days back from the newest reading"
    )


class LotsConfig(_Section):
    """Lot comparison: a new lot's first readings against the previous lot's, per channel."""

    readings: Annotated[int, Field(ge=10)] = Field(
        default=500, description="readings per lot and channel that make its sample"
    )
    alpha: Annotated[float, Field(gt=0, lt=1)] = Field(
        default=0.01, description="Welch's t-test p below which a difference counts"
    )
    effect: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"climate": 1.0, "tension": 3.0, "color": 0.5},
        description="smallest mean difference worth an alert, in the channel's units, per kind",
    )


class SelfMetricsConfig(_Section):
    """How often the agent writes its own health figures (driftgate_agent measurement)."""

    interval: PositiveDuration = 10.0


# Illuminant names colour-science knows (its SDS_ILLUMINANTS keys), plus the names people use.
COLOR_ILLUMINANT_ALIASES: dict[str, str] = {
    **{n: n for n in ("A", "D50", "D55", "D65", "D75")},
    **{f"FL{i}": f"FL{i}" for i in range(1, 13)},
    **{f"F{i}": f"FL{i}" for i in range(1, 13)},
    **{f"LED-B{i}": f"LED-B{i}" for i in range(1, 6)},
    **{n: n for n in ("LED-BH1", "LED-RGB1", "LED-V1", "LED-V2")},
    "TL84": "FL11",
}


def _illuminant(v: str) -> str:
    name = COLOR_ILLUMINANT_ALIASES.get(v.strip().upper())
    if name is None:
        raise _reason(
            f"unknown illuminant {v!r}; use one of D65, D50, A, F1-F12 (F11 = TL84), LED-B1-LED-B5"
        )
    return name


Illuminant = Annotated[str, AfterValidator(_illuminant)]


class ColorToleranceConfig(_Section):
    """ΔE00 limits against the approved reference, under every illuminant."""

    warn: Annotated[float, AfterValidator(_positive)] = 1.0
    alarm: Annotated[float, AfterValidator(_positive)] = 2.0

    @model_validator(mode="after")
    def _alarm_above_warn(self) -> "ColorToleranceConfig":
        if self.alarm < self.warn:
            _raise_problems("ColorToleranceConfig", [(("alarm",), "must not be below warn")])
        return self


class ColorConfig(_Section):
    """The colour stage: spectra and L*a*b* → ΔE00 per illuminant against approved references."""

    observer: Literal[2, 10] = 10
    illuminants: list[Illuminant] = Field(
        default_factory=lambda: ["D65", "FL11", "LED-B3"],
        min_length=1,
        description="the first is the reference light of the metamerism index",
    )
    colorimeter_illuminant: Illuminant = "D65"
    tolerance: ColorToleranceConfig = Field(default_factory=ColorToleranceConfig)
    metamerism: Annotated[float, AfterValidator(_positive)] = Field(
        default=1.0, description="alert when max-min ΔE00 across illuminants exceeds this"
    )
    references: ExistingFile | None = Field(
        default=None, description="YAML or CSV of reference spectra / L*a*b*, imported at start"
    )
    sample_pattern: NonBlank = Field(
        default=r"^(?P<sku>[A-Za-z0-9_.]+)-(?P<part>[A-Za-z][A-Za-z0-9_.]*)-[A-Za-z0-9_.]+$",
        description="regex on the sample id with groups sku and part (4711-clasp-0042)",
    )

    @field_validator("illuminants")
    @classmethod
    def _unique_illuminants(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise _reason("each illuminant once (F11 and TL84 are the same light)")
        return v

    @field_validator("sample_pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            groups = re.compile(v).groupindex
        except re.error as exc:
            raise _reason(f"not a regular expression: {exc}") from None
        if "sku" not in groups or "part" not in groups:
            raise _reason("the pattern needs named groups (?P<sku>...) and (?P<part>...)")
        return v


def _duplicate_names(names: Mapping[str, list[Any]]) -> list[tuple[Loc, str]]:
    """One problem per repeated name, pointing at the repeat and naming the first use."""
    problems: list[tuple[Loc, str]] = []
    for section, section_names in names.items():
        first: dict[str, int] = {}
        for index, name in enumerate(section_names):
            if not isinstance(name, str):
                continue
            if name in first:
                problems.append(
                    (
                        (section, index, "name"),
                        f"duplicate name {name!r}: {section}[{first[name]}] already uses it",
                    )
                )
            else:
                first[name] = index
    return problems


class AgentConfig(_Section):
    """The whole agent configuration: one gateway on one site."""

    site: NonBlank
    gateway: NonBlank
    state_dir: ConfigPath = Field(default=Path(".driftgate"), validate_default=True)
    log: LogConfig = Field(default_factory=LogConfig)
    sources: list[SourceConfig] = Field(default_factory=list)
    channels: list[ChannelConfig] = Field(default_factory=list)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    influx: InfluxConfig | None = None
    mqtt: MqttConfig | None = None
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    self_metrics: SelfMetricsConfig = Field(default_factory=SelfMetricsConfig)
    color: ColorConfig = Field(default_factory=ColorConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    lots: LotsConfig = Field(default_factory=LotsConfig)

    @model_validator(mode="after")
    def _check_unique_names(self) -> "AgentConfig":
        names = {
            "sources": [source.name for source in self.sources],
            "channels": [channel.name for channel in self.channels],
        }
        problems = _duplicate_names(names)
        if self.mqtt is None:
            for index, source in enumerate(self.sources):
                if isinstance(source, MqttSourceConfig):
                    problems.append(
                        (("sources", index, "type"), "an mqtt source needs the mqtt: section")
                    )
        _raise_problems("AgentConfig", problems)
        return self

    def redacted_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-able data, secrets replaced by '**********'."""
        return self.model_dump(mode="json")

    def summary(self) -> str:
        """One line for humans: what this agent reads and where it writes."""
        sources = _plural(len(self.sources), "source")
        channels = _plural(len(self.channels), "channel")
        if self.influx is None:
            target = "no influx (readings stay in the spool)"
        else:
            target = f"influx {self.influx.api} → {self.influx.url}"
        return f"{sources}, {channels}, {target}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --------------------------------------------------------------------------- YAML with line numbers

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class _Document:
    data: Any
    lines: dict[Loc, int]
    problems: list[tuple[Loc, int, str]]


def _parse_yaml(text: str) -> _Document:
    """Parse one YAML document, recording the line of every mapping key and sequence item."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return _Document(None, {}, [])
        lines: dict[Loc, int] = {(): node.start_mark.line + 1}
        problems: list[tuple[Loc, int, str]] = []
        _walk(loader=loader, node=node, path=(), lines=lines, problems=problems, active=set())
        return _Document(loader.construct_document(node), lines, problems)
    finally:
        loader.dispose()


def _walk(
    *,
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Loc,
    lines: dict[Loc, int],
    problems: list[tuple[Loc, int, str]],
    active: set[int],
) -> None:
    if id(node) in active:  # a recursive alias; validation will reject the value itself
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if not isinstance(key, int | str | bool):
                continue
            child = (*path, key)
            if key in seen:
                problems.append(
                    (child, line, f"duplicate key (first on line {seen[key]}); remove one of them")
                )
            else:
                seen[key] = line
                lines[child] = line
                _walk(
                    loader=loader,
                    node=value_node,
                    path=child,
                    lines=lines,
                    problems=problems,
                    active=active,
                )
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines[child] = item.start_mark.line + 1
            _walk(
                loader=loader, node=item, path=child, lines=lines, problems=problems, active=active
            )
    active.discard(id(node))


# --------------------------------------------------------------------------- error lines

_MISSING = object()
_PARSE_DETAIL = re.compile(r", unable to parse string as an? \w+")


def _format_path(path: Loc) -> str:
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _where(source: str, line: int, lines: Mapping[Loc, int]) -> str:
    """``file:line:``, or just ``source:`` for in-memory data that has no lines."""
    return f"{source}:{line}:" if lines else f"{source}:"


def _line_of(path: Loc, lines: Mapping[Loc, int]) -> int:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return 1


def _locate(loc: Loc, data: Any) -> tuple[Loc, Any, Any]:
    """Map pydantic's loc onto the input: drop discriminator tags and union member names.

    Returns the path, the container holding its last part, and the value there (or _MISSING).
    """
    path: list[int | str] = []
    parent: Any = None
    node: Any = data
    for part in loc:
        if isinstance(node, dict):
            if part in node:
                path.append(part)
                parent, node = node, node[part]
                continue
            if part == node.get("type"):
                continue
            path.append(part)
            parent, node = node, _MISSING
            break
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            parent, node = node, node[part]
            continue
        break
    return tuple(path), parent, node


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, datetime):
        return repr(value.isoformat())
    return repr(value)


def _problem_text(
    error: Mapping[str, Any], path: Loc, parent: Any, value: Any, loading: _Loading
) -> tuple[Loc, str]:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "driftgate":
        return path, str(ctx.get("reason", error["msg"]))
    if kind == "missing":
        return path, "required key is missing"
    if kind == "extra_forbidden":
        key = path[-1] if path else "?"
        allowed = loading.fields.get(id(parent), ())
        guess = difflib.get_close_matches(str(key), allowed, n=1)
        if guess:
            return path, f"unknown key {key!r}; did you mean {guess[0]!r}?"
        if allowed:
            return path, f"unknown key {key!r}; allowed here: {', '.join(allowed)}"
        return path, f"unknown key {key!r}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        expected = _DETECTOR_TYPES if "detectors" in path else _SOURCE_TYPES
        choices = ", ".join(expected)
        if kind == "union_tag_not_found":
            return (*path, "type"), f"required key is missing; one of: {choices}"
        return (*path, "type"), f"unknown type {ctx.get('tag')!r}; one of: {choices}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"should be a mapping of keys, got {_describe(value)}"
    if kind == "list_type":
        return path, f"should be a list (items starting with '- '), got {_describe(value)}"
    message = _PARSE_DETAIL.sub("", str(error["msg"]).removeprefix("Value error, "))
    if value is not _MISSING:
        message += f", got {_describe(value)}"
    return path, message


def _problem_lines(
    exc: ValidationError, source: str, data: Any, lines: Mapping[Loc, int], loading: _Loading
) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for error in exc.errors():
        if error["type"] == "invalid_key":
            # pydantic mangles a non-text key in loc; the key itself is the input.
            parent_path, _, _ = _locate(tuple(error["loc"][:-1]), data)
            key = error["input"]
            line = lines.get((*parent_path, key), _line_of(parent_path, lines))
            text = (
                f"key {key!r} is not text; quote it "
                "(YAML reads yes, no, on, off, null and numbers as values)"
            )
            out.append((line, f"{_where(source, line, lines)} {_format_path(parent_path)}: {text}"))
            continue
        path, parent, value = _locate(tuple(error["loc"]), data)
        path, text = _problem_text(error, path, parent, value, loading)
        line = _line_of(path, lines)
        out.append((line, f"{_where(source, line, lines)} {_format_path(path)}: {text}"))
    return out


# --------------------------------------------------------------------------- entry points

_DEFAULTED_SECTIONS = ("log", "alerts", "spool", "self_metrics", "sources", "channels", "color")


def _validate(
    *,
    data: Any,
    source: str,
    lines: Mapping[Loc, int],
    base_dir: Path | None,
    env: Mapping[str, str] | None,
    found: list[tuple[int, str]],
) -> AgentConfig:
    if data is None:
        found.append((1, f"{source}:1: (top level): the file is empty; expected site, gateway, …"))
    elif not isinstance(data, dict):
        line = lines.get((), 1)
        found.append(
            (
                line,
                f"{_where(source, line, lines)} (top level): should be a mapping of keys "
                f"(site:, gateway:, …), got {_describe(data)}",
            )
        )
    if not isinstance(data, dict):
        raise ConfigError([text for _, text in found])
    # A section left empty ("spool:" with every key commented out) means its defaults.
    data = {k: v for k, v in data.items() if not (k in _DEFAULTED_SECTIONS and v is None)}
    loading = _Loading(base_dir=base_dir, env=os.environ if env is None else env)
    try:
        config = AgentConfig.model_validate(data, context={_CONTEXT_KEY: loading})
    except ValidationError as exc:
        found += _problem_lines(exc, source, data, lines, loading)
        # The models check names only once every item is valid; say it now rather than later.
        raw_names = {
            section: [item.get("name") if isinstance(item, dict) else None for item in items]
            for section in ("sources", "channels")
            if isinstance(items := data.get(section), list)
        }
        for loc, text in _duplicate_names(raw_names):
            line = _line_of(loc, lines)
            found.append((line, f"{_where(source, line, lines)} {_format_path(loc)}: {text}"))
    if found:
        found.sort(key=lambda item: item[0])
        raise ConfigError(list(dict.fromkeys(text for _, text in found)))
    return config


def read_yaml(path: Path) -> _Document:
    """Read and parse a YAML file with line numbers; ConfigError naming the file otherwise."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text ({exc.reason})"]) from None
    try:
        return _parse_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1"
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError([f"{source}:{where}: YAML syntax error: {reason}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}:1: YAML syntax error: {exc}"]) from None


def load_config(path: Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate the YAML config at ``path``; raise ConfigError listing every problem.

    ``env`` (default ``os.environ``) supplies secrets and ``CREDENTIALS_DIRECTORY``.
    """
    source = str(path)
    document = read_yaml(path)
    found = [
        (line, f"{source}:{line}: {_format_path(loc)}: {text}")
        for loc, line, text in document.problems
    ]
    return _validate(
        data=document.data,
        source=source,
        lines=document.lines,
        base_dir=path.absolute().parent,
        env=env,
        found=found,
    )


def config_from_dict(
    data: dict[str, Any], source: str = "<built-in>", env: Mapping[str, str] | None = None
) -> AgentConfig:
    """Validate an in-memory config exactly like a file (relative paths stay as given)."""
    return _validate(data=data, source=source, lines={}, base_dir=None, env=env, found=[])


def check_config_command(path: Path) -> int:
    """``driftgate check-config``: print every problem (exit 2) or a one-line summary (exit 0)."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        count = len(exc.problems)
        print(f"{path}: {_plural(count, 'problem')}", file=sys.stderr)
        return 2
    print(f"OK: {config.summary()}")
    return 0
