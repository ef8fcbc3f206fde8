"""Device profiles: how one device or firmware's frames decode into readings.

A profile is one YAML file in ``firmware_configs/`` (shipped inside the package as
``agent/ingest/firmware_configs/``; the repository root's ``firmware_configs`` links to it).
The field by field reference is ``firmware_configs/README.md``. Problems are reported like the agent
config's: one line ``{file}:{line}: {key.path}: {reason}`` each, all at once, as ConfigError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    model_validator,
)

from agent.config.base import CONTEXT_KEY, Loading, Loc, Section, raise_problems, reason
from agent.config.loader import (
    describe_value,
    format_path,
    line_of,
    locate,
    problem_text,
    read_yaml,
)
from agent.errors import ConfigError

__all__ = [
    "PROFILE_DIR",
    "Batch",
    "Checksum",
    "Crc16Checksum",
    "CsvFormat",
    "EsphomeFormat",
    "FieldMap",
    "FixedFraming",
    "Format",
    "Framing",
    "JsonFormat",
    "KvFormat",
    "LineFraming",
    "MessageFraming",
    "NmeaChecksum",
    "Profile",
    "RegexFormat",
    "SpectrumSpec",
    "StxEtxFraming",
    "TasmotaFormat",
    "Timestamp",
    "TwoPoint",
    "list_profiles",
    "load_profile",
    "located_problems",
    "profile_from_dict",
    "profile_path",
]

PROFILE_DIR: Path = Path(str(resources.files("agent.ingest") / "firmware_configs"))
"""Where the shipped profiles live (package data, so it exists in a wheel install too)."""

_PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_TOPIC_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

# --------------------------------------------------------------------------- small value types


def _to_byte(v: Any) -> int:
    if isinstance(v, str) and len(v.encode("latin-1", "replace")) == 1:
        return ord(v)
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255:
        return v
    raise reason(f"{v!r} is not one byte: write e.g. 0x02 or a one-character string")


def _to_marker(v: Any) -> bytes:
    if isinstance(v, str) and v:
        try:
            return v.encode("ascii")
        except UnicodeEncodeError:
            raise reason(f"{v!r} is not ASCII") from None
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255:
        return bytes([v])
    raise reason(f"{v!r} is not a marker: write a non-empty ASCII string or a byte like 0x40")


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise reason(f"must be a finite number, got {v!r}")
    return v


def _non_zero(v: float) -> float:
    if v == 0:
        raise reason("must not be 0 (it would turn every value into the offset)")
    return v


def _non_empty(v: str) -> str:
    if not v:
        raise reason("must not be empty")
    return v


def _identifier(v: str) -> str:
    if not v.strip() or any(c.isspace() for c in v):
        raise reason(f"{v!r} must be a non-empty name without whitespace")
    return v


Byte = Annotated[int, BeforeValidator(_to_byte)]
Marker = Annotated[bytes, BeforeValidator(_to_marker)]
Finite = Annotated[float, AfterValidator(_finite)]
Scale = Annotated[float, AfterValidator(_finite), AfterValidator(_non_zero)]
Separator = Annotated[str, AfterValidator(_non_empty)]
Ident = Annotated[str, AfterValidator(_identifier)]


def _check_range(r: tuple[float, float] | None) -> tuple[float, float] | None:
    if r is not None:
        low, high = r
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise reason(f"must be [min, max] with finite min < max, got [{low:g}, {high:g}]")
    return r


Range = Annotated[tuple[float, float] | None, AfterValidator(_check_range)]

# --------------------------------------------------------------------------- framing


class LineFraming(Section):
    """Text lines: a frame ends at the terminator; stray CR/LF around a frame are stripped."""

    type: Literal["line"]
    terminator: Literal["\n", "\r\n", "\r"] = "\n"
    start: Marker | None = Field(
        default=None, description="a frame starts at its last occurrence (e.g. '$'): resync"
    )
    max_length: Annotated[int, Field(ge=8, le=1_048_576)] = 4096


class FixedFraming(Section):
    """Fixed-length records of ``length`` bytes, optionally beginning with a ``sync`` marker."""

    type: Literal["fixed"]
    length: Annotated[int, Field(ge=1, le=1_048_576)]
    sync: Marker | None = None


class StxEtxFraming(Section):
    """Frames between a start byte (STX 0x02) and an end byte (ETX 0x03)."""

    type: Literal["stx_etx"]
    start: Byte = 0x02
    end: Byte = 0x03
    max_length: Annotated[int, Field(ge=8, le=1_048_576)] = 16384

    @model_validator(mode="after")
    def _distinct(self) -> StxEtxFraming:
        if self.start == self.end:
            raise_problems("StxEtxFraming", [(("end",), "must differ from start")])
        return self


class MessageFraming(Section):
    """One MQTT message is one frame (the payload); the topic says what it holds."""

    type: Literal["message"]
    max_length: Annotated[int, Field(ge=8, le=16_777_216)] = 65536


Framing = Annotated[
    LineFraming | FixedFraming | StxEtxFraming | MessageFraming, Field(discriminator="type")
]
_FRAMING_TYPES = ("line", "fixed", "stx_etx", "message")

# --------------------------------------------------------------------------- formats


class CsvFormat(Section):
    """Delimited values in a fixed column order; ``rest`` collects any trailing columns."""

    type: Literal["csv"]
    delimiter: Separator = ","
    columns: Annotated[list[Ident], Field(min_length=1)]
    rest: Ident | None = Field(default=None, description="name for the list of extra columns")
    match: dict[str, str] = Field(default_factory=dict, description="field → required text")


class KvFormat(Section):
    """``key=value`` pairs: ``id=sht41-ep1,rh=48.21,t=21.37``."""

    type: Literal["kv"]
    pair_separator: Separator = ","
    kv_separator: Separator = "="
    match: dict[str, str] = Field(default_factory=dict)


class JsonFormat(Section):
    """A JSON document; fields are paths like ``$.SHT3X.Humidity``, ``SHT3X.Humidity``, ``r[0]``."""

    type: Literal["json"]
    match: dict[str, str] = Field(default_factory=dict)


class RegexFormat(Section):
    """A regular expression whose named groups are the fields (matched against the whole frame)."""

    type: Literal["regex"]
    pattern: str

    @model_validator(mode="after")
    def _compiles(self) -> RegexFormat:
        try:
            groups = re.compile(self.pattern).groupindex
        except re.error as exc:
            raise_problems("RegexFormat", [(("pattern",), f"not a valid regex: {exc}")])
        else:
            if not groups:
                raise_problems(
                    "RegexFormat", [(("pattern",), "needs named groups, e.g. (?P<L>[-+0-9.]+)")]
                )
        return self


class EsphomeFormat(Section):
    """ESPHome MQTT state topics ``<prefix>/sensor/<object_id>/state`` with a plain number."""

    type: Literal["esphome"]


class TasmotaFormat(Section):
    """Tasmota telemetry: ``tele/<device>/SENSOR`` with a JSON payload."""

    type: Literal["tasmota"]
    match: dict[str, str] = Field(default_factory=dict, description="JSON path → required text")


Format = Annotated[
    CsvFormat | KvFormat | JsonFormat | RegexFormat | EsphomeFormat | TasmotaFormat,
    Field(discriminator="type"),
]
_FORMAT_TYPES = ("csv", "kv", "json", "regex", "esphome", "tasmota")
_DEFAULT_TOPICS = {"esphome": "{sensor}/sensor/{field}/state", "tasmota": "tele/{sensor}/SENSOR"}

# --------------------------------------------------------------------------- checksums


class NmeaChecksum(Section):
    """NMEA 0183 style: ``$payload*hh``, XOR of the payload bytes as two hex digits."""

    type: Literal["nmea"]
    separator: Separator = "*"
    skip: str = Field(default="$", description="leading characters not covered by the checksum")


class Crc16Checksum(Section):
    """CRC-16 over the payload as four hex digits after the separator: ``payload*ABCD``.

    modbus = CRC-16/MODBUS (poly 0x8005 reflected, init 0xFFFF); ccitt-false = CRC-16/IBM-3740
    (poly 0x1021, init 0xFFFF); xmodem = CRC-16/XMODEM (0x1021, init 0); kermit = CRC-16/KERMIT.
    """

    type: Literal["crc16"]
    variant: Literal["modbus", "ccitt-false", "xmodem", "kermit"]
    separator: Separator = "*"


Checksum = Annotated[NmeaChecksum | Crc16Checksum, Field(discriminator="type")]
_CHECKSUM_TYPES = ("nmea", "crc16")

# --------------------------------------------------------------------------- values


class TwoPoint(Section):
    """Two-point calibration: the (scaled) value ``raw[i]`` really is ``ref[i]``."""

    raw: tuple[Finite, Finite]
    ref: tuple[Finite, Finite]

    @model_validator(mode="after")
    def _distinct(self) -> TwoPoint:
        if self.raw[0] == self.raw[1]:
            raise_problems("TwoPoint", [(("raw",), "the two raw points must differ")])
        return self

    def apply(self, value: float) -> float:
        """The calibrated value: the straight line through the two points."""
        (r1, r2), (f1, f2) = self.raw, self.ref
        return f1 + (value - r1) * (f2 - f1) / (r2 - r1)


class FieldMap(Section):
    """One source field → one channel: value = calibrate(raw × scale + offset), then range."""

    source: Annotated[str, AfterValidator(_non_empty)]
    name: Ident | None = Field(default=None, description="channel short name; default: field")
    measurement: Ident
    field: Ident
    unit: str = ""
    kind: Literal["climate", "tension", "color", "moisture"]
    scale: Scale = 1.0
    offset: Finite = 0.0
    range: Range = None
    required: bool = True

    @property
    def channel(self) -> str:
        """The channel short name (``name``, else the field key)."""
        return self.name or self.field


LOCAL_ZONE = "local"
"""``timestamp.timezone: local``: the gateway's own zone (devices on its floor share it)."""


