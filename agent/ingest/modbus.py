"""The Modbus source: devices on an RS-485 bus (Modbus RTU) or behind a TCP address, polled.

One source is one bus: one serial port or one TCP connection, with one or more devices (slaves)
each read through its register map (``agent/ingest/registers.py``) at its own poll interval.
The requests go one at a time, in the order the devices fall due: a bus has one conversation,
and a single task that owns it needs no lock and cannot interleave two requests. A device that
does not answer costs ``timeout`` for each of its ``1 + retries`` tries and then the bus moves
on, so a dead slave slows the others by that much at most and never stops them. On RTU the bus
is kept quiet for ``frame_gap`` (3.5 characters) between frames, as the standard asks.

Each try ends in exactly one outcome, counted per device (``SlaveHealth``): data, no answer
(``timeouts``), bytes that were no valid answer (``crc_errors``) or a Modbus exception. A device
that stops answering is logged once with a hint, and once more when it answers again.

The link (port or connection) is pymodbus's async client with its own reconnect switched off:
the ``Reconnector`` opens it again with the serial policy's backoff after an unplug or a lost
connection, exactly like the serial source. pymodbus is imported in a thread when the source
starts (it takes up to a second on a Pi), and its own log lines are silenced: this module
reports every problem itself, with the device and a hint.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from agent import clock
from agent.channels import ChannelRegistry
from agent.config.models import ModbusDeviceConfig, ModbusSourceConfig
from agent.errors import DecodeError
from agent.ingest.frames import FrameHandler, SlaveHealth, SourceHealth
from agent.ingest.reconnect import Reconnector
from agent.ingest.registers import (
    FUNCTIONS,
    ReadBlock,
    RegisterMap,
    decode_block,
    load_register_map,
    raw_text,
    read_plan,
)
from agent.logs import get_logger
from agent.pipeline import Pipeline
from agent.reading import Channel

if TYPE_CHECKING:
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

__all__ = ["EXCEPTION_CODES", "ModbusDevice", "ModbusSource", "import_pymodbus"]

log = get_logger("driftgate.sources.modbus")

EXCEPTION_CODES: Final[dict[int, tuple[str, str]]] = {
    1: ("illegal function", "the device does not read this register table: check function "
        "(3 holding, 4 input) in the register map"),
    2: ("illegal data address", "the register map does not fit this device or firmware: check "
        "the addresses (0-based) against its manual"),
    3: ("illegal data value", "the device refuses this many registers in one request"),
    4: ("server device failure", "the device reports a fault of its own (sensor element?)"),
    5: ("acknowledge", "the device is busy with a long operation: poll it less often"),
    6: ("server device busy", "the device is busy: poll it less often"),
    10: ("gateway path unavailable", "the TCP gateway has no route to this unit id"),
    11: ("gateway target failed to respond", "the gateway's RS-485 side gets no answer from "
         "this unit id: check its address, wiring and power"),
}  # fmt: skip
"""Modbus exception codes: name and what to do, quoted in the log."""

NO_RESPONSE_LIMIT: Final = 1_000_000
"""pymodbus closes a TCP connection after this many unanswered requests in a row: in effect
never. One silent unit behind a gateway is that unit's problem (counted, logged), not a reason
to drop the connection every other poll; a dead connection shows as a lost link anyway."""


CANCEL_AGAIN_S = 0.1
"""How long a cancelled poller is given before it is cancelled again."""


def import_pymodbus() -> None:
    """Import pymodbus (slow: run in a thread) and silence its own logging."""
    import pymodbus.client
    import pymodbus.exceptions  # noqa: F401

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL + 1)


class _LinkLost(Exception):
    """The link went away in the middle of a request."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.reason = reason


@dataclass(slots=True)
class ModbusDevice:
    """One device on the bus: its register map, its requests, its health, when it is due."""

    cfg: ModbusDeviceConfig
    registers: RegisterMap
    blocks: list[ReadBlock]
    health: SlaveHealth
    prefix: str
    base_tags: dict[str, str]
    handler: FrameHandler | None = None
    due: float = 0.0
    answered: bool = False  # anything (data or an exception) in the current poll
    silent_since: float | None = None  # loop time of the first poll it did not answer

    @property
    def tags(self) -> dict[str, str]:
        """The tags of its readings that tell it apart from the other devices of the bus."""
        return {"sensor": self.health.sensor}


