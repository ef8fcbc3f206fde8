"""Emulated Modbus devices: pymodbus's own server answering with a register map's values.

``ModbusSlave`` is one device of a shipped (or any) register map: it holds the physical values
(fixed ones a test sets, or the simulated workshop's climate at the moment of each request) and
encodes them into registers exactly as the device would (``registers.encode_value``).
``ModbusEmulator`` serves several slaves with pymodbus's server, as Modbus RTU on a serial port
(one end of a socat pty pair) or as Modbus TCP on a loopback address; ``driftgate simulate``,
the tests and ``bench/modbus_poll.py`` all use it.

A pty carries bytes instantly whatever the baud rate; with ``pace`` each answer waits the time
its request and answer take on a real RS-485 line at the configured baud rate, so polls per
second on the emulated bus are those of a real one. Faults on demand: a slave that stops
answering (``silence``), answers with a broken CRC (``garble``), and a port that is unplugged
and comes back (the emulator reopens it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TextIO

from agent.errors import ConfigError, DriftgateError
from agent.ingest.registers import (
    FUNCTIONS,
    Register,
    RegisterMap,
    decode_block,
    encode_value,
    load_register_map,
    read_plan,
)
from agent.sim.devices import dew_point
from agent.sim.emulator import SimulateOptions, SimulateResult
from agent.sim.workshop import DAY, Workshop

if TYPE_CHECKING:
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer
    from pymodbus.simulator import SimDevice

__all__ = ["ModbusEmulator", "ModbusSlave", "wire_seconds"]

REOPEN_S = 0.2
"""How often an unplugged port is tried again."""


def wire_seconds(request_bytes: int, answer_bytes: int, baud: int, bits_per_char: int) -> float:
    """How long a request and its answer take on the line (RTU: start, data, parity, stop)."""
    return (request_bytes + answer_bytes) * bits_per_char / baud


@dataclass(slots=True)
class ModbusSlave:
    """One emulated device: its register map, its address, and the values it serves.

    ``values`` (channel name → physical value) are served as they are; with a ``workshop``
    the climate of ``zone`` at the simulated time replaces humidity, temperature and dew point
    at each request. A value the map has but nobody set is the middle of its range.
    """

    registers: RegisterMap
    slave: int
    values: dict[str, float] = field(default_factory=dict)
    workshop: Workshop | None = None
    zone: str = "edge_paint"
    answers: int = 0
    _second: int | None = None  # the simulated second ``values`` were last sampled at

    def value(self, item: Register) -> float:
        """The physical value one register holds now."""
        found = self.values.get(item.channel)
        if found is not None:
            return found
        if item.range is not None:
            return (item.range[0] + item.range[1]) / 2
        return 0.0

    def climate(self, t: float) -> dict[str, float]:
        """Humidity, temperature and dew point of the zone at time ``t``."""
        assert self.workshop is not None
        sampled = {channel.name: value for channel, value in self.workshop.sample(t)}
        if f"{self.zone}.humidity" not in sampled:
            zones = sorted({n.split(".")[0] for n in sampled if n.endswith(".humidity")})
            raise ValueError(f"no climate zone {self.zone!r}; zones: {', '.join(zones)}")
        rh, temp = sampled[f"{self.zone}.humidity"], sampled[f"{self.zone}.temperature"]
        return {"humidity": rh, "temperature": temp, "dew_point": dew_point(temp, rh)}

    def expected(self) -> dict[str, float]:
        """What a reader decodes from the values now set: each rounded to its register type."""
        out: dict[str, float] = {}
        for block in read_plan(self.registers.registers):
            words: list[int] = []
            for item in block.registers:
                words += encode_value(item, self.value(item))
            result = decode_block(block, words, slave=self.slave, ts_ns=0, tags={})
            out.update({v.name: v.value for v in result.values})
        return out

    def fill(self, function: int, start: int, memory: list[int], t: float) -> None:
        """Write the registers of ``function`` into pymodbus's memory (``memory[0]`` is
        ``start``) as they are at simulated time ``t``."""
        second = int(t)
        if self.workshop is not None and second != self._second:
            self.values.update(self.climate(t))  # the room changes slowly: once a second
            self._second = second
        for item in self.registers.registers:
            if item.function == function:
                words = encode_value(item, self.value(item))
                at = item.address - start
                memory[at : at + len(words)] = words

    def device(self, action: Callable[..., Any]) -> SimDevice:
        """The pymodbus ``SimDevice``: the map's holding and input registers, answered through
        ``action`` (addresses the map does not name answer exception 2, as a real device)."""
        from pymodbus.simulator import DataType, SimData, SimDevice

        tables: dict[int, list[SimData]] = {3: [], 4: []}
        for item in self.registers.registers:
            tables[item.function].append(
                SimData(item.address, values=[0] * item.width, datatype=DataType.REGISTERS)
            )
        for function, table in tables.items():
            if not table:  # pymodbus wants every table: an unused one gets one register
                table.append(SimData(0, values=0, datatype=DataType.REGISTERS))
            tables[function] = table
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        return SimDevice(
            self.slave, simdata=(bits, list(bits), tables[3], tables[4]), action=action
        )


class ModbusEmulator:
    """pymodbus's server answering for ``slaves``: RTU on ``port`` or TCP on ``host:tcp_port``.

    ``speed`` and ``start`` set the simulated clock of workshop-driven slaves. Requests to an
    address no slave has get no answer, as on a real bus.
    """

    def __init__(
        self,
        slaves: Iterable[ModbusSlave],
        *,
        port: str | None = None,
        baud: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        host: str | None = None,
        tcp_port: int = 502,
        pace: bool = False,
        start: float | None = None,
        speed: float = 1.0,
    ) -> None:
        if (port is None) == (host is None):
            raise ValueError("give the emulator a serial port or a TCP host, exactly one")
        self.slaves = {slave.slave: slave for slave in slaves}
        self.port = port
        self.baud = baud
        self.parity = parity
        self.stopbits = stopbits
        self.host = host
        self.tcp_port = tcp_port
        self.pace = pace
        self.start = time.time() if start is None else start
        self.speed = speed
        self.silent: set[int] = set()
        self.garbled = 0  # answers still to be sent with a broken CRC
        self.answers = 0
        self._wall0 = time.monotonic()
        self._server: ModbusSerialServer | ModbusTcpServer | None = None
        self._reopen: asyncio.Task[None] | None = None
        self._stopping = False

    # -- faults

    def silence(self, slave: int, silent: bool = True) -> None:
        """Make one slave stop answering (or answer again)."""
        if silent:
            self.silent.add(slave)
        else:
            self.silent.discard(slave)

    def garble(self, answers: int) -> None:
        """Send the next ``answers`` answers with a wrong CRC (RTU): noise on the line."""
        self.garbled += answers

    # -- running

    @property
    def sim_time(self) -> float:
        """Now on the simulated clock."""
        return self.start + (time.monotonic() - self._wall0) * self.speed

    async def start_serving(self) -> None:
        """Open the port (or listen) and answer until ``stop``."""
        from pymodbus.server import ModbusSerialServer, ModbusTcpServer

        from agent.ingest.modbus import import_pymodbus

        import_pymodbus()
        devices = [slave.device(partial(self._action, slave)) for slave in self.slaves.values()]
        server: ModbusSerialServer | ModbusTcpServer
        if self.port is not None:
            server = ModbusSerialServer(
                devices,
                port=self.port,
                baudrate=self.baud,
                parity=self.parity,
                stopbits=self.stopbits,
                ignore_missing_devices=True,
                reconnect_delay=0,
                trace_packet=self._traced,
                trace_connect=self._connection,
            )
        else:
            assert self.host is not None
            server = ModbusTcpServer(
                devices,
                address=(self.host, self.tcp_port),
                ignore_missing_devices=True,
                trace_packet=self._traced,
            )
        await server.serve_forever(background=True)
        self._server = server

    async def stop(self) -> None:
        """Stop answering and release the port."""
        self._stopping = True
        task, self._reopen = self._reopen, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> ModbusEmulator:
        await self.start_serving()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def _connection(self, connected: bool) -> None:
        if connected or self._stopping or self._reopen is not None:
            return
        self._reopen = asyncio.get_running_loop().create_task(
            self._reopen_port(), name="modbus emulator reopen"
        )

    async def _reopen_port(self) -> None:
        """The port went away (unplugged): open it again once it is back."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
        while True:
            await asyncio.sleep(REOPEN_S)
            with contextlib.suppress(OSError, RuntimeError):  # not back yet
                await self.start_serving()
                break
        self._reopen = None

    # -- answering

    async def _action(
        self,
        slave: ModbusSlave,
        function: int,
        start: int,
        address: int,
        count: int,
        memory: list[int],
        written: list[int] | list[bool] | None,
    ) -> None:
        """pymodbus asks for registers: fill them with the slave's values at this moment."""
        if function not in FUNCTIONS or written is not None:
            return
        slave.fill(function, start, memory, self.sim_time)
        if self.pace and self.port is not None:
            bits = 10 + (self.parity != "N") + (self.stopbits - 1)
            await asyncio.sleep(wire_seconds(8, 5 + 2 * count, self.baud, bits))

    def _traced(self, sending: bool, data: bytes) -> bytes:
        if not data:
            return data
        if not sending:
            return data
        unit = data[0] if self.port is not None else (data[6] if len(data) > 6 else -1)
        if unit not in self.slaves or unit in self.silent:
            return b""  # nobody at this address, or a slave that stopped answering
        self.answers += 1
        self.slaves[unit].answers += 1
        if self.garbled > 0 and self.port is not None:
            self.garbled -= 1
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data


