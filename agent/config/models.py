"""The agent's configuration sections, from ``AgentConfig`` down."""

import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.config.base import (
    ConfigPath,
    ConfigWarning,
    Duration,
    ExistingFile,
    Loc,
    Name,
    NonBlank,
    Section,
    Size,
    at_least_one_mib,
    aware,
    loading_of,
    positive,
    raise_problems,
    reason,
)
from agent.config.bounds import within
from agent.config.detectors import BaselineSpecConfig, DetectorConfig, LimitConfig
from agent.config.feasible import detector_problems
from agent.config.notify import IncidentsConfig, NotifyConfig
from agent.config.secrets import SecretFile, find_secret, inline_secret
from agent.config.status import StatusConfig
from agent.context import ContextError, check_tag

# --------------------------------------------------------------------------- the models


class LogConfig(Section):
    """How the agent logs: level and format (auto = console on a terminal, JSON under systemd)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class SimulatedSourceConfig(Section):
    """A simulated workshop that produces realistic readings, optionally faster than real time."""

    type: Literal["simulated"]
    name: Name
    scenario: Literal["workshop"] = "workshop"
    speed: Annotated[float, within("sources.speed")] = Field(
        default=1.0, description="simulated seconds per wall-clock second"
    )
    start: Annotated[datetime, AfterValidator(aware)] | None = None
    days: Annotated[float, within("sources.days")] | None = Field(
        default=None, description="stop after this much simulated time"
    )
    seed: int = 1
    interval: Annotated[Duration, within("sources.interval")] = Field(
        default=60.0, description="simulated seconds between samples"
    )
    rooms: Annotated[int, Field(ge=0, le=5000)] = Field(
        default=2, description="rooms (humidity and temperature each): a floor of any size"
    )
    machines: Annotated[int, Field(ge=0, le=5000)] = Field(
        default=8, description="sewing machines (thread tension each)"
    )


class _PlacedSource(Section):
    """What every real-device source shares: its name and where its devices are."""

    name: Name
    zone: NonBlank | None = None
    line: NonBlank | None = None
    station: NonBlank | None = None
    tags: dict[NonBlank, NonBlank] = Field(default_factory=dict)
    channel_prefix: NonBlank | None = Field(
        default=None, description="channel names start with this (default: zone, else name)"
    )

    def base_tags(self) -> dict[str, str]:
        """The location tags this source puts on every reading."""
        out = dict(self.tags)
        for key in ("zone", "line", "station", "sensor"):
            value = getattr(self, key, None)
            if value is not None:
                out[key] = value
        return out

    def prefix(self) -> str:
        """The first part of this source's channel names."""
        return self.channel_prefix or self.zone or self.name


class _DeviceSource(_PlacedSource):
    """A source reading one device (or one stream of devices) through a device profile."""

    profile: NonBlank = Field(description="device profile: a firmware_configs name or a path")
    sensor: NonBlank | None = Field(default=None, description="sensor id if frames carry none")


class SerialSourceConfig(_DeviceSource):
    """A device on a serial port (USB or RS-485 adapter); use /dev/serial/by-id/... paths."""

    type: Literal["serial"]
    port: NonBlank
    baud: Annotated[int, Field(ge=50, le=4_000_000)] = 115200
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    reconnect_max: Annotated[Duration, within("sources.reconnect_max")] = Field(
        default=5.0, description="longest reconnect wait"
    )


class MqttSourceConfig(_DeviceSource):
    """Devices publishing to the broker in `mqtt:` (ESPHome, Tasmota, custom JSON)."""

    type: Literal["mqtt"]
    topics: list[NonBlank] = Field(
        default_factory=list,
        description="subscriptions; {name} segments become tags (default: the profile's)",
    )
    qos: Literal[0, 1, 2] = 1


class ModbusDeviceConfig(Section):
    """One Modbus device (slave) on a bus: its address, its register map, how often to read it."""

    slave: Annotated[int, Field(ge=0, le=255)] = Field(
        description="the device's address: 1-247 on RS-485 (RTU), the unit id over TCP"
    )
    profile: NonBlank = Field(description="register map: a firmware_configs/modbus name or a path")
    sensor: NonBlank | None = Field(
        default=None, description="sensor id, part of the channel names (default: profile-slave)"
    )
    poll: Annotated[Duration, within("sources.poll")] = Field(
        default=10.0, description="read the device this often"
    )
    zone: NonBlank | None = Field(default=None, description="default: the source's")
    line: NonBlank | None = None
    station: NonBlank | None = None
    tags: dict[NonBlank, NonBlank] = Field(default_factory=dict)

    @property
    def sensor_id(self) -> str:
        """The sensor tag of its readings: ``sensor``, else ``<profile>-<slave>``."""
        if self.sensor is not None:
            return self.sensor
        stem = self.profile.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")
        return f"{stem}-{self.slave}"


