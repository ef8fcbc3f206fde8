"""The serial source: a device on a USB / RS-485 serial port, framed and decoded by its profile.

Bytes arrive through pyserial-asyncio-fast as an ``asyncio.Protocol``: ``data_received`` feeds
the profile's framer and decodes the complete frames right there, in the event loop's read
callback. No StreamReader in between (no second buffer, no task wake-up and ``await`` per
chunk), and a callback handles at most one read (1 KiB) of frames, so it never blocks the loop
for long.

When the device goes away (USB unplug: the read fails, or the port closes) the partial frame in
the framer is discarded, not joined to whatever arrives after the replug, and the
``Reconnector`` opens the port again with backoff. Garbage on the line and a wrong baud rate
cost counted bytes and frames, and one warning per burst; they never end the task.
"""

from __future__ import annotations

import asyncio

import serial
import serial_asyncio_fast

from agent import clock
from agent.channels import ChannelRegistry
from agent.config import SerialSourceConfig
from agent.errors import ConfigError
from agent.ingest.decode import Decoder
from agent.ingest.frames import FrameHandler, MeasurementSink, SourceHealth
from agent.ingest.profiles import Profile, load_profile
from agent.ingest.reconnect import Reconnector
from agent.logs import get_logger
from agent.pipeline import Pipeline
from agent.reading import Channel

log = get_logger("driftgate.sources.serial")

SAME_MOMENT_NS = 1_000_000
"""Reads closer than this (a coarse clock) are one moment: their frames continue the 1 ns steps."""

_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
_STOPBITS = {1: serial.STOPBITS_ONE, 2: serial.STOPBITS_TWO}
_BYTESIZE = {5: serial.FIVEBITS, 6: serial.SIXBITS, 7: serial.SEVENBITS, 8: serial.EIGHTBITS}


class _PortProtocol(asyncio.Protocol):
    """Hands the bytes of one open port to its source; resolves ``lost`` when the port goes."""

    def __init__(self, source: SerialSource) -> None:
        self.source = source
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.source.received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class SerialSource:
    """Reads one serial device (``sources: - type: serial``) into the pipeline."""

    def __init__(
        self,
        cfg: SerialSourceConfig,
        pipeline: Pipeline | None,
        registry: ChannelRegistry,
        *,
        profile: Profile | None = None,
        measurements: MeasurementSink | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.registry = registry
        self.measurements = measurements
        self.profile = profile if profile is not None else load_profile(cfg.profile)
        self.check_profile(cfg, self.profile)
        self.decoder = Decoder(self.profile, tags=cfg.base_tags(), sensor=cfg.sensor)
        self.health = SourceHealth()
        self._handler: FrameHandler | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._protocol: _PortProtocol | None = None
        self._noisy = False  # inside a burst of discarded bytes
        self._burst_bytes = 0
        self._last_ns = 0  # the last receive time given to a frame
        if pipeline is not None:
            self._bind(pipeline)

    @staticmethod
    def check_profile(cfg: SerialSourceConfig, profile: Profile) -> None:
        """ConfigError if the profile is not for a serial device (an MQTT one's frames are
        whole messages with a topic, which a port never gives)."""
        if profile.transport != "serial":
            raise ConfigError(
                [
                    f"sources.{cfg.name}.profile: {profile.name} is an MQTT device profile "
                    "(framing: message); a serial source needs a serial one"
                ]
            )

    def channels(self) -> list[Channel]:
        """The channels seen so far (none up front: the device's frames name them)."""
        return self._handler.channels if self._handler is not None else []

    def _bind(self, pipeline: Pipeline) -> FrameHandler:
        handler = self._handler
        if handler is None or handler.pipeline is not pipeline:
            handler = FrameHandler(
                self.name,
                self.decoder,
                pipeline,
                self.registry,
                prefix=self.cfg.prefix(),
                base_tags=self.cfg.base_tags(),
                health=self.health,
                measurements=self.measurements,
            )
            self._handler = handler
        return handler

    async def run(self, pipeline: Pipeline) -> None:
        """Read the port until cancelled, reopening it whenever the device comes back."""
        self._bind(pipeline)
        reconnector = Reconnector(
            self,
            source=self.name,
            what="serial device",
            health=self.health,
            cap=self.cfg.reconnect_max,
        )
        await reconnector.run()

    # -- the link (what the Reconnector drives)

    async def open(self) -> None:
        """Open the port with the configured line settings."""
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        self.decoder.reset()  # bytes of a frame begun before the port (re)opened are not data
        self._sync_discarded(warn=False)
        self._noisy = False
        self._burst_bytes = 0
        transport, protocol = await serial_asyncio_fast.create_serial_connection(
            loop,
            lambda: _PortProtocol(self),
            cfg.port,
            baudrate=cfg.baud,
            bytesize=_BYTESIZE[cfg.bytesize],
            parity=_PARITY[cfg.parity],
            stopbits=_STOPBITS[cfg.stopbits],
        )
        self._transport = transport
        assert isinstance(protocol, _PortProtocol)
        self._protocol = protocol

    async def wait_lost(self) -> BaseException | None:
        """Until the port fails or closes (the device was unplugged)."""
        assert self._protocol is not None
        return await self._protocol.lost

    async def close(self) -> None:
        """Close the port (if open) and drop the partial frame: its end will never come."""
        transport, protocol = self._transport, self._protocol
        self._transport = self._protocol = None
        if transport is not None and not transport.is_closing():
            transport.close()
        if protocol is not None and not protocol.lost.done():
            # Let the transport finish closing the fd (it does so in the default executor).
            try:
                await asyncio.wait_for(asyncio.shield(protocol.lost), 1.0)
            except TimeoutError:
                log.warning("serial port did not close in time", source=self.name)
        self.decoder.reset()
        self._sync_discarded(warn=False)  # a cut-off frame at unplug is expected, not noise

    # -- bytes in

    def received(self, data: bytes) -> None:
        """Frame and decode one read's worth of bytes."""
        handler = self._handler
        assert handler is not None
        health = self.health
        frames = self.decoder.feed(data)
        if self.decoder.discarded_bytes != health.discarded_bytes:
            self._sync_discarded(warn=True)
        if frames:
            # Frames of one read arrived together; a device without a clock of its own gets
            # them stamped 1 ns apart, so none overwrites another in InfluxDB (same series and
            # timestamp is one point there). A wall clock stepped back is followed, not
            # papered over with 1 ns steps (agent/clock.py).
            now = clock.wall_ns()
            if self._last_ns - SAME_MOMENT_NS < now <= self._last_ns:
                now = self._last_ns + 1
            readings = health.readings
            frame = handler.frame
            for raw in frames:
                frame(raw, None, now)
                now += 1
            self._last_ns = now - 1
            if self._noisy and health.readings > readings:
                self._end_burst()

    def _sync_discarded(self, *, warn: bool) -> None:
        new = self.decoder.discarded_bytes - self.health.discarded_bytes
        self.health.discarded_bytes = self.decoder.discarded_bytes
        if new <= 0 or not warn:
            return
        self._burst_bytes += new
        if not self._noisy:
            self._noisy = True
            log.warning(
                "discarding serial bytes",
                source=self.name,
                port=self.cfg.port,
                bytes=new,
                hint="garbage on the line, a wrong baud rate or a partial frame at (re)connect",
            )

    def _end_burst(self) -> None:
        self._noisy = False
        log.info(
            "serial frames decode again",
            source=self.name,
            discarded_bytes=self._burst_bytes,
            decode_errors=self.health.decode_errors,
        )
        self._burst_bytes = 0
