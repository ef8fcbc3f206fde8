"""Modbus register maps: which registers of a device hold which readings, and how to decode them.

A register map is the Modbus counterpart of a device profile: one YAML file per device model
in ``firmware_configs/modbus/`` (package data, ``agent/ingest/firmware_configs/modbus/``). Each
entry names one value: the function that reads it (3 holding, 4 input registers), its 0-based
address, its type (int16, uint16, int32, uint32, float32) with word and byte order, and the
same scale, offset, unit, channel and range as a profile's field. Problems are reported like
the other profiles': ``{file}:{line}: {key.path}: {reason}``, all at once, as ConfigError.

``read_plan`` merges the registers of one function that sit next to each other into one
request (the XY-MD02's temperature and humidity are one read of two input registers), so a slow
RS-485 bus spends its time on as few exchanges as the map allows; ``decode_block`` turns the
answer of one request into the values and out-of-range values a FrameHandler ingests, and
``encode_value`` is its inverse (the device emulator's side).
"""

from __future__ import annotations

import functools
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator

from agent.config.base import Loc, Section, raise_problems, reason
from agent.config.loader import describe_value, format_path, read_yaml
from agent.errors import ConfigError, DecodeError
from agent.ingest.decode import DecodedValue, DecodeResult, Invalid
from agent.ingest.profiles import PROFILE_DIR, Finite, Ident, Range, Scale, located_problems

__all__ = [
    "FUNCTIONS",
    "REGISTER_MAP_DIR",
    "ReadBlock",
    "Register",
    "RegisterMap",
    "decode_block",
    "encode_value",
    "is_register_map",
    "list_register_maps",
    "load_register_map",
    "read_plan",
    "register_map_from_dict",
]

REGISTER_MAP_DIR: Path = PROFILE_DIR / "modbus"
"""Where the shipped register maps live (package data)."""

FUNCTIONS: Final = {3: "holding", 4: "input"}
"""The read functions a register map may use: code → the register table it reads."""

MAX_READ: Final = 125
"""Registers one request may ask for (the Modbus limit of function 3 and 4)."""

_WIDTH: Final = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
_STRUCT: Final = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")

RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32"]
Order = Literal["big", "little"]


def _function(v: Any) -> int:
    if isinstance(v, str) and v.strip().lower() in ("holding", "input"):
        return 3 if v.strip().lower() == "holding" else 4
    if isinstance(v, int) and not isinstance(v, bool) and v in FUNCTIONS:
        return v
    raise reason(
        f"{describe_value(v)} is not a read function: use 3 or holding (read holding "
        "registers), 4 or input (read input registers)"
    )


def _map_name(v: str) -> str:
    if not _NAME.fullmatch(v):
        raise reason(f"{v!r} is not a register map name: use lowercase letters, digits, - and _")
    return v


Function = Annotated[int, BeforeValidator(_function)]
Address = Annotated[int, Field(ge=0, le=65535)]


class FactorySettings(Section):
    """How the device leaves the factory: quoted in the hints when it does not answer."""

    slave: Annotated[int, Field(ge=1, le=247)] | None = None
    baud: Annotated[int, Field(ge=50, le=4_000_000)] | None = None
    parity: Literal["N", "E", "O"] | None = None
    stopbits: Literal[1, 2] | None = None

    def words(self) -> str:
        """``slave 240, 19200 8N2`` (what is known of it)."""
        parts = [] if self.slave is None else [f"slave {self.slave}"]
        if self.baud is not None:
            parts.append(f"{self.baud} 8{self.parity or 'N'}{self.stopbits or 1}")
        return ", ".join(parts)


class Register(Section):
    """One value in the device's registers → one channel: value = raw × scale + offset."""

    function: Function
    address: Address = Field(description="0-based (the address on the wire, not register 40001)")
    type: RegisterType
    count: Annotated[int, Field(ge=1, le=2)] | None = Field(
        default=None, description="registers it spans; implied by type (checked when given)"
    )
    word_order: Order = Field(default="big", description="32-bit types: big = high word first")
    byte_order: Order = Field(default="big", description="big = high byte first (Modbus)")
    name: Ident | None = Field(default=None, description="channel short name; default: field")
    measurement: Ident
    field: Ident
    unit: str = ""
    kind: Literal["climate", "tension", "color"]
    scale: Scale = 1.0
    offset: Finite = 0.0
    range: Range = None

    @property
    def width(self) -> int:
        """How many 16-bit registers the value spans."""
        return _WIDTH[self.type]

    @property
    def channel(self) -> str:
        """The channel short name (``name``, else the field key)."""
        return self.name or self.field

    @model_validator(mode="after")
    def _consistent(self) -> Register:
        problems: list[tuple[Loc, str]] = []
        if self.count is not None and self.count != self.width:
            problems.append(
                (("count",), f"{self.type} spans {self.width} register(s), not {self.count}")
            )
        if self.word_order != "big" and self.width == 1:
            problems.append(
                (("word_order",), f"only 32-bit types have a word order, not {self.type}")
            )
        if self.address + self.width > 65536:
            problems.append((("address",), f"{self.type} at {self.address} runs past 65535"))
        raise_problems("Register", problems)
        return self


