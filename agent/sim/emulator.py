"""``driftgate simulate``: one emulated device writing its real frames to a serial port or MQTT.

The frames come from ``agent.sim.devices.DeviceEmulator``, driven by the demo workshop's physics
(the edge-paint humidity creeps up from day 14, machine m05's tension shifts on day 10, counted
from ``--start``). Factory IT points it at one end of a socat pty pair, or at the broker, and
an agent at the other end: wiring, profile and config are checked without the hardware.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TextIO
from urllib.parse import urlsplit

import aiomqtt
import serial

from agent.errors import DriftgateError
from agent.sim.devices import DeviceEmulator, DeviceFrame
from agent.sim.workshop import DAY

PROGRESS_EVERY_S = 1.0
MIN_SLEEP_S = 0.002  # frames due within this are sent at once (a fast rate is sent in bursts)
SERIAL_WRITE_TIMEOUT_S = 1.0  # a real UART never waits; a pty with no reader does
SERIAL_REOPEN_S = 0.5


@dataclass(frozen=True, slots=True)
class SimulateOptions:
    """What to emulate, where to send it and how fast."""

    profile: str
    serial: str | None = None
    mqtt: str | None = None
    rate: float | None = None  # frames per wall second; None: natural interval / speed
    speed: float = 1.0  # simulated seconds per wall second (without rate)
    start: float | None = None  # simulated start, epoch seconds; None: now
    days: float | None = None
    seed: int = 1
    device: str | None = None
    count: int | None = None
    baud: int | None = None  # None: 115200, or a Modbus device's factory setting
    qos: int = 0
    modbus_tcp: str | None = None  # HOST:PORT a Modbus TCP device listens on
    slaves: tuple[int, ...] = ()  # Modbus addresses (default: the map's factory address)
    parity: str = "N"
    stopbits: int = 1

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.serial, self.mqtt, self.modbus_tcp)) != 1:
            raise DriftgateError(
                "give exactly one of --serial PORT, --mqtt URL and --modbus-tcp HOST:PORT"
            )
        if self.rate is not None and self.rate <= 0:
            raise DriftgateError("--rate must be positive (frames per second)")
        if self.speed <= 0:
            raise DriftgateError("--speed must be positive")
        if self.count is not None and self.count <= 0:
            raise DriftgateError("--count must be positive")
        if self.days is not None and self.days <= 0:
            raise DriftgateError("--days must be positive")


def parse_start(text: str) -> float:
    """An ISO 8601 date or time (UTC unless it says otherwise) as epoch seconds."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise DriftgateError(
            f"--start {text!r} is not an ISO 8601 time (e.g. 2024-03-01T08:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class _Sink(Protocol):
    async def send(self, frame: DeviceFrame) -> bool:
        """Send one frame; False if it was dropped."""
        ...

    async def close(self) -> None: ...