def fixed_slave(registers: RegisterMap, slave: int, values: Mapping[str, float]) -> ModbusSlave:
    """A slave serving fixed values (a test's known readings)."""
    unknown = sorted(set(values) - {r.channel for r in registers.registers})
    if unknown:
        raise ValueError(f"{registers.name} has no register named {', '.join(unknown)}")
    if any(not math.isfinite(v) for v in values.values()):
        raise ValueError("values must be finite numbers")
    return ModbusSlave(registers, slave, dict(values))


# --------------------------------------------------------------------------- driftgate simulate

PROGRESS_EVERY_S = 1.0


def _tcp_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DriftgateError(f"--modbus-tcp {text!r}: use HOST:PORT, e.g. 127.0.0.1:5020")
    return host.strip("[]"), int(port)


def emulator_for(opts: SimulateOptions) -> ModbusEmulator:
    """The emulated bus ``driftgate simulate`` runs for a register map: one slave per
    ``--slave`` (default: the map's factory address), each in the climate of ``--device``."""
    try:
        registers = load_register_map(opts.profile)
    except ConfigError as exc:
        raise DriftgateError("; ".join(exc.problems)) from None
    if opts.mqtt is not None:
        raise DriftgateError(
            f"{opts.profile} is a Modbus device: it answers on a serial port (--serial PORT) "
            "or over TCP (--modbus-tcp HOST:PORT)"
        )
    if opts.rate is not None:
        raise DriftgateError("--rate does not apply to a Modbus device: the agent's polls set it")
    start = opts.start if opts.start is not None else time.time()
    workshop = Workshop.build(start, opts.seed)
    zone = opts.device or "edge_paint"
    slaves = [
        ModbusSlave(registers, n, workshop=workshop, zone=zone)
        for n in opts.slaves or (registers.factory.slave or 1,)
    ]
    try:
        slaves[0].climate(start)
    except ValueError as exc:
        raise DriftgateError(str(exc)) from None
    factory = registers.factory
    if opts.serial is not None:
        return ModbusEmulator(
            slaves,
            port=opts.serial,
            baud=opts.baud or factory.baud or 9600,
            parity=opts.parity,
            stopbits=opts.stopbits,
            pace=True,
            start=start,
            speed=opts.speed,
        )
    host, port = _tcp_address(opts.modbus_tcp or "")
    return ModbusEmulator(slaves, host=host, tcp_port=port, start=start, speed=opts.speed)


