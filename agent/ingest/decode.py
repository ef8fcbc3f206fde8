"""Frames in, decoded values out: the framer and decoder a device profile describes.

A ``Decoder`` is built from a Profile. ``feed`` cuts a byte stream (serial) into frames and keeps
a partial frame between calls; ``decode`` turns one frame (or one MQTT payload with its topic)
into values, out-of-range values (``Invalid``) and, for a spectrophotometer, a ``Spectrum``.
Anything malformed raises ``DecodeError`` and nothing else escapes ``decode``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from agent.errors import DecodeError
from agent.ingest.profiles import (
    LOCAL_ZONE,
    Checksum,
    Crc16Checksum,
    FieldMap,
    FixedFraming,
    LineFraming,
    MessageFraming,
    Profile,
    SpectrumSpec,
    StxEtxFraming,
    TwoPoint,
)

__all__ = [
    "DecodeError",
    "DecodeResult",
    "DecodedValue",
    "Decoder",
    "Invalid",
    "Spectrum",
    "append_checksum",
    "crc16",
    "nmea_checksum",
]

_MISSING: Final = object()
_NUMBER = re.compile(
    r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)", re.I | re.ASCII
)
_INTEGER = re.compile(r"[+-]?\d{1,20}", re.ASCII)
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
# Control characters, and lone surrogates (a JSON "\ud800" escape): no UTF-8 can carry those,
# and one in a tag made every spool commit fail until the agent gave up.
_BAD_TAG = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_MAX_TAG = 256
# Device clocks outside this window were never set (an RTC at 1970 or 2000 after a reset).
_EARLIEST_NS: Final = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()) * 10**9
_LATEST_NS: Final = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp()) * 10**9
_TIME_UNITS: Final = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}

# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class DecodedValue:
    """One decoded, scaled, calibrated, in-range value of one channel at one time."""

    name: str
    measurement: str
    field: str
    unit: str
    kind: str
    value: float
    ts_ns: int
    tags: dict[str, str]


@dataclass(frozen=True, slots=True)
class Invalid:
    """A value the frame carried but physics rules out (out of range, NaN): kept out of data.

    ``raw`` is the whole frame, for the dead-letter table; ``reason`` says which value and why.
    """

    raw: bytes
    reason: str
    name: str = ""
    value: float = math.nan


@dataclass(frozen=True, slots=True)
class Spectrum:
    """A reflectance spectrum (a value per wavelength) with its sample id, for the colour stage."""

    sample: str | None
    start_nm: float
    step_nm: float
    values: tuple[float, ...]
    ts_ns: int
    tags: dict[str, str]

    @property
    def wavelengths_nm(self) -> tuple[float, ...]:
        """The wavelength of each value."""
        return tuple(self.start_nm + i * self.step_nm for i in range(len(self.values)))


@dataclass(frozen=True, slots=True)
class DecodeResult:
    """Everything one frame held."""

    values: list[DecodedValue] = field(default_factory=list)
    invalid: list[Invalid] = field(default_factory=list)
    spectrum: Spectrum | None = None
    time_fallback: str | None = None  # why the device's time was not used (stamped on arrival)


# --------------------------------------------------------------------------- checksums


def nmea_checksum(data: bytes) -> int:
    """NMEA 0183 checksum: the XOR of all bytes."""
    out = 0
    for byte in data:
        out ^= byte
    return out


def _crc_table(poly: int, reflected: bool) -> tuple[int, ...]:
    table = []
    for n in range(256):
        if reflected:
            rpoly = int(f"{poly:016b}"[::-1], 2)
            crc = n
            for _ in range(8):
                crc = (crc >> 1) ^ rpoly if crc & 1 else crc >> 1
        else:
            crc = n << 8
            for _ in range(8):
                crc = ((crc << 1) ^ poly) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


# variant: (poly, init, reflected in/out, xorout) — parameters from the CRC RevEng catalogue.
_CRC16: Final = {
    "modbus": (0x8005, 0xFFFF, True, 0x0000),
    "ccitt-false": (0x1021, 0xFFFF, False, 0x0000),
    "xmodem": (0x1021, 0x0000, False, 0x0000),
    "kermit": (0x1021, 0x0000, True, 0x0000),
}
_CRC16_TABLES: Final = {name: _crc_table(p[0], p[2]) for name, p in _CRC16.items()}


def crc16(data: bytes, variant: str = "modbus") -> int:
    """CRC-16 of ``data``: modbus (CRC-16/MODBUS), ccitt-false, xmodem or kermit."""
    _, crc, reflected, xorout = _CRC16[variant]
    table = _CRC16_TABLES[variant]
    if reflected:
        for byte in data:
            crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    else:
        for byte in data:
            crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc ^ xorout


def _checksum_text(checksum: Checksum, body: bytes) -> str:
    if isinstance(checksum, Crc16Checksum):
        return f"{crc16(body, checksum.variant):04X}"
    return f"{nmea_checksum(body):02X}"


def append_checksum(checksum: Checksum | None, payload: bytes) -> bytes:
    """``payload`` with the profile's checksum appended (what a device sends before framing)."""
    if checksum is None:
        return payload
    skip = getattr(checksum, "skip", "").encode("ascii")
    body = payload[len(skip) :] if skip and payload.startswith(skip) else payload
    return payload + checksum.separator.encode("ascii") + _checksum_text(checksum, body).encode()


