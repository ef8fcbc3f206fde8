"""Logging: JSON lines, level filtering, burst summaries, secret redaction."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import structlog

from agent.logs import configure_logging, flush_bursts, get_logger


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def out(clock: FakeClock) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", "auto", stream, clock=clock)
    yield stream
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_have_the_right_keys(out: io.StringIO) -> None:
    log = get_logger("agent.forwarder")
    log.info("batch sent", rows=500, note="multi\nline")
    log.warning("influx slow", latency_s=2.5)
    first, second = lines(out)
    assert first.keys() == {"timestamp", "level", "event", "logger", "rows", "note"}
    assert first["event"] == "batch sent"
    assert first["level"] == "info"
    assert first["logger"] == "agent.forwarder"
    assert first["rows"] == 500
    assert first["note"] == "multi\nline"
    stamp = datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() is not None
    assert stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert second["level"] == "warning"
    assert second["latency_s"] == 2.5


def test_console_renderer_when_asked(clock: FakeClock) -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream, clock=clock)
    try:
        get_logger("x").info("hello", k=1)
    finally:
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "hello" in text
    assert "k" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_unknown_level_or_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="level"):
        configure_logging("loud", "json", io.StringIO())
    with pytest.raises(ValueError, match="format"):
        configure_logging("info", "xml", io.StringIO())


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("debug", ["debug", "info", "warning", "error"]),
        ("info", ["info", "warning", "error"]),
        ("warning", ["warning", "error"]),
        ("error", ["error"]),
    ],
)
def test_level_filtering(clock: FakeClock, level: str, expected: list[str]) -> None:
    stream = io.StringIO()
    configure_logging(level, "json", stream, clock=clock)
    try:
        log = get_logger("x")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
    finally:
        structlog.reset_defaults()
    assert [line["level"] for line in lines(stream)] == expected


def test_burst_is_one_line_plus_one_summary(out: io.StringIO, clock: FakeClock) -> None:
    log = get_logger("agent.forwarder")
    for i in range(1000):
        log.error("write failed", attempt=i)
        clock.now += 0.01
    assert len(lines(out)) == 1
    flush_bursts()  # window not over yet: nothing
    assert len(lines(out)) == 1
    clock.now += 60
    flush_bursts()
    first, summary = lines(out)
    assert first["attempt"] == 0
    assert "repeated" not in first
    assert summary["event"] == "write failed"
    assert summary["level"] == "error"
    assert summary["logger"] == "agent.forwarder"
    assert summary["repeated"] == 999
    assert summary["window_s"] == 60
    assert summary["attempt"] == 999
    flush_bursts(force=True)
    assert len(lines(out)) == 2


def test_window_closes_on_the_next_log_call(out: io.StringIO, clock: FakeClock) -> None:
    log = get_logger("a")
    log.warning("slow")
    log.warning("slow")
    log.warning("slow")
    clock.now += 61
    log.info("something else")
    log.warning("slow")
    got = [(line["event"], line.get("repeated")) for line in lines(out)]
    assert got == [("slow", None), ("slow", 2), ("something else", None), ("slow", None)]


def test_force_flush_at_shutdown(out: io.StringIO) -> None:
    log = get_logger("a")
    log.error("boom")
    log.error("boom")
    flush_bursts(force=True)
    assert [line.get("repeated") for line in lines(out)] == [None, 1]


def test_different_events_are_not_merged(out: io.StringIO, clock: FakeClock) -> None:
    get_logger("a").error("boom")
    get_logger("b").error("boom")
    get_logger("a").warning("boom")
    get_logger("a").error("bang")
    get_logger("a").error("boom")
    clock.now += 60
    flush_bursts()
    got = [
        (line["logger"], line["level"], line["event"], line.get("repeated")) for line in lines(out)
    ]
    assert got == [
        ("a", "error", "boom", None),
        ("b", "error", "boom", None),
        ("a", "warning", "boom", None),
        ("a", "error", "bang", None),
        ("a", "error", "boom", 1),
    ]


def test_info_is_never_suppressed(out: io.StringIO) -> None:
    log = get_logger("a")
    for _ in range(50):
        log.info("tick")
    flush_bursts(force=True)
    assert len(lines(out)) == 50


@pytest.mark.parametrize(
    "key", ["token", "influx_token", "password", "MQTT_PASSWORD", "client_secret", "authorization"]
)
def test_secrets_are_redacted(out: io.StringIO, key: str) -> None:
    secret = "s3cr3t-value-9f2"
    get_logger("a").info("connecting", host="influx", **{key: secret})
    get_logger("a").error("auth failed", config={"url": "http://x", key: secret})
    flush_bursts(force=True)
    assert secret not in out.getvalue()
    first, second = lines(out)
    assert first[key] == "***"
    assert first["host"] == "influx"
    assert second["config"] == {"url": "http://x", key: "***"}


def test_redacted_in_burst_summary(out: io.StringIO) -> None:
    log = get_logger("a")
    for _ in range(3):
        log.error("auth failed", token="abc-very-secret")
    flush_bursts(force=True)
    assert "abc-very-secret" not in out.getvalue()
    assert lines(out)[-1]["token"] == "***"
