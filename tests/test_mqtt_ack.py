"""Acknowledged after the commit: the spool's durable line numbers, and a real Mosquitto that
gets its PUBACKs only once what a message produced is on disk (the kill -9 proof is
tests/faults/test_kill9.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from servers import MosquittoServer
from spoolfile import committed_lines
from test_mqtt import make_config, pub, running, seq_source, seqs, until

from agent.errors import ConfigError, SpoolError
from agent.ingest.decode import Decoder
from agent.ingest.profiles import load_profile
from agent.store.spool import Spool

ROOT = Path(__file__).resolve().parent.parent

TS = 1_700_000_000_000_000_000
QUIET = {"watch_dropped": False}  # no retained $SYS counter (QoS 0) among the messages counted


def lines(n: int, start: int = 0) -> list[str]:
    return [f"acktest,zone=a v={i}.5 {TS + i}" for i in range(start, start + n)]


@contextlib.contextmanager
def refused_commits(
    spool: Spool, times: int | None = None, delay: float = 0.0
) -> Iterator[list[int]]:
    """Stands in for a disk that refuses writes: a commit raises SpoolError as ``_Store.commit``
    does when SQLite cannot write (after ``delay`` seconds on the spool's thread); only the
    first ``times`` commits when given. Yields the sizes of the refused commits."""
    real = spool._store.commit
    refused: list[int] = []

    def refuse(batch: Any, chunk_lines: int) -> Any:
        if times is not None and len(refused) >= times:
            return real(batch, chunk_lines)
        time.sleep(delay)
        refused.append(len(batch))
        raise SpoolError("cannot write to the spool: database or disk is full (test)")

    spool._store.commit = refuse  # type: ignore[method-assign]
    try:
        yield refused
    finally:
        spool._store.commit = real  # type: ignore[method-assign]


# -- the spool's side ---------------------------------------------------------------------------


async def test_durable_seq_follows_commits_and_tells_listeners(tmp_path: Path) -> None:
    told: list[int] = []
    async with Spool(tmp_path / "s.sqlite") as spool:
        spool.durable_listeners.append(told.append)
        spool.extend(lines(3))
        spool.append(lines(1, start=3)[0])
        assert (spool.appended_seq, spool.durable_seq) == (4, 0)
        await spool.flush()
        assert spool.durable_seq == 4
        await spool.flush()  # nothing new: nothing to tell
        spool.extend(lines(2, start=4))
    assert spool.durable_seq == 6  # close() commits what is left
    assert told == [4, 6]


async def test_durable_seq_waits_for_lines_a_failed_commit_put_back(tmp_path: Path) -> None:
    told: list[int] = []
    async with Spool(tmp_path / "s.sqlite") as spool:
        spool.durable_listeners.append(told.append)
        spool.extend(lines(3))
        with refused_commits(spool, times=1, delay=0.2) as refused:
            first = asyncio.create_task(spool.flush())  # lines 1-3: refused, put back
            await asyncio.sleep(0.05)
            spool.extend(lines(2, start=3))
            second_taken = asyncio.Event()

            async def second() -> None:
                second_taken.set()
                await spool.flush()  # lines 4-5, taken while the first is still in flight

            task = asyncio.create_task(second())
            await second_taken.wait()
            await asyncio.sleep(0)
            assert spool.buffered == 0  # both buffers are out: the second holds lines 4-5
            with contextlib.suppress(SpoolError):
                await first
            # The second commit succeeded, but lines 1-3 are back in memory: not durable yet.
            await task
        assert refused == [3]
        assert spool.durable_seq == 0
        assert told == []
        assert spool.buffered == 3
        await spool.flush()
        assert spool.durable_seq == 5
        assert told == [5]


# -- against a real broker ----------------------------------------------------------------------


async def test_no_puback_while_the_spool_cannot_commit_the_broker_keeps_the_rest(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """The broker sends at most the agent's Receive Maximum (mqtt.receive_maximum, 2000 by
    default) un-acknowledged messages; while nothing can be committed no PUBACK goes out, so
    it keeps the rest. Once the disk takes writes again, every message arrives."""
    cfg = make_config(tmp_path, mosquitto, [seq_source(tmp_path)], mqtt=QUIET)
    total = 3000
    async with running(cfg) as agent:
        assert agent.mqtt is not None
        with refused_commits(agent.spool) as refused:
            await pub(mosquitto, "seq/p1", *[json.dumps({"seq": i}) for i in range(total)])
            await until(lambda: agent.metrics.mqtt_messages >= 2000, within=20)
            await asyncio.sleep(1.0)  # time for more to come, if the broker were to send them
            assert agent.metrics.mqtt_messages == 2000
            assert agent.mqtt.unacked == 2000
            assert refused  # the spool kept trying (early, when half the window waited)
        await until(lambda: agent.metrics.readings_in == total and agent.mqtt.unacked == 0)
    assert sorted(seqs(cfg.state_dir)) == list(range(total))


async def test_a_stop_acknowledges_what_it_committed(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """The final commit at shutdown releases the last PUBACKs before the disconnect: the
    next session gets nothing again."""
    cfg = make_config(tmp_path, mosquitto, [seq_source(tmp_path)], mqtt=QUIET)
    async with running(cfg) as agent:
        await pub(mosquitto, "seq/p1", *[json.dumps({"seq": i}) for i in range(300)])
        await until(lambda: agent.metrics.readings_in == 300)
    async with running(cfg) as agent:
        await asyncio.sleep(1.0)  # a redelivery comes right after CONNACK
        assert agent.metrics.mqtt_messages == 0
    assert sorted(seqs(cfg.state_dir)) == list(range(300))


async def test_pubacks_wait_in_arrival_order_behind_an_unsaved_context(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """A context message is durable once context.json is written; the readings after it are
    committed sooner, but MQTT wants PUBACKs in the order the messages came: they wait."""
    cfg = make_config(tmp_path, mosquitto, [seq_source(tmp_path)], mqtt=QUIET)
    async with running(cfg) as agent:
        assert agent.mqtt is not None
        gate = threading.Event()
        real_save = agent.context.save

        def held_save() -> None:  # runs in a thread (asyncio.to_thread)
            gate.wait(20)
            real_save()

        agent.context.save = held_save  # type: ignore[method-assign]
        try:
            await pub(mosquitto, "driftgate/s1/context/line/L2", '{"lot": "LOT-7"}')
            await until(lambda: agent.context.dirty)
            await pub(mosquitto, "seq/p1", *[json.dumps({"seq": i}) for i in range(20)])
            spool = agent.spool
            await until(
                lambda: agent.metrics.readings_in == 20 and spool.durable_seq >= spool.appended_seq
            )
            assert agent.mqtt.unacked == 21
        finally:
            gate.set()
        await until(lambda: agent.mqtt is not None and agent.mqtt.unacked == 0)
        assert agent.context.saved_version == agent.context.version


# -- timestamps that let InfluxDB de-duplicate a redelivery ---------------------------------------

TASMOTA_AT = (
    '{{"Time":"{time}","SHT3X":{{"Temperature":21.4,"Humidity":48.2,"DewPoint":10.1}},'
    '"TempUnit":"C"}}'
)


@pytest.fixture
def paris(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The gateway's own zone is Europe/Paris for this test."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_tasmota_time_stamps_the_readings_so_a_redelivery_overwrites(paris: None) -> None:
    decoder = Decoder(load_profile("tasmota-sht3x"))
    topic = "tele/tasmota_ep1/SENSOR"
    at_7_utc = int(datetime(2024, 3, 1, 7, tzinfo=UTC).timestamp()) * 10**9
    for time_field in ("2024-03-01T08:00:00", "2024-03-01T08:00:00+01:00"):
        payload = TASMOTA_AT.format(time=time_field).encode()
        first = decoder.decode(payload, topic, received_ns=at_7_utc + 3 * 10**9)
        again = decoder.decode(payload, topic, received_ns=at_7_utc + 900 * 10**9)
        # local time in the gateway's zone, or the offset the device sent (SetOption52 1)
        assert {v.ts_ns for v in first.values} == {at_7_utc}, time_field
        assert [(v.name, v.ts_ns) for v in again.values] == [
            (v.name, v.ts_ns) for v in first.values
        ]
        assert first.time_fallback is None


async def test_a_device_clock_not_set_is_stamped_on_arrival_and_counted(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    source = {"type": "mqtt", "name": "floor", "profile": "tasmota-sht3x", "zone": "cutting"}
    cfg = make_config(tmp_path, mosquitto, [source], mqtt=QUIET)
    before = time.time_ns()
    async with running(cfg) as agent:
        await pub(
            mosquitto, "tele/tasmota_ep1/SENSOR", TASMOTA_AT.format(time="1970-01-01T00:05:12")
        )
        an_hour_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        await pub(
            mosquitto,
            "tele/tasmota_ep2/SENSOR",
            TASMOTA_AT.format(time=an_hour_ago.strftime("%Y-%m-%dT%H:%M:%SZ")),
        )
        # A clock set, but two years off: beyond input_limits.max_behind, so on arrival too.
        await pub(
            mosquitto, "tele/tasmota_ep3/SENSOR", TASMOTA_AT.format(time="2024-03-01T08:00:00Z")
        )
        await until(lambda: agent.metrics.readings_in == 9)
        health = agent.sources[0].health  # type: ignore[attr-defined]
        assert health.time_fallbacks == 2
        assert health.decode_errors == 0
        assert agent.metrics.device_time_refused == 0
    stamps = {
        line.split(",sensor=")[1].split(",")[0]: int(line.rsplit(" ", 1)[1])
        for line in committed_lines(cfg.state_dir)
        if line.startswith("climate,")
    }
    assert stamps["tasmota_ep1"] >= before  # the gateway's clock: nothing is lost
    assert stamps["tasmota_ep2"] == int(an_hour_ago.timestamp()) * 10**9  # the device's own
    assert stamps["tasmota_ep3"] >= before


def test_a_time_zone_is_checked_when_the_profile_loads(tmp_path: Path) -> None:
    text = (ROOT / "firmware_configs" / "tasmota-sht3x.yaml").read_text()
    bad = tmp_path / "tasmota-sht3x.yaml"
    bad.write_text(text.replace("timezone: local", "timezone: Europe/Pariss"))
    with pytest.raises(ConfigError, match=r"tasmota-sht3x.yaml:\d+: timestamp.timezone: "
                       r"'Europe/Pariss' is not a time zone: use an IANA name"):  # fmt: skip
        load_profile(bad)
    bad.write_text(text.replace("source: device, field: Time, unit: iso8601, ", ""))
    with pytest.raises(ConfigError, match=r"timestamp\.fallback: only used with source: device"):
        load_profile(bad)