class SerialSink:
    """Writes frames to a serial port or pty, raw, reopening it if it disappears."""

    def __init__(self, port: str, baud: int) -> None:
        self.port = port
        self.baud = baud
        self._serial: serial.Serial | None = None

    def _open(self) -> serial.Serial:
        try:
            return serial.Serial(self.port, self.baud, write_timeout=SERIAL_WRITE_TIMEOUT_S)
        except (serial.SerialException, OSError) as exc:
            raise DriftgateError(f"cannot open {self.port}: {exc}") from None

    async def send(self, frame: DeviceFrame) -> bool:
        if self._serial is None:
            self._serial = self._open()
        port = self._serial
        try:
            port.write(frame.data)
        except serial.SerialTimeoutException:
            port.reset_output_buffer()  # nobody reads the other end: drop, as a UART would
            return False
        except (serial.SerialException, OSError) as exc:
            print(f"{self.port}: {exc}; reopening", file=sys.stderr, flush=True)
            with contextlib.suppress(Exception):
                port.close()
            self._serial = None
            while self._serial is None:
                await asyncio.sleep(SERIAL_REOPEN_S)
                with contextlib.suppress(DriftgateError):
                    self._serial = self._open()
            return False
        return True

    async def close(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()


class MqttSink:
    """Publishes frames to their emulated topics on a broker (``mqtt://[user:pass@]host:port``)."""

    def __init__(self, url: str, qos: int) -> None:
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise DriftgateError(f"--mqtt {url!r}: use mqtt://host:port")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 1883
        self.username = parts.username
        self.password = parts.password
        self.qos = qos
        self._client: aiomqtt.Client | None = None
        self._stack = contextlib.AsyncExitStack()

    async def send(self, frame: DeviceFrame) -> bool:
        if self._client is None:
            client = aiomqtt.Client(
                self.host, self.port, username=self.username, password=self.password
            )
            try:
                self._client = await self._stack.enter_async_context(client)
            except aiomqtt.MqttError as exc:
                raise DriftgateError(f"cannot connect to {self.url}: {exc}") from None
        client = self._client
        if frame.topic is None:
            return False
        try:
            await client.publish(frame.topic, frame.data, qos=self.qos)
        except aiomqtt.MqttError as exc:
            raise DriftgateError(f"publishing to {self.url}: {exc}") from None
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._stack.aclose()


@dataclass(slots=True)
class SimulateResult:
    """What a run sent."""

    frames: int = 0
    dropped: int = 0
    sim_start: float = 0.0
    sim_time: float = 0.0
    wall_seconds: float = 0.0


def emissions(
    emulator: DeviceEmulator, start: float, end: float | None
) -> Iterator[tuple[float, list[DeviceFrame]]]:
    """(simulated time, frames) of each emission of the device, from ``start`` on."""
    t = start
    while end is None or t < end:
        yield t, emulator.frames(t)
        t += emulator.interval


async def simulate(opts: SimulateOptions, out: TextIO = sys.stdout) -> SimulateResult:
    """Send the device's frames until ``count`` frames, ``days`` simulated, or cancellation.

    (A Modbus register map is emulated by ``agent.sim.modbus.simulate_modbus`` instead.)
    """
    if opts.modbus_tcp is not None:
        raise DriftgateError(f"--modbus-tcp is for Modbus register maps, not {opts.profile}")
    start = opts.start if opts.start is not None else time.time()
    try:
        emulator = DeviceEmulator(opts.profile, start=start, seed=opts.seed, device=opts.device)
    except ValueError as exc:
        raise DriftgateError(str(exc)) from None
    transport = emulator.profile.transport
    if opts.serial is not None and transport != "serial":
        raise DriftgateError(f"profile {opts.profile} is an MQTT device: use --mqtt URL")
    if opts.mqtt is not None and transport != "mqtt":
        raise DriftgateError(f"profile {opts.profile} is a serial device: use --serial PORT")
    sink: _Sink
    if opts.serial is not None:
        sink = SerialSink(opts.serial, opts.baud or 115200)
    else:
        sink = MqttSink(opts.mqtt or "", opts.qos)
    end = start + opts.days * DAY if opts.days is not None else None
    result = SimulateResult(sim_start=start, sim_time=start)
    tty = out.isatty()
    wall0 = time.monotonic()
    next_progress = wall0 + PROGRESS_EVERY_S
    try:
        for t, frames in emissions(emulator, start, end):
            due = (
                wall0 + result.frames / opts.rate
                if opts.rate is not None
                else wall0 + (t - start) / opts.speed
            )
            now = time.monotonic()
            if due - now > MIN_SLEEP_S:
                await asyncio.sleep(due - now)
            elif result.frames % 64 == 0:
                await asyncio.sleep(0)  # let Ctrl-C (task cancellation) through at full speed
            for frame in frames:
                if await sink.send(frame):
                    result.frames += 1
                else:
                    result.dropped += 1
                if opts.count is not None and result.frames >= opts.count:
                    break
            result.sim_time = t + emulator.interval
            if time.monotonic() >= next_progress:
                next_progress += PROGRESS_EVERY_S
                _progress(out, opts, result, wall0, tty)
            if opts.count is not None and result.frames >= opts.count:
                break
    finally:
        await sink.close()
        result.wall_seconds = time.monotonic() - wall0
        _progress(out, opts, result, wall0, tty, final=True)
    return result


def _progress(
    out: TextIO,
    opts: SimulateOptions,
    result: SimulateResult,
    wall0: float,
    tty: bool,
    *,
    final: bool = False,
) -> None:
    wall = max(time.monotonic() - wall0, 1e-9)
    sim = datetime.fromtimestamp(result.sim_time, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    day = (result.sim_time - result.sim_start) / DAY
    target = opts.serial or opts.mqtt
    line = (
        f"{opts.profile} → {target}: {result.frames} frames sent"
        f" ({result.frames / wall:.1f}/s), simulated {sim} (day {day:.2f})"
    )
    if result.dropped:
        line += f", {result.dropped} dropped (nobody reading?)"
    if tty:
        out.write("\r" + line + ("\n" if final else ""))
    else:
        out.write(line + "\n")
    out.flush()
