"""The Modbus source against pymodbus's own server as the devices: RTU on one end of a socat pty
pair, TCP on 127.0.0.1. Several slaves on one bus, a slave that stops answering, CRC garbage,
exception answers, unplug and replug, readings into a real InfluxDB, and `driftgate simulate`
as the bus's devices."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog
from servers import InfluxDB1Server, SerialPair, free_port
from spoolfile import committed_lines
from waiting import until

from agent.config import config_from_dict
from agent.errors import ConfigError
from agent.ingest.modbus import ModbusSource
from agent.ingest.registers import load_register_map
from agent.runtime.agent import Agent
from agent.sim.modbus import ModbusEmulator, ModbusSlave, fixed_slave

SITE, GATEWAY = "floor1", "gw-modbus"

XY = {"temperature": 21.7, "humidity": 48.3}
HMP = {"humidity": 30.56, "temperature": 22.41, "dew_point": 4.12}


# -- helpers ---------------------------------------------------------------------------------


def modbus_config(state_dir: Path, bus: dict[str, Any], devices: list[dict[str, Any]], **more: Any) -> Any:
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
        await until(lambda: all(h.reads >= 6 for h in source.health.slaves), 20, "6 reads each")
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