def _verify(checksum: Checksum, text: str) -> str:
    """The payload without its checksum (and without the NMEA ``$``); DecodeError if wrong."""
    payload, sep, given = text.rpartition(checksum.separator)
    if not sep:
        raise DecodeError(f"no checksum: expected '{checksum.separator}' and hex digits at the end")
    skip = getattr(checksum, "skip", "")
    if skip and payload.startswith(skip):
        payload = payload[len(skip) :]
    expected = _checksum_text(checksum, payload.encode("utf-8"))
    if given.strip().upper() != expected:
        raise DecodeError(f"bad checksum: frame says {given.strip()[:8]!r}, computed {expected}")
    return payload


# --------------------------------------------------------------------------- framers


class _Framer:
    """Cuts a byte stream into frames; counts what it throws away."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.discarded_bytes = 0
        self.overflows = 0

    def feed(self, data: bytes) -> list[bytes]:
        raise NotImplementedError

    def reset(self) -> None:
        self.discarded_bytes += len(self.buf)
        self.buf.clear()

    def _overflow(self, size: int) -> None:
        self.discarded_bytes += size
        self.overflows += 1


class _LineFramer(_Framer):
    """Lines up to ``max_length``. Past it, the buffer is garbage, never a frame: it is dropped
    and the framer resynchronises at the next start marker (``start``, e.g. ``$``) or, without
    one, after the next terminator. So a valid frame right after an over-long run of
    unterminated bytes is kept whether it arrives in the same read or the next one."""

    def __init__(self, spec: LineFraming) -> None:
        super().__init__()
        self.sep = spec.terminator[-1].encode()
        self.start = spec.start
        self.max = spec.max_length
        self.skipping = False  # inside an over-long line: drop up to its end (or a start)

    def reset(self) -> None:
        super().reset()
        self.skipping = False

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while (end := buf.find(self.sep, pos)) >= 0:
            frame = bytes(buf[pos:end]).strip(b"\r\n")
            pos = end + 1
            if self.skipping:
                self.skipping = False
                if self.start is None:  # nothing but the terminator marks where a frame begins
                    self.discarded_bytes += len(frame)
                    continue
            if self.start is not None and frame:
                at = frame.rfind(self.start)
                if at < 0:
                    self.discarded_bytes += len(frame)
                    continue
                self.discarded_bytes += at
                frame = frame[at:]
            if len(frame) > self.max:
                self._overflow(len(frame))
            elif frame:
                out.append(frame)
        del buf[:pos]
        if len(buf) > self.max:
            self._cut(buf)
        return out

    def _cut(self, buf: bytearray) -> None:
        """Drop an over-long unterminated run, keeping a frame that starts inside it."""
        at = buf.rfind(self.start) if self.start is not None else -1
        if at > 0 and len(buf) - at <= self.max:
            self._overflow(at)
            del buf[:at]
            self.skipping = False
            return
        self._overflow(len(buf))
        buf.clear()
        self.skipping = True


class _StxEtxFramer(_Framer):
    def __init__(self, spec: StxEtxFraming) -> None:
        super().__init__()
        self.stx = spec.start
        self.etx = spec.end
        self.max = spec.max_length
        self.inside = False

    def reset(self) -> None:
        self.discarded_bytes += self.inside  # the STX of the partial frame
        super().reset()
        self.inside = False

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n:
            if not self.inside:
                start = data.find(self.stx, pos)
                if start < 0:
                    self.discarded_bytes += n - pos
                    break
                self.discarded_bytes += start - pos
                self.inside = True
                pos = start + 1
                continue
            end = data.find(self.etx, pos)
            restart = data.find(self.stx, pos, end if end >= 0 else n)
            if restart >= 0:  # a new STX before the ETX: the frame before it was cut short
                self.discarded_bytes += len(self.buf) + restart - pos + 1
                self.buf.clear()
                pos = restart + 1
                continue
            if end < 0:
                self.buf += data[pos:]
                if len(self.buf) > self.max:
                    self._overflow(len(self.buf) + 1)
                    self.buf.clear()
                    self.inside = False
                break
            self.buf += data[pos:end]
            pos = end + 1
            self.inside = False
            if len(self.buf) > self.max:
                self._overflow(len(self.buf) + 2)
            else:
                out.append(bytes(self.buf))
            self.buf.clear()
        return out


class _FixedFramer(_Framer):
    def __init__(self, spec: FixedFraming) -> None:
        super().__init__()
        self.length = spec.length
        self.sync = spec.sync

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while True:
            if self.sync is not None:
                at = buf.find(self.sync, pos)
                if at < 0:
                    keep = len(self.sync) - 1
                    drop = max(len(buf) - pos - keep, 0)
                    self.discarded_bytes += drop
                    pos += drop
                    break
                self.discarded_bytes += at - pos
                pos = at
            if len(buf) - pos < self.length:
                break
            out.append(bytes(buf[pos : pos + self.length]))
            pos += self.length
        del buf[:pos]
        return out


class _MessageFramer(_Framer):
    def __init__(self, spec: MessageFraming) -> None:
        super().__init__()
        self.max = spec.max_length

    def feed(self, data: bytes) -> list[bytes]:
        if len(data) > self.max:
            self._overflow(len(data))
            return []
        return [bytes(data)] if data else []


def _framer(profile: Profile) -> _Framer:
    spec = profile.framing
    if isinstance(spec, LineFraming):
        return _LineFramer(spec)
    if isinstance(spec, StxEtxFraming):
        return _StxEtxFramer(spec)
    if isinstance(spec, FixedFraming):
        return _FixedFramer(spec)
    return _MessageFramer(spec)


# --------------------------------------------------------------------------- field access


def _topic_pattern(template: str) -> re.Pattern[str]:
    """``{name}`` captures one topic level; MQTT's ``+`` and a final ``#`` match without one."""
    out, pos = "", 0
    for match in re.finditer(
        r"\{([A-Za-z_][A-Za-z0-9_]*)\}|(?<![^/])\+(?![^/])|/?(?<![^/])#$", template
    ):
        out += re.escape(template[pos : match.start()])
        token = match.group(0)
        if match.group(1):
            out += f"(?P<{match.group(1)}>[^/]+)"
        elif token == "+":
            out += "[^/]+"
        else:
            out += "(?:/.*)?" if token.startswith("/") else ".*"
        pos = match.end()
    return re.compile(out + re.escape(template[pos:]))