class ModbusSourceConfig(_PlacedSource):
    """A Modbus bus: RTU on an RS-485 serial port (``port``) or TCP (``host``), with its devices.

    Requests go one at a time (a bus has one master and one conversation); a device that does
    not answer costs ``timeout`` × (1 + ``retries``) of bus time, then the next one is read.
    """

    type: Literal["modbus"]
    port: NonBlank | None = Field(default=None, description="RTU: the RS-485 adapter's port")
    baud: Annotated[int, Field(ge=50, le=4_000_000)] = 9600
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    host: NonBlank | None = Field(default=None, description="TCP: the device or gateway")
    tcp_port: Annotated[int, Field(ge=1, le=65535)] = 502
    timeout: Annotated[Duration, within("sources.timeout")] = Field(
        default=0.5, description="wait this long for each answer"
    )
    retries: Annotated[int, Field(ge=0, le=5)] = Field(
        default=1, description="ask again this often before the read counts as failed"
    )
    frame_gap: Annotated[Duration, within("sources.frame_gap")] | None = Field(
        default=None,
        description="silence between two frames (RTU; default 3.5 characters, 1.75 ms from "
        "19200 baud)",
    )
    reconnect_max: Annotated[Duration, within("sources.reconnect_max")] = Field(
        default=5.0, description="longest reconnect wait"
    )
    devices: Annotated[list[ModbusDeviceConfig], Field(min_length=1)]

    @property
    def transport(self) -> Literal["rtu", "tcp"]:
        """RTU on a serial port, or TCP."""
        return "rtu" if self.port is not None else "tcp"

    @property
    def gap(self) -> float:
        """The silence kept between frames: frame_gap, else the Modbus RTU rule of 3.5
        characters (11 bits each), and 1.75 ms above 19200 baud; none over TCP."""
        if self.frame_gap is not None:
            return self.frame_gap
        if self.transport == "tcp":
            return 0.0
        return 0.00175 if self.baud > 19200 else 3.5 * 11 / self.baud

    @model_validator(mode="after")
    def _one_bus(self) -> "ModbusSourceConfig":
        problems: list[tuple[Loc, str]] = []
        if (self.port is None) == (self.host is None):
            problems.append(
                (("port",), "set port (Modbus RTU on a serial port) or host (Modbus TCP), "
                 "exactly one")
            )  # fmt: skip
        seen: dict[int, int] = {}
        sensors: dict[str, int] = {}
        for index, device in enumerate(self.devices):
            if self.port is not None and not 1 <= device.slave <= 247:
                problems.append(
                    (("devices", index, "slave"), f"{device.slave} is not an RTU address: 1-247")
                )
            if device.slave in seen:
                problems.append(
                    (
                        ("devices", index, "slave"),
                        f"slave {device.slave} is already devices[{seen[device.slave]}]: two "
                        "devices at one address answer at once and garble each other",
                    )
                )
            seen.setdefault(device.slave, index)
            if device.sensor_id in sensors:
                problems.append(
                    (
                        ("devices", index, "sensor"),
                        f"sensor {device.sensor_id!r} is already "
                        f"devices[{sensors[device.sensor_id]}]; their channels would be one",
                    )
                )
            sensors.setdefault(device.sensor_id, index)
        raise_problems("ModbusSourceConfig", problems)
        return self


def _context_key(v: str) -> str:
    try:
        check_tag(v, None)
    except ContextError as exc:
        raise reason(str(exc)) from None
    return v


ContextKey = Annotated[str, AfterValidator(_context_key)]
"""A production-context key a channel compares on: lot, operator, shift, order, sku, ..."""


def _unique_keys(v: list[str]) -> list[str]:
    if len(set(v)) != len(v):
        raise reason("each context key once")
    return v


CompareOn = Annotated[list[ContextKey], AfterValidator(_unique_keys)]

