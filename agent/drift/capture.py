"""Baseline capture: lock the approved sample's conditions from the local history.

A capture pools a channel's readings over a span of the local history (state_dir/history.sqlite)
into a `captured` baseline in state_dir/baselines.json; a running agent compares against it
within a second, and every alert names it ("captured 2026-03-02 to 2026-03-02, <note>").
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agent.config import parse_duration
from agent.drift.baselines import Baseline, BaselineStore
from agent.errors import DriftgateError
from agent.store.history import MINUTE_NS, channel_span, history_path, pooled

MIN_READINGS = 30
"""Fewest readings a capture accepts by default (a mean and std worth comparing against)."""


class CaptureError(DriftgateError):
    """A baseline command was refused (bad span, too few readings, unknown channel)."""


def parse_time(text: str, what: str) -> int:
    """An ISO 8601 time with a timezone, as ns since the epoch."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CaptureError(
            f"{what} {text!r} is not an ISO 8601 time, e.g. 2026-03-02T08:00+01:00"
        ) from None
    if moment.tzinfo is None:
        bare = text.strip()
        raise CaptureError(
            f"{what} {text!r} has no timezone: add one, e.g. {bare}Z or {bare}+01:00"
        )
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def _minute(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M")


def span_words(start_ns: int, end_ns: int) -> str:
    """A span as the CLI prints it: 2026-03-02 08:00 to 10:00 UTC."""
    a, b = _minute(start_ns), _minute(end_ns)
    if a[:10] == b[:10]:
        b = b[11:]
    return f"{a} to {b} UTC"


def capture(
    state_dir: Path,
    channel: str,
    *,
    last: str | None = None,
    start: str | None = None,
    end: str | None = None,
    note: str = "",
    min_readings: int = MIN_READINGS,
) -> Baseline:
    """Pool the span's readings into a captured baseline and store it; CaptureError if unfit."""
    path = history_path(state_dir)
    if last is not None:
        if end is not None:
            raise CaptureError("--to goes with --from; --last counts back from the newest data")
        try:
            seconds = parse_duration(last)
        except ValueError as exc:
            raise CaptureError(f"--last: {exc}") from None
        if seconds <= 0:
            raise CaptureError("--last must be a positive duration, e.g. 30m")
        _, newest = channel_span(path, channel)
        end_ns = (newest + 1) * MINUTE_NS
        start_ns = end_ns - int(seconds * 1e9)
    else:
        if start is None or end is None:
            raise CaptureError("give --last DURATION, or both --from TIME and --to TIME")
        start_ns, end_ns = parse_time(start, "--from"), parse_time(end, "--to")
        if end_ns <= start_ns:
            raise CaptureError(f"--to ({end}) must be after --from ({start})")
        channel_span(path, channel)  # names the channels that have history if this one has none
    got = pooled(path, channel, start_ns, end_ns)
    n = got.n if got is not None else 0
    if n < max(min_readings, 2):
        first, newest = channel_span(path, channel)
        raise CaptureError(
            f"only {n} readings of {channel} in {span_words(start_ns, end_ns)}; a baseline "
            f"needs at least {max(min_readings, 2)}. The history has this channel from "
            f"{_minute(first * MINUTE_NS)} to {_minute((newest + 1) * MINUTE_NS)} UTC: "
            "choose a longer or another span"
        )
    assert got is not None
    baseline = Baseline(
        mean=got.mean,
        std=got.std,
        n=got.n,
        start_ns=got.start_ns,
        end_ns=got.end_ns,
        source="captured",
        note=note,
    )
    BaselineStore(state_dir / "baselines.json").put(channel, baseline)
    return baseline
