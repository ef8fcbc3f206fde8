"""The Modbus source against pymodbus's own server as the devices: RTU on one end of a socat pty
pair, TCP on 127.0.0.1. Several slaves on one bus, a slave that stops answering, CRC garbage,
exception answers, unplug and replug, readings into a real InfluxDB, and `driftgate simulate`
as the bus's devices."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog
from servers import InfluxDB1Server, SerialPair, free_port
from spoolfile import committed_lines
from waiting import until

from agent.config import config_from_dict
from agent.ingest.modbus import ModbusSource
from agent.ingest.registers import REGISTER_MAP_DIR as REGISTER_DIR
from agent.ingest.registers import load_register_map
from agent.runtime.agent import Agent
from agent.sim.modbus import ModbusEmulator, ModbusSlave, fixed_slave

SITE, GATEWAY = "floor1", "gw-modbus"

XY = {"temperature": 21.7, "humidity": 48.3}
HMP = {"humidity": 30.56, "temperature": 22.41, "dew_point": 4.12}


# -- helpers ---------------------------------------------------------------------------------


def modbus_config(
    state_dir: Path, bus: dict[str, Any], devices: list[dict[str, Any]], **more: Any
) -> Any:
    return config_from_dict(
        {
            "site": SITE,
            "gateway": GATEWAY,
            "state_dir": str(state_dir),
            "self_metrics": {"interval": 60},
            "spool": {"flush_interval": 0.1},
            "sources": [
                {"type": "modbus", "name": "bus1", "zone": "edge_paint", **bus, "devices": devices}
            ],
            **more,
        }
    )


def rtu(pair: SerialPair, **more: Any) -> dict[str, Any]:
    return {"port": pair.device, "timeout": 0.2, "retries": 1, **more}


class Agents:
    """In-process agents started by a test, each stopped cleanly at the end."""

    def __init__(self) -> None:
        self.running: list[tuple[Agent, asyncio.Task[Any]]] = []

    def start(self, cfg: Any) -> Agent:
        agent = Agent(cfg)
        self.running.append((agent, asyncio.create_task(agent.run(handle_signals=False))))
        return agent

    async def stop(self, agent: Agent) -> None:
        for item in list(self.running):
            if item[0] is agent:
                self.running.remove(item)
                agent.stop_event.set()
                await asyncio.wait_for(item[1], 10)


@pytest_asyncio.fixture
async def agents() -> AsyncIterator[Agents]:
    runner = Agents()
    yield runner
    for agent, _ in list(runner.running):
        await runner.stop(agent)


def bus_of(agent: Agent) -> ModbusSource:
    (source,) = agent.sources
    assert isinstance(source, ModbusSource)
    return source


def slave_health(source: ModbusSource, slave: int) -> Any:
    (health,) = [h for h in source.health.slaves if h.slave == slave]
    return health


def xy(slave: int, values: dict[str, float] = XY) -> ModbusSlave:
    return fixed_slave(load_register_map("xy-md02"), slave, values)


# -- readings --------------------------------------------------------------------------------


async def test_an_rtu_bus_of_two_models_lands_in_influxdb_with_the_right_values(
    tmp_path: Path, serial_pair: SerialPair, influx_db: tuple[InfluxDB1Server, str], agents: Agents
) -> None:
    server, db = influx_db
    hmp = fixed_slave(load_register_map("vaisala-hmp"), 240, HMP)
    async with ModbusEmulator([xy(1), hmp], port=serial_pair.emulator):
        cfg = modbus_config(
            tmp_path / "state",
            rtu(serial_pair),
            [
                {"slave": 1, "profile": "xy-md02", "sensor": "md02-ep1", "poll": 0.2},
                {"slave": 240, "profile": "vaisala-hmp", "poll": 0.2, "zone": "cutting"},
            ],
            influx={"url": server.url, "api": "v1", "database": db, "flush_interval": 0.2},
        )
        agent = agents.start(cfg)
        source = bus_of(agent)
        md02, hmp_health = (slave_health(source, n) for n in (1, 240))
        await until(lambda: md02.reads >= 6 and hmp_health.reads >= 12, 20, "6 polls each")
        await agents.stop(agent)

    assert (source.health.invalid, source.health.decode_errors) == (0, 0)
    by_channel = {c.name: c for c in agent.channels}
    assert set(by_channel) == {
        "edge_paint.md02-ep1.temperature",
        "edge_paint.md02-ep1.humidity",
        "cutting.vaisala-hmp-240.humidity",
        "cutting.vaisala-hmp-240.temperature",
        "cutting.vaisala-hmp-240.dew_point",
    }
    assert by_channel["edge_paint.md02-ep1.humidity"].unit == "%RH"
    assert by_channel["cutting.vaisala-hmp-240.dew_point"].unit == "°C"

    def rows_of(sensor: str) -> list[dict[str, Any]]:
        return server.points("climate", db, where=f"sensor = '{sensor}'")

    await until(lambda: len(rows_of("md02-ep1")) >= 6, 20, "the XY-MD02's points in InfluxDB")
    await until(lambda: len(rows_of("vaisala-hmp-240")) >= 6, 20, "the HMP's points in InfluxDB")
    rows = server.points("climate", db)
    md02 = [r for r in rows if r["sensor"] == "md02-ep1"]
    vaisala = [r for r in rows if r["sensor"] == "vaisala-hmp-240"]
    assert md02
    assert vaisala
    assert {(r["humidity_rh"], r["temperature_c"]) for r in md02} == {(48.3, 21.7)}
    assert {r["zone"] for r in md02} == {"edge_paint"}
    assert {(r["humidity_rh"], r["temperature_c"], r["dew_point_c"]) for r in vaisala} == {
        (30.56, 22.41, 4.12)
    }
    assert {r["zone"] for r in vaisala} == {"cutting"}
    assert {(r["site"], r["gateway"]) for r in rows} == {(SITE, GATEWAY)}
    health = server.rows(
        'SELECT last("reads") AS reads, last("timeouts") AS timeouts FROM driftgate_source '
        "GROUP BY slave, sensor",
        db,
    )
    assert {(h["slave"], h["sensor"]) for h in health} == {
        ("1", "md02-ep1"),
        ("240", "vaisala-hmp-240"),
    }
    assert all(h["reads"] >= 6 and h["timeouts"] == 0 for h in health)


async def test_a_tcp_device_on_loopback_is_read_into_the_spool(
    tmp_path: Path, agents: Agents
) -> None:
    port = free_port()
    hmp = fixed_slave(load_register_map("vaisala-hmp"), 1, HMP)
    async with ModbusEmulator([hmp], host="127.0.0.1", tcp_port=port):
        cfg = modbus_config(
            tmp_path / "state",
            {"host": "127.0.0.1", "tcp_port": port, "timeout": 0.5},
            [{"slave": 1, "profile": "vaisala-hmp", "sensor": "hmp-cut1", "poll": 0.1}],
        )
        agent = agents.start(cfg)
        source = bus_of(agent)
        await until(lambda: source.health.slaves[0].reads >= 6, 15, "6 reads over TCP")
        await agents.stop(agent)
    lines = committed_lines(tmp_path / "state", "climate")
    assert lines
    fields = {part for line in lines for part in line.split(" ")[1].split(",")}
    assert fields == {"humidity_rh=30.56", "temperature_c=22.41", "dew_point_c=4.12"}
    assert all("sensor=hmp-cut1" in line and "zone=edge_paint" in line for line in lines)
    health = slave_health(source, 1)
    assert (health.timeouts, health.crc_errors, health.exceptions) == (0, 0, 0)


# -- bus faults ------------------------------------------------------------------------------


async def test_a_silent_slave_never_stalls_the_others(
    tmp_path: Path, serial_pair: SerialPair, agents: Agents
) -> None:
    """Slave 2 stops answering: each of its polls costs timeout × 2 tries of bus time, and
    slaves 1 and 3 are still read at every round, as often as slave 2 is asked."""
    out = structlog.testing.LogCapture()
    emulator = ModbusEmulator([xy(1), xy(2), xy(3)], port=serial_pair.emulator)
    async with emulator:
        devices = [{"slave": n, "profile": "xy-md02", "poll": 0.2} for n in (1, 2, 3)]
        cfg = modbus_config(tmp_path / "state", rtu(serial_pair, timeout=0.1), devices)
        agent = agents.start(cfg)
        structlog.configure(processors=[out])
        source = bus_of(agent)
        one, two, three = (slave_health(source, n) for n in (1, 2, 3))
        await until(lambda: two.reads >= 2, 10, "slave 2 to answer")
        emulator.silence(2)
        silent_from = (two.polls, one.reads, three.reads)
        await until(lambda: two.timeouts >= 10, 20, "slave 2's tries to time out")
        asked = two.polls - silent_from[0]
        assert one.reads - silent_from[1] >= asked - 1
        assert three.reads - silent_from[2] >= asked - 1
        assert (one.timeouts, three.timeouts) == (0, 0)
        assert two.crc_errors == 0
        emulator.silence(2, False)
        reads = two.reads
        await until(lambda: two.reads > reads, 10, "slave 2 to answer again")
        await agents.stop(agent)
    events = [e for e in out.entries if e.get("slave") == 2]
    silent = [e for e in events if e["event"] == "modbus device not answering"]
    assert len(silent) == 1
    assert "check its address (2)" in silent[0]["hint"]
    assert "xy-md02 leaves the factory at slave 1, 9600 8N1" in silent[0]["hint"]
    assert [e["event"] for e in events].count("modbus device answers again") == 1


async def test_crc_garbage_is_counted_and_the_bus_recovers(
    tmp_path: Path, serial_pair: SerialPair, agents: Agents
) -> None:
    emulator = ModbusEmulator([xy(1)], port=serial_pair.emulator)
    async with emulator:
        cfg = modbus_config(
            tmp_path / "state",
            rtu(serial_pair, timeout=0.1, retries=2),
            [{"slave": 1, "profile": "xy-md02", "poll": 0.1}],
        )
        agent = agents.start(cfg)
        source = bus_of(agent)
        health = slave_health(source, 1)
        await until(lambda: health.reads >= 2, 10, "first reads")
        emulator.garble(5)
        await until(lambda: emulator.garbled == 0, 10, "five garbled answers")
        reads = health.reads
        await until(lambda: health.reads >= reads + 3, 10, "reads after the noise")
        await agents.stop(agent)
    assert health.crc_errors == 5
    assert health.timeouts == 0
    assert source.health.invalid == 0
    values = {line.split(" ")[1] for line in committed_lines(tmp_path / "state", "climate")}
    assert values == {"temperature_c=21.7", "humidity_rh=48.3"}  # nothing garbled got in


async def test_exception_answers_are_counted_and_the_other_registers_still_read(
    tmp_path: Path, serial_pair: SerialPair, agents: Agents
) -> None:
    """A register map with one address the device does not have: exception 2 for that
    request, counted with its code; the device's other request still brings its readings."""
    shipped = (REGISTER_DIR / "xy-md02.yaml").read_text(encoding="utf-8")
    extra = (
        "  - {function: input, address: 0x0010, type: int16, name: extra, measurement: climate,"
        " field: extra, kind: climate}\n"
    )
    (tmp_path / "xy-md02.yaml").write_text(shipped + extra, encoding="utf-8")
    out = structlog.testing.LogCapture()
    async with ModbusEmulator([xy(1)], port=serial_pair.emulator):
        cfg = modbus_config(
            tmp_path / "state",
            rtu(serial_pair),
            [{"slave": 1, "profile": str(tmp_path / "xy-md02.yaml"), "poll": 0.1}],
        )
        agent = agents.start(cfg)
        structlog.configure(processors=[out])
        source = bus_of(agent)
        health = slave_health(source, 1)
        await until(lambda: health.exceptions >= 3, 10, "exception answers")
        await agents.stop(agent)
    assert health.last_exception == 2
    assert health.reads >= 3
    assert (health.timeouts, health.crc_errors) == (0, 0)
    assert {c.name for c in agent.channels} == {"edge_paint.xy-md02-1.temperature",
                                                 "edge_paint.xy-md02-1.humidity"}  # fmt: skip
    warned = [e for e in out.entries if e["event"] == "modbus device answered with an exception"]
    assert warned
    assert warned[0]["exception"] == "illegal data address"
    assert warned[0]["request"] == "input registers 16…16"
    assert not [e for e in out.entries if e["event"] == "modbus device not answering"]