SourceConfig = Annotated[
    SimulatedSourceConfig | SerialSourceConfig | MqttSourceConfig | ModbusSourceConfig,
    Field(discriminator="type"),
]
SOURCE_TYPES = ("simulated", "serial", "mqtt", "modbus")


class ChannelConfig(Section):
    """One stream of one quantity: what it is, what it affects, and how its drift is judged."""

    name: Name
    label: str = ""
    unit: str = ""
    affects: str = ""
    kind: Literal["climate", "tension", "color", "moisture", "generic"] | None = None
    interval: Annotated[Duration, within("channels.interval")] | None = Field(
        default=None,
        description="expected time between readings: sizes the kind's defaults and lets "
        "check-config refuse settings that cannot fire (None: measured from the readings)",
    )
    baseline: BaselineSpecConfig | None = Field(
        default=None, description="None: the defaults for the kind"
    )
    detectors: list[DetectorConfig] | None = Field(
        default=None, description="None: the defaults for the kind; []: no detectors"
    )
    enabled: bool = True
    lot_effect: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="context comparison: smallest mean difference (units) worth an alert",
    )
    compare_on: CompareOn | None = Field(
        default=None,
        description="context keys whose changes start a comparison (None: lots.compare_on); "
        "naming them also compares a channel without detectors (a moisture meter)",
    )
    lot_readings: Annotated[int, Field(ge=10, le=100_000)] | None = Field(
        default=None, description="readings per sample (None: lots.readings)"
    )
    limits: LimitConfig | None = Field(
        default=None, description="a spec band (45–55 %RH), added to the channel's detectors"
    )
    action: str = Field(
        default="", description="what to do when it drifts, quoted in every notice about it"
    )

    @model_validator(mode="after")
    def _can_fire(self) -> "ChannelConfig":
        problems: list[tuple[Loc, str]] = []
        for index, spec in enumerate(self.detectors or ()):
            for loc, text in detector_problems(spec, self.interval):
                problems.append((("detectors", index, *loc), text))
        raise_problems(type(self).__name__, problems)
        return self


class AlertsConfig(Section):
    """How alert events reach people: console sentences, repeats, flapping suppression."""

    console: bool = True
    repeat: Annotated[Duration, within("alerts.repeat")] | None = None
    flap_count: Annotated[int, Field(ge=2)] = Field(
        default=6, description="changes within flap_window that make an alert key flap"
    )
    flap_window: Annotated[Duration, within("alerts.flap_window")] = 6 * 3600.0