def _timezone(v: str) -> str:
    if v == LOCAL_ZONE:
        return v
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise reason(
            f"{v!r} is not a time zone: use an IANA name such as Europe/Paris, UTC, or local"
        ) from None
    return v


class Timestamp(Section):
    """Where a frame's time comes from: arrival at the gateway, or a field the device sends."""

    source: Literal["arrival", "device"] = "arrival"
    field: str | None = None
    unit: Literal["s", "ms", "us", "ns", "iso8601"] = "ms"
    timezone: Annotated[str, AfterValidator(_timezone)] = Field(
        default="UTC",
        description="for iso8601 times without an offset; local: the gateway's own zone",
    )
    fallback: Literal["reject", "arrival"] = Field(
        default="reject",
        description="a missing or implausible device time: reject the frame, or stamp it on "
        "arrival (counted as time_fallbacks)",
    )

    @model_validator(mode="after")
    def _field_for_device(self) -> Timestamp:
        if self.source == "device" and not self.field:
            raise_problems("Timestamp", [(("field",), "source: device needs the field")])
        if self.source == "arrival" and self.field:
            raise_problems("Timestamp", [(("field",), "only used with source: device")])
        if self.source == "arrival" and self.fallback != "reject":
            raise_problems("Timestamp", [(("fallback",), "only used with source: device")])
        return self


