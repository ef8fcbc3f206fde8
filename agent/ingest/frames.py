"""What every device source shares: health counters and the frame → readings step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from agent import clock
from agent.channels import ChannelLimitError, ChannelRegistry
from agent.config.bounds import seconds_words
from agent.context import PER_READING_TAGS
from agent.errors import DecodeError
from agent.ingest.decode import DecodedValue, Decoder, DecodeResult, Spectrum
from agent.logs import get_logger
from agent.pipeline import Pipeline
from agent.reading import Channel
from agent.store.lineprotocol import encode_point
from agent.words import duration_words, iso

log = get_logger("driftgate.sources")

_RAW_PREVIEW = 120  # bytes of a bad frame quoted in the log


@dataclass(slots=True)
class SourceHealth:
    """A source's own health, reported in the self-metrics (`driftgate_source` points)."""

    connected: bool = False
    last_frame_ns: int = 0
    frames: int = 0
    readings: int = 0
    decode_errors: int = 0
    invalid: int = 0
    reconnects: int = 0
    discarded_bytes: int = 0
    slaves: list[SlaveHealth] = field(default_factory=list)
    """The devices of a shared bus (Modbus), each with its own counters."""
    time_fallbacks: int = 0

    def fields(self) -> dict[str, int | bool]:
        """As InfluxDB fields."""
        return {
            "connected": self.connected,
            "last_frame_ns": self.last_frame_ns,
            "frames": self.frames,
            "readings": self.readings,
            "decode_errors": self.decode_errors,
            "invalid": self.invalid,
            "reconnects": self.reconnects,
            "discarded_bytes": self.discarded_bytes,
            "time_fallbacks": self.time_fallbacks,
        }

    def points(self) -> list[tuple[dict[str, str], dict[str, int | bool]]]:
        """``(extra tags, fields)`` of each ``driftgate_source`` point: the source's own, then
        one per device of a bus (tagged ``slave`` and ``sensor``)."""
        out: list[tuple[dict[str, str], dict[str, int | bool]]] = [({}, self.fields())]
        out += [
            ({"slave": str(slave.slave), "sensor": slave.sensor}, slave.fields())
            for slave in self.slaves
        ]
        return out


@dataclass(slots=True)
class SlaveHealth:
    """One device on a shared bus (a Modbus slave): how its requests went.

    Each try of a request ends in exactly one of: an answer with data (``reads``), no answer
    in time (``timeouts``), bytes that were no valid answer (``crc_errors``: noise, a wrong
    baud rate or parity, two devices at one address) or a Modbus exception (``exceptions``,
    the last code in ``last_exception``).
    """

    slave: int
    sensor: str
    polls: int = 0
    reads: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    exceptions: int = 0
    last_exception: int = 0
    last_good_ns: int = 0

    def fields(self) -> dict[str, int | bool]:
        """As InfluxDB fields."""
        return {
            "polls": self.polls,
            "reads": self.reads,
            "timeouts": self.timeouts,
            "crc_errors": self.crc_errors,
            "exceptions": self.exceptions,
            "last_exception": self.last_exception,
            "last_good_ns": self.last_good_ns,
        }


def preview(raw: bytes) -> str:
    """A bad frame as a log can show it: printable, bounded."""
    text = raw[:_RAW_PREVIEW].decode("utf-8", "backslashreplace")
    return text + ("…" if len(raw) > _RAW_PREVIEW else "")


class MeasurementSink(Protocol):
    """Where a source's colour measurements go (the colour stage), beside the pipeline."""

    def spectrum(self, handler: FrameHandler, spectrum: Spectrum, raw: bytes) -> object:
        """A spectrophotometer measurement."""
        ...

    def lab_values(
        self, handler: FrameHandler, values: Sequence[DecodedValue], raw: bytes
    ) -> object:
        """A colorimeter measurement: the L*, a*, b* values of one frame."""
        ...

    def bad_frame(self, handler: FrameHandler, raw: bytes, reason: str) -> None:
        """A measurement frame that did not decode (a lost measurement)."""
        ...


PREFIX_CACHE_MAX = 1024
"""Distinct (channel, per-reading tags) line-protocol heads remembered per source."""