class ModbusSource:
    """Polls the devices of one Modbus bus (``sources: - type: modbus``) into the pipeline."""

    def __init__(
        self, cfg: ModbusSourceConfig, pipeline: Pipeline | None, registry: ChannelRegistry
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.registry = registry
        self.health = SourceHealth()
        self.devices = [self._device(device) for device in cfg.devices]
        self.health.slaves = [device.health for device in self.devices]
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        self._lost: asyncio.Future[BaseException | None] | None = None
        self._heard = False  # bytes arrived during the current try
        self._quiet_until = 0.0  # loop time before which the bus must stay silent
        if pipeline is not None:
            self._bind(pipeline)

    def _device(self, device: ModbusDeviceConfig) -> ModbusDevice:
        cfg = self.cfg
        registers = load_register_map(device.profile)
        tags = cfg.base_tags()
        for key in ("zone", "line", "station"):
            value = getattr(device, key)
            if value is not None:
                tags[key] = value
        tags.update(device.tags)
        prefix = cfg.channel_prefix or device.zone or cfg.prefix()
        health = SlaveHealth(device.slave, device.sensor_id)
        return ModbusDevice(device, registers, read_plan(registers.registers), health, prefix, tags)

    def channels(self) -> list[Channel]:
        """None known up front: channels are created as the devices answer."""
        return []

    def _bind(self, pipeline: Pipeline) -> None:
        for device in self.devices:
            if device.handler is None or device.handler.pipeline is not pipeline:
                device.handler = FrameHandler(
                    f"{self.name} slave {device.cfg.slave}",
                    None,
                    pipeline,
                    self.registry,
                    prefix=device.prefix,
                    base_tags=device.base_tags,
                    health=self.health,
                )

    @property
    def where(self) -> str:
        """The bus for a log line: the port, or host:port."""
        cfg = self.cfg
        return cfg.port if cfg.port is not None else f"{cfg.host}:{cfg.tcp_port}"

    async def run(self, pipeline: Pipeline) -> None:
        """Poll the bus until cancelled, reopening the port (connection) whenever it comes back."""
        self._bind(pipeline)
        await asyncio.to_thread(import_pymodbus)
        what = "modbus port" if self.cfg.transport == "rtu" else "modbus server"
        reconnector = Reconnector(
            self, source=self.name, what=what, health=self.health, cap=self.cfg.reconnect_max
        )
        await reconnector.run()

    # -- the link (what the Reconnector drives)

    async def open(self) -> None:
        """Open the port (RTU) or connect (TCP); an OSError if the bus is not there."""
        from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

        cfg = self.cfg
        self._lost = asyncio.get_running_loop().create_future()
        client: AsyncModbusSerialClient | AsyncModbusTcpClient
        if cfg.port is not None:
            client = AsyncModbusSerialClient(
                cfg.port,
                baudrate=cfg.baud,
                bytesize=cfg.bytesize,
                parity=cfg.parity,
                stopbits=cfg.stopbits,
                name=self.name,
                timeout=cfg.timeout,
                retries=0,  # tries are counted here, one by one (SlaveHealth)
                reconnect_delay=0,  # the Reconnector reopens the link
                trace_packet=self._traced,
                trace_connect=self._link_changed,
            )
        else:
            assert cfg.host is not None
            client = AsyncModbusTcpClient(
                cfg.host,
                port=cfg.tcp_port,
                name=self.name,
                timeout=cfg.timeout,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._traced,
                trace_connect=self._link_changed,
            )
            client.set_max_no_responses(NO_RESPONSE_LIMIT)
        self._client = client
        if not await client.connect():
            raise self._open_error()

    def _open_error(self) -> OSError:
        """Why the link did not open, as precisely as can be found out (pymodbus only says no)."""
        cfg = self.cfg
        if cfg.port is None:
            return ConnectionRefusedError(
                errno.ECONNREFUSED, f"no Modbus TCP server answers at {self.where}"
            )
        try:
            fd = os.open(cfg.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            return exc
        os.close(fd)
        return OSError(errno.EBUSY, "the port cannot be locked", cfg.port)

    async def wait_lost(self) -> BaseException | None:
        """Poll the devices until the link is lost; the reason."""
        lost = self._lost
        assert lost is not None
        poller = asyncio.create_task(self._poll_loop(), name=f"modbus:{self.name}")
        waits: set[asyncio.Future[Any]] = {poller, lost}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Python 3.11's wait_for (inside pymodbus) can swallow a cancellation that meets an
            # answer arriving: cancel until the poller has really stopped.
            while not poller.done():
                poller.cancel()
                await asyncio.wait({poller}, timeout=CANCEL_AGAIN_S)
        if lost.done():
            return lost.result()
        error = poller.exception()
        if isinstance(error, _LinkLost):
            return error.reason
        if error is not None:
            raise error
        return None

    async def close(self) -> None:
        """Close the port or connection (if open)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _link_changed(self, connected: bool) -> None:
        lost = self._lost
        if not connected and lost is not None and not lost.done():
            if self.cfg.port is not None:
                lost.set_result(OSError(errno.EIO, "the serial port went away (unplugged?)"))
            else:
                lost.set_result(ConnectionResetError("the TCP connection closed"))

    def _traced(self, sending: bool, data: bytes) -> bytes:
        if not sending and data:
            self._heard = True
        return data

    # -- polling

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for device in self.devices:
            device.due = start  # (again) open: read every device now
        while True:
            device = min(self.devices, key=_due)
            wait = device.due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._poll(device)
            # A device polled late (the bus was busy) is due again one interval later, or now:
            # never a burst of make-up reads.
            device.due = max(device.due + device.cfg.poll, loop.time())

    async def _poll(self, device: ModbusDevice) -> None:
        """Read every block of one device and ingest what it holds."""
        device.health.polls += 1
        handler = device.handler
        assert handler is not None
        device.answered = False
        now = 0  # one poll is one moment: its values share the time of the first answer
        for block in device.blocks:
            words = await self._read(device, block)
            if words is None:
                continue
            now = now or clock.wall_ns()
            try:
                result = decode_block(
                    block, words, slave=device.cfg.slave, ts_ns=now, tags=device.tags
                )
            except DecodeError as exc:
                self.health.decode_errors += 1
                handler.pipeline.metrics.decode_errors += 1
                log.warning(
                    "cannot decode modbus answer",
                    source=self.name,
                    slave=device.cfg.slave,
                    reason=exc.reason,
                    answer=raw_text(block, device.cfg.slave, words).decode(),
                )
                continue
            handler.ingest(result, b"", now)
        self._track(device, device.answered)

    async def _read(self, device: ModbusDevice, block: ReadBlock) -> list[int] | None:
        """The registers of one block, trying ``1 + retries`` times; None if none answered."""
        from pymodbus.exceptions import ConnectionException, ModbusIOException

        client = self._client
        assert client is not None
        read = client.read_holding_registers if block.function == 3 else client.read_input_registers
        health = device.health
        loop = asyncio.get_running_loop()
        gap = self.cfg.gap
        for _ in range(self.cfg.retries + 1):
            wait = self._quiet_until - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._heard = False
            try:
                response = await read(block.address, count=block.count, device_id=device.cfg.slave)
            except ConnectionException as exc:
                raise _LinkLost(exc) from None
            except ModbusIOException:
                self._quiet_until = loop.time() + gap
                if self._heard:
                    health.crc_errors += 1
                else:
                    health.timeouts += 1
                continue
            self._quiet_until = loop.time() + gap
            device.answered = True
            if response.isError():
                health.exceptions += 1
                health.last_exception = response.exception_code
                self._exception(device, block, response.exception_code)
                return None
            now = clock.wall_ns()
            health.reads += 1
            health.last_good_ns = now
            self.health.frames += 1
            self.health.last_frame_ns = now
            return list(response.registers)
        return None

    def _exception(self, device: ModbusDevice, block: ReadBlock, code: int) -> None:
        name, hint = EXCEPTION_CODES.get(code, ("unknown exception", "see the device's manual"))
        log.warning(
            "modbus device answered with an exception",
            source=self.name,
            slave=device.cfg.slave,
            sensor=device.health.sensor,
            code=code,
            exception=name,
            request=f"{FUNCTIONS[block.function]} registers {block.address}…"
            f"{block.address + block.count - 1}",
            hint=hint,
        )

    def _track(self, device: ModbusDevice, answered: bool) -> None:
        """Log a device that stops answering once, and once more when it is back."""
        now = asyncio.get_running_loop().time()
        if answered:
            if device.silent_since is not None:
                log.info(
                    "modbus device answers again",
                    source=self.name,
                    slave=device.cfg.slave,
                    sensor=device.health.sensor,
                    downtime_s=round(now - device.silent_since, 2),
                )
                device.silent_since = None
            return
        if device.silent_since is not None:
            return
        device.silent_since = now
        log.warning(
            "modbus device not answering",
            source=self.name,
            bus=self.where,
            slave=device.cfg.slave,
            sensor=device.health.sensor,
            timeouts=device.health.timeouts,
            crc_errors=device.health.crc_errors,
            hint=self._silence_hint(device),
        )

    def _silence_hint(self, device: ModbusDevice) -> str:
        cfg = self.cfg
        health = device.health
        if cfg.transport == "tcp":
            return (
                f"check that unit id {device.cfg.slave} is right and that the gateway reaches "
                "the device"
            )
        if health.crc_errors > health.timeouts:
            return (
                "answers arrive garbled: check baud rate and parity, the twisted pair and its "
                "shield, 120 ohm termination at both ends; two devices at one address garble "
                "each other"
            )
        line = f"{cfg.baud} {cfg.bytesize}{cfg.parity}{cfg.stopbits}"
        factory = device.registers.factory.words()
        shipped = f"; {device.registers.name} leaves the factory at {factory}" if factory else ""
        return (
            f"check its address ({device.cfg.slave}) and line settings (this bus: {line}"
            f"{shipped}), A/B wiring, termination and power"
        )


def _due(device: ModbusDevice) -> float:
    return device.due