class RegisterMap(Section):
    """One Modbus device model: the registers that hold its readings."""

    name: Annotated[str, AfterValidator(_map_name)]
    description: str = ""
    factory: FactorySettings = Field(default_factory=FactorySettings)
    registers: Annotated[list[Register], Field(min_length=1)]

    @model_validator(mode="after")
    def _distinct(self) -> RegisterMap:
        problems: list[tuple[Loc, str]] = []
        names: dict[str, int] = {}
        spans: list[tuple[int, int, int, int]] = []  # function, first, last, index
        for index, item in enumerate(self.registers):
            if item.channel in names:
                problems.append(
                    (
                        ("registers", index, "name"),
                        f"channel name {item.channel!r} already used by "
                        f"registers[{names[item.channel]}]; set name: to tell them apart",
                    )
                )
            names.setdefault(item.channel, index)
            first, last = item.address, item.address + item.width - 1
            for function, other_first, other_last, other in spans:
                if function == item.function and first <= other_last and other_first <= last:
                    problems.append(
                        (
                            ("registers", index, "address"),
                            f"{FUNCTIONS[function]} register {first} overlaps registers[{other}] "
                            f"({other_first}…{other_last})",
                        )
                    )
                    break
            spans.append((item.function, first, last, index))
        raise_problems("RegisterMap", problems)
        return self


# --------------------------------------------------------------------------- loading


def _validate(data: Any, source: str, lines: dict[Loc, int]) -> RegisterMap:
    if not isinstance(data, dict):
        line = lines.get((), 1)
        raise ConfigError(
            [
                f"{source}:{line}: (top level): should be a mapping of keys (name:, registers:, "
                f"…), got {'nothing' if data is None else describe_value(data)}"
            ]
        )
    if "framing" in data and "registers" not in data:
        line = lines.get(("framing",), 1)
        raise ConfigError(
            [
                f"{source}:{line}: framing: this is a device profile for a serial or MQTT "
                "source, not a Modbus register map (registers:)"
            ]
        )
    try:
        return RegisterMap.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(located_problems(exc, source, data, lines, RegisterMap)) from None


def register_map_from_dict(data: Any, source: str = "<register map>") -> RegisterMap:
    """Validate in-memory register map data exactly like a file; ConfigError lists every problem."""
    return _validate(data, source, {})