class Batch(Section):
    """Many samples in one frame: list-valued fields yield one reading each, spaced 1/rate.

    With a device timestamp it is the first sample's time; with arrival time the last sample
    is taken to be at arrival.
    """

    rate_hz: Annotated[float, Field(gt=0, le=100_000)] | None = None
    rate_field: str | None = None
    min_rate_hz: Annotated[float, Field(gt=0)] = 1.0
    max_rate_hz: Annotated[float, Field(gt=0)] = 10_000.0
    max_samples: Annotated[int, Field(ge=1, le=100_000)] = 1000

    @model_validator(mode="after")
    def _one_rate(self) -> Batch:
        if (self.rate_hz is None) == (self.rate_field is None):
            raise_problems("Batch", [(("rate_hz",), "set exactly one of rate_hz or rate_field")])
        return self


class SpectrumSpec(Section):
    """A reflectance spectrum decoded as one structured result (for the colour stage)."""

    source: Annotated[str, AfterValidator(_non_empty)]
    start_nm: Finite = 400.0
    step_nm: Annotated[Finite, Field(gt=0)] = 10.0
    count: Annotated[int, Field(ge=2, le=4096)] = 31
    scale: Scale = 1.0
    range: Range = None
    sample_tag: str = Field(default="sample", description="the tag holding the sample id")