def _json_path(path: str) -> list[str | int]:
    text = path.removeprefix("$").removeprefix(".")
    parts: list[str | int] = []
    for match in _PATH_PART.finditer(text):
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
    return parts


def _json_get(doc: Any, parts: list[str | int]) -> Any:
    node = doc
    for part in parts:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return _MISSING
            node = node[part]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return _MISSING
    return node


def _number(raw: Any, what: str) -> float:
    """A float from a frame value; DecodeError if it is not a number (NaN/inf pass through)."""
    if isinstance(raw, bool):
        raise DecodeError(f"{what}: expected a number, got {raw!r}")
    if isinstance(raw, int):
        try:
            return float(raw)
        except OverflowError:
            return math.inf if raw > 0 else -math.inf
    if isinstance(raw, float):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        if _NUMBER.fullmatch(text):
            return float(text)
    shown = repr(raw) if not isinstance(raw, dict | list) else type(raw).__name__
    raise DecodeError(f"{what}: expected a number, got {shown[:40]}")


def _tag_text(raw: Any, what: str) -> str:
    if isinstance(raw, str):
        text = raw.strip()
    elif isinstance(raw, int) and not isinstance(raw, bool):
        text = str(raw)
    else:
        raise DecodeError(f"tag {what}: expected text, got {type(raw).__name__}")
    if not text or len(text) > _MAX_TAG or _BAD_TAG.search(text):
        raise DecodeError(f"tag {what}: {text[:40]!r} is empty, too long or has control characters")
    return text