def _http_url(v: str) -> str:
    parts = urlsplit(v.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise reason(f"{v!r} is not an http:// or https:// URL, e.g. http://influxdb.local:8086")
    if parts.username is not None or parts.password is not None:
        # Deliberately not echoing the URL: it holds a credential.
        raise reason("credentials in the URL are not allowed: use username and password_file")
    return v.strip().rstrip("/")


_INFLUX_V1_KEYS = ("database", "retention_policy", "username", "password_file")
_INFLUX_V2_KEYS = ("org", "bucket", "token_file")


class InfluxConfig(Section):
    """Where readings and alerts are forwarded: an InfluxDB (1.x, 2.x, 3.x) or compatible server."""

    url: Annotated[str, AfterValidator(_http_url)]
    api: Literal["v1", "v2"] = "v1"
    database: NonBlank | None = None
    create_database: bool = Field(
        default=False, description="v1: create the database at start if InfluxDB lacks it"
    )
    retention_policy: NonBlank | None = None
    username: NonBlank | None = None
    password_file: SecretFile | None = None
    org: NonBlank | None = None
    bucket: NonBlank | None = None
    token_file: SecretFile | None = None
    gzip: bool = True
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    flush_interval: Annotated[Duration, within("influx.flush_interval")] = 1.0
    timeout: Annotated[Duration, within("influx.timeout")] = 10.0
    verify_tls: bool = True
    ca_file: ExistingFile | None = None
    max_backoff: Annotated[Duration, within("influx.max_backoff")] = 60.0
    password: SecretStr | None = None
    token: SecretStr | None = None

    @field_validator("password", "token", mode="before")
    @classmethod
    def _no_inline_secret(cls, v: Any, info: ValidationInfo) -> Any:
        if loading_of(info) is not None:
            if info.field_name == "token":
                raise inline_secret(info, "DRIFTGATE_INFLUX_TOKEN", "influx_token")
            raise inline_secret(info, "DRIFTGATE_INFLUX_PASSWORD", "influx_password")
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
            if self.create_database:
                problems.append(
                    (
                        ("create_database",),
                        "create_database is an api v1 setting; create a v2 bucket with "
                        "influx bucket create --name <bucket> --org <org>",
                    )
                )
            problems += [
                ((key,), f"{key} is an api v1 setting; with api v2 use org, bucket and token_file")
                for key in _INFLUX_V1_KEYS
                if getattr(self, key) is not None
            ]
        loading = loading_of(info)
        update: dict[str, SecretStr] = {}
        if loading is not None and not problems:
            if self.api == "v1":
                password = find_secret(
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
                token = find_secret(
                    loading, self.token_file, "DRIFTGATE_INFLUX_TOKEN", "influx_token", problems
                )
                if token is not None:
                    update["token"] = token
        raise_problems("InfluxConfig", problems)
        return self.model_copy(update=update) if update else self


class MqttConfig(Section):
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
    session_expiry: Annotated[Duration, within("mqtt.session_expiry")] = Field(
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
    max_payload: Annotated[Size, Field(ge=1024, le=16 * 1024**2)] = Field(
        default=256 * 1024,
        description="larger messages are counted and dropped without being decoded",
    )
    ack: Literal["on_commit", "on_arrival"] = Field(
        default="on_commit",
        description="acknowledge a message once the spool committed what it produced (safe), "
        "or on arrival (a crash loses the last spool.flush_interval of acknowledged messages)",
    )
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=2000,
        description="unacknowledged messages the broker may send us at once (MQTT v5 "
        "Receive Maximum): the rate is at most this many per spool commit",
    )
    password: SecretStr | None = None

    @field_validator("password", mode="before")
    @classmethod
    def _no_inline_secret(cls, v: Any, info: ValidationInfo) -> Any:
        if loading_of(info) is not None:
            raise inline_secret(info, "DRIFTGATE_MQTT_PASSWORD", "mqtt_password")
        return v

    @model_validator(mode="after")
    def _resolve_password(self, info: ValidationInfo) -> "MqttConfig":
        loading = loading_of(info)
        if loading is None:
            return self
        problems: list[tuple[Loc, str]] = []
        password = find_secret(
            loading, self.password_file, "DRIFTGATE_MQTT_PASSWORD", "mqtt_password", problems
        )
        raise_problems("MqttConfig", problems)
        return self.model_copy(update={"password": password}) if password is not None else self


class SpoolConfig(Section):
    """The local durable queue (SQLite under state_dir) between reading and forwarding."""

    max_bytes: Annotated[Size, AfterValidator(at_least_one_mib)] = 1024**3
    synchronous: Literal["normal", "full"] = "normal"
    flush_interval: Annotated[Duration, within("spool.flush_interval")] = 0.2
    flush_lines: Annotated[int, Field(ge=1)] = 2000
    max_dead_letters: Annotated[int, Field(ge=100, le=10_000_000)] = Field(
        default=100_000, description="dead letters kept; beyond, the oldest are deleted, counted"
    )


class HistoryConfig(Section):
    """The local history of per-minute aggregates that `driftgate baseline capture` reads."""

    days: Annotated[float, within("history.days")] = Field(
        default=30.0, description="keep this many days back from the newest reading"
    )


class LotsConfig(Section):
    """Context comparison: a new lot's (operator's, shift's) first readings against the
    previous one's and the approved lot's, per channel."""

    readings: Annotated[int, Field(ge=10, le=100_000)] = Field(
        default=500, description="readings per lot and channel that make its sample"
    )
    compare_on: CompareOn = Field(
        default_factory=lambda: ["lot"],
        description="context keys whose changes start a comparison on every channel with "
        "detectors (channels[].compare_on overrides)",
    )
    alpha: Annotated[float, Field(gt=0, lt=1)] = Field(
        default=0.01, description="Welch's t-test p below which a difference counts"
    )
    effect: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"climate": 1.0, "tension": 3.0, "color": 0.5, "moisture": 1.0},
        description="smallest mean difference worth an alert, in the channel's units, per kind",
    )