def _profile_name(v: str) -> str:
    if not _PROFILE_NAME.fullmatch(v):
        raise reason(f"{v!r} is not a profile name: use lowercase letters, digits, - and _")
    return v


class Profile(Section):
    """One device or firmware: framing, format, checksum, and field → channel mapping."""

    name: Annotated[str, AfterValidator(_profile_name)]
    description: str = ""
    framing: Framing
    format: Format
    checksum: Checksum | None = None
    topic: str | None = Field(
        default=None, description="MQTT topic template; {field} picks the field, others are tags"
    )
    timestamp: Timestamp = Field(default_factory=Timestamp)
    tags: dict[Ident, str] = Field(default_factory=dict, description="tag → source field")
    fields: list[FieldMap] = Field(default_factory=list)
    batch: Batch | None = None
    spectrum: SpectrumSpec | None = None
    calibration: dict[str, dict[str, TwoPoint]] = Field(
        default_factory=dict, description="sensor id → channel name → two points"
    )

    @property
    def transport(self) -> Literal["serial", "mqtt"]:
        """Byte stream (serial) or one message per frame (MQTT)."""
        return "mqtt" if self.framing.type == "message" else "serial"

    @property
    def topic_template(self) -> str | None:
        """The MQTT topic template in force (the format's convention unless set)."""
        return self.topic or _DEFAULT_TOPICS.get(self.format.type)

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        problems: list[tuple[Loc, str]] = []
        if self.format.type in _DEFAULT_TOPICS and self.framing.type != "message":
            problems.append(
                (("framing", "type"), f"format {self.format.type} is MQTT: use framing message")
            )
        if self.topic is not None:
            if self.framing.type != "message":
                problems.append((("topic",), "only MQTT profiles (framing: message) have a topic"))
            names = _TOPIC_PLACEHOLDER.findall(self.topic)
            if len(names) != len(set(names)):
                problems.append((("topic",), "each {placeholder} may appear only once"))
        if self.format.type == "esphome" and "{field}" not in (self.topic_template or ""):
            problems.append((("topic",), "an ESPHome topic needs {field} (the sensor object id)"))
        if not self.fields and self.spectrum is None:
            problems.append((("fields",), "map at least one field (or give a spectrum)"))
        seen: dict[str, int] = {}
        for index, item in enumerate(self.fields):
            if item.channel in seen:
                problems.append(
                    (
                        ("fields", index, "name"),
                        f"channel name {item.channel!r} already used by "
                        f"fields[{seen[item.channel]}]; set name: to tell them apart",
                    )
                )
            seen.setdefault(item.channel, index)
        for sensor, mapping in self.calibration.items():
            problems += [
                (
                    ("calibration", sensor, channel),
                    f"no field named {channel!r}; fields here: {', '.join(seen) or 'none'}",
                )
                for channel in mapping
                if channel not in seen
            ]
        if self.format.type == "regex":
            groups = set(re.compile(self.format.pattern).groupindex)
            used: list[tuple[Loc, str]] = [
                (("fields", i, "source"), f.source) for i, f in enumerate(self.fields)
            ]
            used += [(("tags", tag), src) for tag, src in self.tags.items()]
            problems += [
                (loc, f"the pattern has no group named {src!r}")
                for loc, src in used
                if src not in groups
            ]
        raise_problems("Profile", problems)
        return self


# --------------------------------------------------------------------------- loading

_UNION_TYPES = {"framing": _FRAMING_TYPES, "format": _FORMAT_TYPES, "checksum": _CHECKSUM_TYPES}