def _is_path(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml"))


def list_register_maps(directory: Path = REGISTER_MAP_DIR) -> list[str]:
    """The names of the shipped register maps, sorted."""
    return sorted(p.stem for p in directory.glob("*.yaml"))


def is_register_map(name_or_path: str | Path, directory: Path = REGISTER_MAP_DIR) -> bool:
    """Whether a profile name or file is a Modbus register map (it has ``registers:``)."""
    if not _is_path(name_or_path):
        return (directory / f"{name_or_path}.yaml").is_file()
    try:
        data = yaml.safe_load(Path(name_or_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "registers" in data


def load_register_map(name_or_path: str | Path, directory: Path = REGISTER_MAP_DIR) -> RegisterMap:
    """A register map by name (``xy-md02``) or path; ConfigError on problems, one
    ``file:line: key: reason`` each."""
    if _is_path(name_or_path):
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError([f"{path}: no such register map file"])
    else:
        path = directory / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(list_register_maps(directory)) or "none"
            raise ConfigError(
                [f"{name_or_path}: no such Modbus register map in {directory}; known: {known}"]
            )
    source = str(path)
    document = read_yaml(path)
    if document.problems:
        raise ConfigError(
            [f"{source}:{line}: {format_path(loc)}: {why}" for loc, line, why in document.problems]
        )
    found = _validate(document.data, source, document.lines)
    if found.name != path.stem:
        line = document.lines.get(("name",), 1)
        raise ConfigError(
            [f"{source}:{line}: name: {found.name!r} must match the file name {path.stem!r}"]
        )
    return found


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One request: ``count`` registers from ``address`` with ``function``, and what they hold."""

    function: int
    address: int
    count: int
    registers: tuple[Register, ...]


def read_plan(registers: Iterable[Register], max_read: int = MAX_READ) -> list[ReadBlock]:
    """The requests that read every register: adjacent registers of one function share one.

    Only registers that touch are merged: a gap could hold an address the device refuses
    (exception 2, illegal data address) and fail the whole request.
    """
    ordered = sorted(registers, key=lambda r: (r.function, r.address))
    blocks: list[ReadBlock] = []
    group: list[Register] = []
    for item in ordered:
        if group:
            head = group[0]
            end = group[-1].address + group[-1].width
            fits = item.address + item.width - head.address <= max_read
            if item.function == head.function and item.address == end and fits:
                group.append(item)
                continue
            blocks.append(_block(group))
        group = [item]
    if group:
        blocks.append(_block(group))
    return blocks


def _block(group: list[Register]) -> ReadBlock:
    first = group[0].address
    count = group[-1].address + group[-1].width - first
    return ReadBlock(group[0].function, first, count, tuple(group))


def _raw_value(item: Register, words: Sequence[int]) -> float:
    """The number the registers hold, before scale and offset."""
    if item.byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    if item.width == 2 and item.word_order == "little":
        words = [words[1], words[0]]
    packed = b"".join(w.to_bytes(2, "big") for w in words)
    value: float = struct.unpack(">" + _STRUCT[item.type], packed)[0]
    return _shortest_float32(value, packed) if item.type == "float32" else value


def _shortest_float32(value: float, packed: bytes) -> float:
    """The float32 as the device meant it: 30.56, not 30.559999465942383 (the shortest decimal
    that is the same float32)."""
    if not math.isfinite(value):
        return value
    for digits in range(6, 10):
        shorter = float(f"{value:.{digits}g}")
        if struct.pack(">f", shorter) == packed:
            return shorter
    return value


@functools.cache
def _decimals(scale: float, offset: float) -> int:
    """The decimals an integer × scale + offset can have: those of scale and offset."""
    places = [-int(Decimal(repr(x)).as_tuple().exponent) for x in (scale, offset)]
    return max(0, *places)


def raw_text(block: ReadBlock, slave: int, words: Sequence[int]) -> bytes:
    """A read as the dead-letter table keeps it: which device, which registers, what they held."""
    held = " ".join(f"{w:04X}" for w in words)
    kind = FUNCTIONS[block.function]
    return f"modbus slave={slave} {kind}@{block.address}: {held}".encode("ascii")


def decode_block(
    block: ReadBlock,
    words: Sequence[int],
    *,
    slave: int,
    ts_ns: int,
    tags: Mapping[str, str],
) -> DecodeResult:
    """The values in the answer to one request: in range, or Invalid (out of range, NaN)."""
    if len(words) != block.count:
        raise DecodeError(f"asked for {block.count} registers, the answer holds {len(words)}")
    result = DecodeResult()
    raw: bytes | None = None
    own = dict(tags)
    for item in block.registers:
        offset = item.address - block.address
        value = _raw_value(item, words[offset : offset + item.width]) * item.scale + item.offset
        if item.type != "float32":  # 483 × 0.1 is 48.3, not 48.300000000000004
            value = round(value, _decimals(item.scale, item.offset))
        low, high = item.range if item.range is not None else (-math.inf, math.inf)
        if math.isfinite(value) and low <= value <= high:
            result.values.append(
                DecodedValue(
                    item.channel, item.measurement, item.field, item.unit, item.kind, value,
                    ts_ns, own,
                )
            )  # fmt: skip
            continue
        raw = raw if raw is not None else raw_text(block, slave, words)
        why = (
            f"{item.channel}: {value} is not a number (the device has no value)"
            if not math.isfinite(value)
            else f"{item.channel}: {value:g} {item.unit} outside [{low:g}, {high:g}]".replace(
                "  ", " "
            )
        )
        result.invalid.append(Invalid(raw, why, item.channel, value))
    return result


def encode_value(item: Register, value: float) -> list[int]:
    """The registers a device holds for ``value`` (the inverse of decoding, rounded to the
    type): what an emulated device serves."""
    raw = (value - item.offset) / item.scale
    code = _STRUCT[item.type]
    if code == "f":
        packed = struct.pack(">f", raw)
    else:
        bits = 16 * item.width
        signed = code.islower()
        low = -(2 ** (bits - 1)) if signed else 0
        high = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
        packed = struct.pack(">" + code, min(max(round(raw), low), high))
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    if item.width == 2 and item.word_order == "little":
        words = [words[1], words[0]]
    if item.byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words