async def test_unplug_and_replug_of_the_port_recover(
    tmp_path: Path, serial_pair: SerialPair, agents: Agents
) -> None:
    emulator = ModbusEmulator([xy(1)], port=serial_pair.emulator)
    async with emulator:
        cfg = modbus_config(
            tmp_path / "state",
            rtu(serial_pair, reconnect_max=1),
            [{"slave": 1, "profile": "xy-md02", "poll": 0.1}],
        )
        agent = agents.start(cfg)
        source = bus_of(agent)
        health = slave_health(source, 1)
        await until(lambda: health.reads >= 2, 10, "first reads")
        serial_pair.unplug()
        await until(lambda: not source.health.connected, 10, "the unplug to be noticed")
        reads = health.reads
        serial_pair.replug()
        await until(lambda: health.reads >= reads + 3, 20, "reads after the replug")
        await agents.stop(agent)
    assert source.health.reconnects == 1
    assert health.crc_errors == 0


# -- the agent's self-metrics ----------------------------------------------------------------


def test_each_slave_has_its_own_driftgate_source_point(tmp_path: Path) -> None:
    cfg = modbus_config(
        tmp_path / "state",
        {"port": "/dev/null-modbus"},
        [{"slave": 1, "profile": "xy-md02"}, {"slave": 7, "profile": "xy-md02", "sensor": "c7"}],
    )
    agent = Agent(cfg)
    source = bus_of(agent)
    slave_health(source, 7).timeouts = 4
    lines = [line for line in agent.self_metrics_lines() if line.startswith("driftgate_source")]
    assert len(lines) == 3
    assert lines[0].startswith("driftgate_source,gateway=gw-modbus,site=floor1,source=bus1 ")
    assert lines[2].startswith(
        "driftgate_source,gateway=gw-modbus,sensor=c7,site=floor1,slave=7,source=bus1 "
    )
    assert "timeouts=4i" in lines[2]
    assert "last_good_ns=0i" in lines[1]