def located_problems(
    exc: ValidationError,
    source: str,
    data: Any,
    lines: dict[Loc, int],
    model: type[Section] | None = None,
) -> list[str]:
    """``file:line: key.path: reason`` for each error of a profile-like document (``model``,
    default ``Profile``), sorted by line; unknown keys get a "did you mean"."""
    loading = Loading(base_dir=None, env={})
    # Re-run once with the loading context so that unknown keys get "did you mean".
    try:
        (model or Profile).model_validate(data, context={CONTEXT_KEY: loading})
    except ValidationError as again:
        exc = again
    out: list[tuple[int, str]] = []
    for error in exc.errors():
        path, parent, value = locate(tuple(error["loc"]), data)
        kind = error["type"]
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            choices = ", ".join(_UNION_TYPES.get(str(path[0]) if path else "", ()))
            if kind == "union_tag_not_found":
                path, text = (*path, "type"), f"required key is missing; one of: {choices}"
            else:
                tag = (error.get("ctx") or {}).get("tag")
                path, text = (*path, "type"), f"unknown type {tag!r}; one of: {choices}"
        elif kind == "invalid_key":
            text = f"key {error['input']!r} is not text; quote it"
        else:
            path, text = problem_text(error, path, parent, value, loading)
        line = line_of(path, lines)
        where = f"{source}:{line}:" if lines else f"{source}:"
        out.append((line, f"{where} {format_path(path)}: {text}"))
    out.sort(key=lambda item: item[0])
    return list(dict.fromkeys(text for _, text in out))


def profile_from_dict(data: Any, source: str = "<profile>") -> Profile:
    """Validate in-memory profile data exactly like a file; ConfigError lists every problem."""
    return _validate(data, source, {})


def _validate(data: Any, source: str, lines: dict[Loc, int]) -> Profile:
    if not isinstance(data, dict):
        line = lines.get((), 1)
        raise ConfigError(
            [
                f"{source}:{line}: (top level): should be a mapping of keys (name:, framing:, …), "
                f"got {'nothing' if data is None else describe_value(data)}"
            ]
        )
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(located_problems(exc, source, data, lines)) from None


def profile_path(name_or_path: str | Path, search_path: Sequence[Path] | None = None) -> Path:
    """The file a profile name or path refers to (ConfigError naming the places looked in)."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError([f"{path}: no such profile file"])
        return path
    dirs = list(search_path) if search_path is not None else [PROFILE_DIR]
    for directory in dirs:
        candidate = directory / f"{text}.yaml"
        if candidate.is_file():
            return candidate
    known = ", ".join(list_profiles(dirs)) or "none"
    modbus = ""
    if (PROFILE_DIR / "modbus" / f"{text}.yaml").is_file():
        modbus = f" ({text} is a Modbus register map: use it in a source of type: modbus)"
    raise ConfigError(
        [f"{text}: no such device profile in {', '.join(map(str, dirs))}; known: {known}" + modbus]
    )


def load_profile(name_or_path: str | Path, search_path: Sequence[Path] | None = None) -> Profile:
    """Load and validate a profile by name (``sht4x-serial``) or path; ConfigError on problems.

    A name is looked up as ``NAME.yaml`` in ``search_path`` (default: the shipped profiles).
    """
    path = profile_path(name_or_path, search_path)
    source = str(path)
    document = read_yaml(path)
    if document.problems:
        raise ConfigError(
            [
                f"{source}:{line}: {format_path(loc)}: {text}"
                for loc, line, text in document.problems
            ]
        )
    profile = _validate(document.data, source, document.lines)
    if profile.name != path.stem:
        line = document.lines.get(("name",), 1)
        raise ConfigError(
            [f"{source}:{line}: name: {profile.name!r} must match the file name {path.stem!r}"]
        )
    return profile


def list_profiles(search_path: Iterable[Path] | None = None) -> list[str]:
    """The names of the profiles found (default: the shipped ones), sorted."""
    dirs = list(search_path) if search_path is not None else [PROFILE_DIR]
    names = {p.stem for d in dirs if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)