# --------------------------------------------------------------------------- the decoder


class Decoder:
    """Frames and decodes one device's data as its profile says.

    ``tags`` are added to every value (a frame's own tags win); ``sensor`` is the sensor id
    when the frame carries none; ``calibration`` (sensor id → channel → two points) extends
    and overrides the profile's; ``topic`` is the MQTT topic template to match instead of the
    profile's (an MQTT source's own, e.g. ``factory/{zone}/tele/{sensor}/SENSOR``).
    """

    def __init__(
        self,
        profile: Profile,
        *,
        tags: Mapping[str, str] | None = None,
        sensor: str | None = None,
        calibration: Mapping[str, Mapping[str, TwoPoint]] | None = None,
        topic: str | None = None,
    ) -> None:
        self.profile = profile
        self.tags = dict(tags or {})
        if sensor is not None:
            self.tags.setdefault("sensor", sensor)
        self.calibration: dict[str, dict[str, TwoPoint]] = {
            k: dict(v) for k, v in profile.calibration.items()
        }
        for sensor_id, points in (calibration or {}).items():
            self.calibration.setdefault(sensor_id, {}).update(points)
        self._framer = _framer(profile)
        template = topic or profile.topic_template
        self.topic_template = template
        self._topic = _topic_pattern(template) if template else None
        fmt = profile.format
        self._regex = re.compile(fmt.pattern) if fmt.type == "regex" else None
        self._json = fmt.type in ("json", "tasmota")
        self._paths = {src: _json_path(src) for src in self._sources() if self._json}
        self._max_frame = getattr(profile.framing, "max_length", None) or max(
            getattr(profile.framing, "length", 0), 1
        )
        stamp = profile.timestamp
        # None for "local": a naive datetime's timestamp() is taken in the gateway's zone.
        self._zone = (
            ZoneInfo(stamp.timezone)
            if stamp.unit == "iso8601" and stamp.timezone != LOCAL_ZONE
            else None
        )

    def _sources(self) -> list[str]:
        p = self.profile
        out = [f.source for f in p.fields] + list(p.tags.values())
        out += list(getattr(p.format, "match", {}))
        if p.spectrum is not None:
            out.append(p.spectrum.source)
        if p.timestamp.field:
            out.append(p.timestamp.field)
        if p.batch is not None and p.batch.rate_field:
            out.append(p.batch.rate_field)
        return out

    # -- framing

    @property
    def discarded_bytes(self) -> int:
        """Bytes thrown away by the framer: garbage, over-long and reset partial frames."""
        return self._framer.discarded_bytes

    @property
    def overflows(self) -> int:
        """How often a buffer grew past the maximum frame length and was discarded."""
        return self._framer.overflows

    def feed(self, data: bytes) -> list[bytes]:
        """The complete frames in ``data`` plus what was buffered before (framing removed)."""
        return self._framer.feed(data)

    def reset(self) -> None:
        """Discard a partial frame (the port was reopened: its start is gone)."""
        self._framer.reset()

    # -- decoding

    def decode(self, frame: bytes, topic: str | None = None, *, received_ns: int) -> DecodeResult:
        """Decode one frame (or MQTT payload with its topic); DecodeError if it is malformed."""
        try:
            return self._decode(frame, topic, received_ns)
        except DecodeError:
            raise
        except Exception as exc:  # a decoder bug or a pathological frame must not kill a source
            raise DecodeError(f"cannot decode: {type(exc).__name__}: {str(exc)[:80]}") from None

    def _decode(self, frame: bytes, topic: str | None, received_ns: int) -> DecodeResult:
        profile = self.profile
        if len(frame) > self._max_frame:
            raise DecodeError(f"frame of {len(frame)} bytes is longer than {self._max_frame}")
        try:
            text = bytes(frame).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"not UTF-8 text (byte {exc.start})") from None
        text = text.strip("\r\n")
        if profile.checksum is not None:
            text = _verify(profile.checksum, text)

        topic_vars: dict[str, str] = {}
        if self._topic is not None:
            if topic is None:
                raise DecodeError(f"needs the MQTT topic ({self.topic_template})")
            match = self._topic.fullmatch(topic)
            if match is None:
                raise DecodeError(f"unknown topic {topic[:120]!r}: expected {self.topic_template}")
            topic_vars = match.groupdict()

        get = self._parse(text, topic_vars)
        fmt_match: Mapping[str, str] = getattr(profile.format, "match", {})
        for source, literal in fmt_match.items():
            found = get(source)
            if found is _MISSING or str(found).strip() != literal:
                shown = "nothing" if found is _MISSING else repr(str(found)[:40])
                raise DecodeError(f"{source} is {shown}, expected {literal!r}: not this device")

        tags = dict(self.tags)
        for name, value in topic_vars.items():
            if name != "field":
                tags[name] = _tag_text(value, name)
        for name, source in profile.tags.items():
            raw = get(source)
            if raw is _MISSING:
                raise DecodeError(f"missing {source!r} (tag {name})")
            tags[name] = _tag_text(raw, name)
        time_fallback = None
        try:
            ts_ns = self._timestamp(get, received_ns)
        except DecodeError as exc:
            if profile.timestamp.fallback != "arrival":
                raise
            ts_ns, time_fallback = received_ns, exc.reason
        rate = self._rate(get)
        calibration = self.calibration.get(tags.get("sensor", ""), {})

        result = DecodeResult(time_fallback=time_fallback)
        found_any = False
        for spec in profile.fields:
            raw = get(spec.source)
            if raw is _MISSING or raw is None:
                if spec.required and profile.format.type != "esphome":
                    raise DecodeError(f"missing field {spec.source!r}")
                continue
            found_any = True
            self._values(spec, raw, ts_ns, rate, tags, calibration, frame, result)
        if profile.spectrum is not None:
            spectrum = self._spectrum(profile.spectrum, get, ts_ns, tags, frame, result)
            result = DecodeResult(result.values, result.invalid, spectrum, time_fallback)
            found_any = True
        if not found_any:
            raise DecodeError(
                f"unknown sensor {topic_vars.get('field', '')!r}: no field of this profile"
            )
        return result

    def _parse(self, text: str, topic_vars: Mapping[str, str]) -> Callable[[str], Any]:
        fmt = self.profile.format
        if self._json:
            try:
                doc = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise DecodeError(f"not JSON: {str(exc)[:80]}") from None
            if not isinstance(doc, dict):
                raise DecodeError(f"JSON should be an object, got {type(doc).__name__}")
            paths = self._paths
            return lambda source: _json_get(doc, paths[source])
        fields: dict[str, Any]
        if fmt.type == "csv":
            parts = text.split(fmt.delimiter)
            columns = fmt.columns
            if fmt.rest is None and len(parts) != len(columns):
                raise DecodeError(f"expected {len(columns)} columns, got {len(parts)}")
            if fmt.rest is not None and len(parts) <= len(columns):
                raise DecodeError(f"expected more than {len(columns)} columns, got {len(parts)}")
            fields = dict(zip(columns, parts, strict=False))
            if fmt.rest is not None:
                fields[fmt.rest] = parts[len(columns) :]
        elif fmt.type == "kv":
            fields = {}
            for pair in text.split(fmt.pair_separator):
                key, sep, value = pair.partition(fmt.kv_separator)
                key = key.strip()
                if not sep or not key:
                    raise DecodeError(f"{pair[:40]!r} is not key{fmt.kv_separator}value")
                if key in fields:
                    raise DecodeError(f"key {key[:40]!r} appears twice")
                fields[key] = value
        elif fmt.type == "regex":
            assert self._regex is not None
            match = self._regex.fullmatch(text)
            if match is None:
                raise DecodeError("does not match the profile's pattern")
            fields = match.groupdict()
        else:  # esphome: the topic names the one field, the payload is its number
            fields = {topic_vars["field"]: text}
        return lambda source: fields.get(source, _MISSING)

    def _timestamp(self, get: Callable[[str], Any], received_ns: int) -> int:
        spec = self.profile.timestamp
        if spec.source == "arrival" or spec.field is None:
            return received_ns
        raw = get(spec.field)
        if raw is _MISSING:
            raise DecodeError(f"missing time field {spec.field!r}")
        if spec.unit == "iso8601":
            if not isinstance(raw, str):
                raise DecodeError(f"{spec.field}: expected an ISO 8601 time")
            try:
                when = datetime.fromisoformat(raw.strip())
            except ValueError:
                raise DecodeError(f"{spec.field}: {raw[:40]!r} is not an ISO 8601 time") from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=self._zone)
            ts = int(when.timestamp() * 1e6) * 1000
        else:
            if isinstance(raw, str) and _INTEGER.fullmatch(raw.strip()):
                raw = int(raw.strip())
            if not isinstance(raw, int) or isinstance(raw, bool):
                raise DecodeError(f"{spec.field}: expected a whole number of {spec.unit}")
            ts = raw * _TIME_UNITS[spec.unit]
        if not _EARLIEST_NS <= ts < _LATEST_NS:
            raise DecodeError(
                f"{spec.field}: device time {raw!r} is not plausible (clock not set?)"
            )
        return ts

    def _rate(self, get: Callable[[str], Any]) -> float | None:
        batch = self.profile.batch
        if batch is None:
            return None
        if batch.rate_hz is not None:
            return batch.rate_hz
        assert batch.rate_field is not None
        raw = get(batch.rate_field)
        if raw is _MISSING:
            raise DecodeError(f"missing rate field {batch.rate_field!r}")
        rate = _number(raw, batch.rate_field)
        if not batch.min_rate_hz <= rate <= batch.max_rate_hz:
            raise DecodeError(
                f"sample rate {rate:g} Hz outside [{batch.min_rate_hz:g}, {batch.max_rate_hz:g}]"
            )
        return rate

    def _values(
        self,
        spec: FieldMap,
        raw: Any,
        ts_ns: int,
        rate: float | None,
        tags: dict[str, str],
        calibration: Mapping[str, TwoPoint],
        frame: bytes,
        result: DecodeResult,
    ) -> None:
        channel = spec.channel
        if isinstance(raw, list):
            batch = self.profile.batch
            if batch is None or rate is None:
                raise DecodeError(f"{spec.source} holds {len(raw)} values but there is no batch:")
            if not 1 <= len(raw) <= batch.max_samples:
                raise DecodeError(
                    f"{spec.source}: {len(raw)} samples, expected 1…{batch.max_samples}"
                )
            raws = [_number(item, spec.source) for item in raw]
            step = 1e9 / rate
            first = (
                ts_ns
                if self.profile.timestamp.source == "device" and result.time_fallback is None
                else ts_ns - round((len(raws) - 1) * step)
            )
            times = [first + round(i * step) for i in range(len(raws))]
        else:
            raws = [_number(raw, spec.source)]
            times = [ts_ns]
        points = calibration.get(channel)
        low, high = spec.range if spec.range is not None else (-math.inf, math.inf)
        append = result.values.append
        for number, ts in zip(raws, times, strict=True):
            value = number * spec.scale + spec.offset
            if points is not None:
                value = points.apply(value)
            if not math.isfinite(value):
                result.invalid.append(
                    Invalid(frame, f"{channel}: {value} is not a number", channel, value)
                )
            elif not low <= value <= high:
                result.invalid.append(
                    Invalid(
                        frame,
                        f"{channel}: {value:g} {spec.unit} outside [{low:g}, {high:g}]".replace(
                            "  ", " "
                        ),
                        channel,
                        value,
                    )
                )
            else:
                append(
                    DecodedValue(
                        channel, spec.measurement, spec.field, spec.unit, spec.kind, value, ts, tags
                    )
                )

    def _spectrum(
        self,
        spec: SpectrumSpec,
        get: Callable[[str], Any],
        ts_ns: int,
        tags: dict[str, str],
        frame: bytes,
        result: DecodeResult,
    ) -> Spectrum | None:
        raw = get(spec.source)
        if not isinstance(raw, list):
            raise DecodeError(f"missing spectrum {spec.source!r}")
        if len(raw) != spec.count:
            raise DecodeError(f"spectrum has {len(raw)} values, expected {spec.count}")
        values = tuple(_number(item, spec.source) * spec.scale for item in raw)
        low, high = spec.range if spec.range is not None else (-math.inf, math.inf)
        for i, value in enumerate(values):
            if not (math.isfinite(value) and low <= value <= high):
                nm = spec.start_nm + i * spec.step_nm
                result.invalid.append(
                    Invalid(
                        frame,
                        f"spectrum at {nm:g} nm: {value:g} outside [{low:g}, {high:g}]",
                        "spectrum",
                        value,
                    )
                )
                return None
        return Spectrum(tags.get(spec.sample_tag), spec.start_nm, spec.step_nm, values, ts_ns, tags)