class FrameHandler:
    """Decodes a source's frames and hands the readings to the pipeline.

    Nothing a device sends can raise out of here: a malformed frame is counted and logged
    (identical errors are summarised per burst by the logging setup), an out-of-range value is
    counted, kept out of the data and the detectors, and its raw frame dead-lettered. A frame
    stamped by the device's own clock further from the gateway's clock than
    ``input_limits.max_ahead``/``max_behind`` is dead-lettered whole and its readings counted
    (``device_time_refused``); a reading whose new channel would pass ``input_limits.max_channels``
    is dropped and counted (``channels_refused``).

    A channel is one stream: tags that change from reading to reading (a sample id, a lot the
    device itself reports, see ``PER_READING_TAGS``) go on that reading's point only and never
    make a channel of their own.
    """

    def __init__(
        self,
        source: str,
        decoder: Decoder | None,
        pipeline: Pipeline,
        registry: ChannelRegistry,
        *,
        prefix: str,
        base_tags: Mapping[str, str],
        health: SourceHealth,
        measurements: MeasurementSink | None = None,
    ) -> None:
        self.source = source
        self.decoder = decoder
        self.pipeline = pipeline
        self.registry = registry
        self.prefix = prefix
        self.base_tags = dict(base_tags)
        self.health = health
        self.measurements = measurements
        self._channels: dict[tuple[str, tuple[tuple[str, str], ...]], Channel] = {}
        self._prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._context_version = -1
        # None: a source that decodes itself (Modbus registers) and calls ``ingest``.
        timestamp = decoder.profile.timestamp if decoder is not None else None
        self._device_clock = (
            timestamp is not None and timestamp.source == "device" and timestamp.field is not None
        )
        # A profile that stamps on arrival when the device's time is unusable (Tasmota's Time)
        # does so for a clock far off too, instead of refusing the frame.
        self._restamp = timestamp is not None and timestamp.fallback == "arrival"

    def frame(self, raw: bytes, topic: str | None = None, received_ns: int | None = None) -> None:
        """Decode one frame (or MQTT payload) and ingest what it holds."""
        decoder = self.decoder
        if decoder is None:
            raise TypeError(f"{self.source} decodes its own frames: call ingest()")
        now = clock.wall_ns() if received_ns is None else received_ns
        health = self.health
        health.frames += 1
        health.last_frame_ns = now
        try:
            result = decoder.decode(raw, topic, received_ns=now)
        except DecodeError as exc:
            health.decode_errors += 1
            self.pipeline.metrics.decode_errors += 1
            log.warning(
                "cannot decode frame",
                source=self.source,
                topic=topic if topic is None else topic[:_RAW_PREVIEW],
                reason=exc.reason,
                frame=preview(raw),
            )
            sink = self.measurements
            if sink is not None and decoder.profile.spectrum is not None:
                sink.bad_frame(self, raw, exc.reason)  # a lost measurement: dead-letter it
            return
        self.ingest(result, raw, now)

    def ingest(
        self, result: DecodeResult, raw: bytes = b"", received_ns: int | None = None
    ) -> None:
        """Hand decoded values to the pipeline; dead-letter the invalid ones.

        ``received_ns``: when the frame arrived (now if None), which a device's own clock is
        checked against.
        """
        pipeline = self.pipeline
        if self._device_clock:
            checked = self._device_time_ok(result, raw, received_ns)
            if checked is None:
                return
            result = checked
        ingest = pipeline.ingest
        taken = 0
        if result.time_fallback is not None:
            self.health.time_fallbacks += 1
            log.warning(
                "device time not usable: readings stamped on arrival",
                source=self.source,
                reason=result.time_fallback,
                hint="set the device's clock (NTP) and its time zone",
            )
        for value in result.values:
            try:
                channel, own = self._route(value)
            except ChannelLimitError as exc:
                self._channel_refused(exc)
                continue
            ingest(channel, value.ts_ns, value.value, self._prefix(channel, own) if own else None)
            taken += 1
        self.health.readings += taken
        for bad in result.invalid:
            self.health.invalid += 1
            known = self._channel_named(bad.name)
            ts = result.values[0].ts_ns if result.values else clock.wall_ns()
            pipeline.reject(bad.raw, f"{self.source}: {bad.reason}", known, ts)
            log.warning("reading out of range", source=self.source, reason=bad.reason)
        spectrum = result.spectrum
        if spectrum is not None:
            fields: dict[str, float | int | bool | str] = {
                f"r{round(nm)}": v
                for nm, v in zip(spectrum.wavelengths_nm, spectrum.values, strict=True)
            }
            tags = {**self.base_tags, **spectrum.tags, "site": pipeline.site}
            tags["gateway"] = pipeline.gateway
            if spectrum.sample:
                tags["sample"] = spectrum.sample
            pipeline.spool.append(encode_point("spectrum", tags, fields, spectrum.ts_ns))
        sink = self.measurements
        if sink is not None:
            if spectrum is not None:
                sink.spectrum(self, spectrum, raw)
            elif result.values and result.values[0].kind == "color":
                sink.lab_values(self, result.values, raw)

    def _device_time_ok(
        self, result: DecodeResult, raw: bytes, received_ns: int | None
    ) -> DecodeResult | None:
        """The frame, if the device's clock is close enough to the gateway's; else stamped on
        arrival (a profile with ``fallback: arrival``), or None: dead-lettered whole (its
        readings counted), said once per burst."""
        stamps = [v.ts_ns for v in result.values]
        if result.spectrum is not None:
            stamps.append(result.spectrum.ts_ns)
        if not stamps:
            return result
        pipeline = self.pipeline
        now = clock.wall_ns() if received_ns is None else received_ns
        first, last = min(stamps), max(stamps)
        if last - now > pipeline.device_ahead_ns:
            off, limit, key, side = last - now, pipeline.device_ahead_ns, "max_ahead", "ahead of"
        elif now - first > pipeline.device_behind_ns:
            off, limit, key, side = now - first, pipeline.device_behind_ns, "max_behind", "behind"
        else:
            return result
        if self._restamp:
            why = f"device time {iso(last if side == 'ahead of' else first)} is " \
                  f"{duration_words(off / 1e9)} {side} the gateway's clock"  # fmt: skip
            return DecodeResult(
                [replace(v, ts_ns=now) for v in result.values],
                result.invalid,
                replace(result.spectrum, ts_ns=now) if result.spectrum is not None else None,
                why,
            )
        held = len(stamps) + len(result.invalid)
        pipeline.metrics.device_time_refused += held
        device = iso(last if side == "ahead of" else first)
        pipeline.dead_letter(
            raw,
            f"{self.source}: device time {device} is {duration_words(off / 1e9)} {side} the "
            f"gateway's clock ({iso(now)}); input_limits.{key} is {seconds_words(limit / 1e9)}",
        )
        log.warning(
            "device clock out of bounds: frame refused",
            source=self.source,
            device_time=device,
            gateway_time=iso(now),
            readings=held,
            hint=f"set the device's clock (NTP), or raise input_limits.{key}",
        )
        return None

    def _channel_refused(self, exc: ChannelLimitError) -> None:
        self.pipeline.metrics.channels_refused += 1
        log.warning(
            "channel limit reached: readings of new channels are dropped",
            source=self.source,
            reason=str(exc),
            hint="raise input_limits.max_channels, or find the sender making up sensor ids "
            "or topics",
        )

    def _channel_named(self, name: str) -> Channel | None:
        """The channel an out-of-range value would have gone to (frame tags unknown: first)."""
        for (value_name, _), channel in self._channels.items():
            if value_name == name:
                return channel
        return None

    def _split(
        self, value: DecodedValue
    ) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
        """The frame's own tags: those that say which stream it is, and per-reading ones."""
        identity: list[tuple[str, str]] = []
        own: list[tuple[str, str]] = []
        base = self.base_tags
        for key, tag in sorted(value.tags.items()):
            if key in PER_READING_TAGS:
                own.append((key, tag))
            elif base.get(key) != tag:
                identity.append((key, tag))
        return tuple(identity), tuple(own)

    def _route(self, value: DecodedValue) -> tuple[Channel, tuple[tuple[str, str], ...]]:
        identity, own = self._split(value)
        key = (value.name, identity)
        channel = self._channels.get(key)
        if channel is None:
            # Tags that tell streams apart (a machine id) make separate channels:
            # prefix.<machine>.<name>.
            parts = [self.prefix, *(v for _, v in identity), value.name]
            tags = {
                **self.base_tags,
                **dict(identity),
                "site": self.pipeline.site,
                "gateway": self.pipeline.gateway,
            }
            channel = self.registry.get_or_create(
                ".".join(parts),
                measurement=value.measurement,
                field=value.field,
                unit=value.unit,
                kind=value.kind,
                tags=tags,
            )
            self._channels[key] = channel
        return channel, own

    def channel_for(self, value: DecodedValue) -> Channel:
        """The channel a decoded value belongs to (created on first sight)."""
        return self._route(value)[0]

    def _prefix(self, channel: Channel, own: tuple[tuple[str, str], ...]) -> str:
        """The line-protocol head of a reading with tags of its own (on top of the context)."""
        context = self.registry.context
        if context.version != self._context_version:
            self._prefixes.clear()
            self._context_version = context.version
        key = (channel.name, own)
        found = self._prefixes.get(key)
        if found is None:
            if len(self._prefixes) >= PREFIX_CACHE_MAX:
                self._prefixes.clear()  # a new sample id per reading: recompute, stay bounded
            found = channel.prefix_for({**context.for_tags(channel.tags), **dict(own)})
            self._prefixes[key] = found
        return found