class InputLimitsConfig(Section):
    """Caps that keep careless or hostile input from growing the agent without bound."""

    max_channels: Annotated[int, Field(ge=10, le=100_000)] = Field(
        default=2000,
        description="channels a gateway keeps; readings of further new channels are dropped",
    )
    max_ahead: Annotated[Duration, within("input_limits.max_ahead")] = Field(
        default=86400.0, description="a device clock further ahead of the gateway's is refused"
    )
    max_behind: Annotated[Duration, within("input_limits.max_behind")] = Field(
        default=365 * 86400.0,
        description="a device clock further behind the gateway's is refused",
    )


class SelfMetricsConfig(Section):
    """How often the agent writes its own health figures (driftgate_agent measurement)."""

    interval: Annotated[Duration, within("self_metrics.interval")] = 10.0


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
        raise reason(
            f"unknown illuminant {v!r}; use one of D65, D50, A, F1-F12 (F11 = TL84), LED-B1-LED-B5"
        )
    return name


Illuminant = Annotated[str, AfterValidator(_illuminant)]


class ColorToleranceConfig(Section):
    """ΔE00 limits against the approved reference, under every illuminant."""

    warn: Annotated[float, AfterValidator(positive)] = 1.0
    alarm: Annotated[float, AfterValidator(positive)] = 2.0

    @model_validator(mode="after")
    def _alarm_above_warn(self) -> "ColorToleranceConfig":
        if self.alarm < self.warn:
            raise_problems("ColorToleranceConfig", [(("alarm",), "must not be below warn")])
        return self


class ColorConfig(Section):
    """The colour stage: spectra and L*a*b* → ΔE00 per illuminant against approved references."""

    observer: Literal[2, 10] = 10
    illuminants: list[Illuminant] = Field(
        default_factory=lambda: ["D65", "FL11", "LED-B3"],
        min_length=1,
        description="the first is the reference light of the metamerism index",
    )
    colorimeter_illuminant: Illuminant = "D65"
    tolerance: ColorToleranceConfig = Field(default_factory=ColorToleranceConfig)
    metamerism: Annotated[float, AfterValidator(positive)] = Field(
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
            raise reason("each illuminant once (F11 and TL84 are the same light)")
        return v

    @field_validator("sample_pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            groups = re.compile(v).groupindex
        except re.error as exc:
            raise reason(f"not a regular expression: {exc}") from None
        if "sku" not in groups or "part" not in groups:
            raise reason("the pattern needs named groups (?P<sku>...) and (?P<part>...)")
        return v


def duplicate_names(names: Mapping[str, list[Any]]) -> list[tuple[Loc, str]]:
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


def _timezone(v: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise reason(
            f"{v!r} is not a time zone: use an IANA name such as Europe/Paris or UTC "
            "(timedatectl list-timezones lists them)"
        ) from None
    return v


class AgentConfig(Section):
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
    timezone: Annotated[str, AfterValidator(_timezone)] | None = Field(
        default=None,
        description="IANA name (Europe/Paris) for times in notices; None: the gateway's own",
    )
    incidents: IncidentsConfig = Field(default_factory=IncidentsConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    input_limits: InputLimitsConfig = Field(default_factory=InputLimitsConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)
    _warnings: list[ConfigWarning] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[ConfigWarning]:
        """Accepted settings that expose the gateway (filled by the loader, see config.risks)."""
        return self._warnings

    @model_validator(mode="after")
    def _check_unique_names(self) -> "AgentConfig":
        names = {
            "sources": [source.name for source in self.sources],
            "channels": [channel.name for channel in self.channels],
        }
        problems = duplicate_names(names)
        if self.mqtt is None:
            for index, source in enumerate(self.sources):
                if isinstance(source, MqttSourceConfig):
                    problems.append(
                        (("sources", index, "type"), "an mqtt source needs the mqtt: section")
                    )
        raise_problems("AgentConfig", problems)
        return self

    def redacted_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-able data, secrets replaced by '**********'."""
        return self.model_dump(mode="json")

    def summary(self) -> str:
        """One line for humans: what this agent reads and where it writes."""
        sources = plural(len(self.sources), "source")
        channels = plural(len(self.channels), "channel")
        if self.influx is None:
            target = "no influx (readings stay in the spool)"
        else:
            target = f"influx {self.influx.api} → {self.influx.url}"
        return f"{sources}, {channels}, {target}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