async def simulate_modbus(opts: SimulateOptions, out: TextIO = sys.stdout) -> SimulateResult:
    """Answer the agent's requests as the map's device(s) until ``count`` answers, ``days``
    simulated, or cancellation; a progress line every second."""
    emulator = emulator_for(opts)
    result = SimulateResult(sim_start=emulator.start, sim_time=emulator.start)
    end = emulator.start + opts.days * DAY if opts.days is not None else None
    target = opts.serial or f"modbus-tcp://{opts.modbus_tcp}"
    ids = ",".join(str(n) for n in emulator.slaves)
    tty = out.isatty()
    wall0 = time.monotonic()
    next_progress = wall0 + PROGRESS_EVERY_S
    try:
        await emulator.start_serving()
    except (OSError, RuntimeError) as exc:
        raise DriftgateError(f"cannot serve on {target}: {exc}") from None
    try:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S / 10)
            result.frames = emulator.answers
            result.sim_time = emulator.sim_time
            done = (opts.count is not None and result.frames >= opts.count) or (
                end is not None and result.sim_time >= end
            )
            if done:
                await asyncio.sleep(PROGRESS_EVERY_S / 10)  # let the last answer leave
                break
            if time.monotonic() >= next_progress:
                next_progress += PROGRESS_EVERY_S
                _line(out, opts.profile, ids, target, result, wall0, tty, final=False)
    finally:
        await emulator.stop()
        result.wall_seconds = time.monotonic() - wall0
        _line(out, opts.profile, ids, target, result, wall0, tty, final=True)
    return result


def _line(
    out: TextIO,
    profile: str,
    ids: str,
    target: str,
    result: SimulateResult,
    wall0: float,
    tty: bool,
    *,
    final: bool,
) -> None:
    wall = max(time.monotonic() - wall0, 1e-9)
    sim = datetime.fromtimestamp(result.sim_time, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    day = (result.sim_time - result.sim_start) / DAY
    line = (
        f"{profile} (slave {ids}) on {target}: {result.frames} answers"
        f" ({result.frames / wall:.1f}/s), simulated {sim} (day {day:.2f})"
    )
    out.write(("\r" + line + ("\n" if final else "")) if tty else line + "\n")
    out.flush()