# -- driftgate simulate ----------------------------------------------------------------------


async def test_simulate_serves_a_bus_of_emulated_devices_to_the_agent(
    tmp_path: Path, serial_pair: SerialPair, agents: Agents
) -> None:
    sim = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "agent", "simulate", "--profile", "xy-md02"),
        *("--serial", serial_pair.emulator, "--slave", "1", "--slave", "2"),
        *("--count", "20", "--start", "2024-03-15T08:00:00Z", "--device", "edge_paint"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        devices = [{"slave": n, "profile": "xy-md02", "poll": 0.1} for n in (1, 2)]
        cfg = modbus_config(tmp_path / "state", rtu(serial_pair, timeout=0.5), devices)
        agent = agents.start(cfg)
        source = bus_of(agent)
        out, err = await asyncio.wait_for(sim.communicate(), 30)
        await agents.stop(agent)
    finally:
        if sim.returncode is None:
            sim.kill()
            await sim.wait()
    stdout, stderr = out.decode(), err.decode()
    assert sim.returncode == 0, stderr
    assert stdout.splitlines()[-1].startswith("xy-md02 (slave 1,2) on ")
    answers = int(stdout.splitlines()[-1].split(": ")[1].split(" ")[0])
    assert answers >= 20  # --count 20: stops at the 20th (and lets one in flight out)
    assert sum(h.reads for h in source.health.slaves) >= 19  # the 20th may be cut at exit
    assert {c.name for c in agent.channels} == {
        f"edge_paint.xy-md02-{n}.{name}" for n in (1, 2) for name in ("humidity", "temperature")
    }
    humidity = [
        float(line.split(" ")[1].split("=")[1])
        for line in committed_lines(tmp_path / "state", "climate")
        if "humidity_rh" in line
    ]
    assert humidity
    assert all(40 < rh < 60 for rh in humidity)  # the edge-paint room's climate, 0.1 %RH steps
    assert all(round(rh, 1) == rh for rh in humidity)


def test_simulate_refuses_what_a_modbus_device_cannot_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from agent.cli import main as cli_main

    code = cli_main(["simulate", "--profile", "xy-md02", "--mqtt", "mqtt://127.0.0.1:1"])
    assert code != 0
    assert "xy-md02 is a Modbus device: it answers on a serial port" in capsys.readouterr().err


async def test_stopping_outlasts_a_swallowed_cancellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's wait_for (inside pymodbus's request) can swallow a cancellation that
    meets an arriving answer; the agent's stop then hung on the source (seen in this file's
    first test). The poller is cancelled until it has stopped."""
    cfg = modbus_config(
        tmp_path / "state", {"port": "/dev/null-modbus"}, [{"slave": 1, "profile": "xy-md02"}]
    )
    source = ModbusSource(cfg.sources[0], None, None)  # type: ignore[arg-type]
    source._lost = asyncio.get_running_loop().create_future()
    swallowed: list[int] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(1)

    monkeypatch.setattr(source, "_poll_loop", stubborn)
    task = asyncio.create_task(source.wait_lost())
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, "the source did not stop"
    assert task.cancelled()
    assert swallowed == [1]
