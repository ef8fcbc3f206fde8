"""`driftgate baseline capture | list | show | clear`: lock the approved sample's conditions.

A capture pools a channel's readings over a span of the local history (state_dir/history.sqlite)
into a `captured` baseline in state_dir/baselines.json; a running agent compares against it
within a second, and every alert names it ("captured 2026-03-02 to 2026-03-02, <note>").
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
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


def add_baseline_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `baseline` subcommand and its four verbs."""
    base = sub.add_parser(
        "baseline",
        help="lock a channel's baseline from an approved span (capture, list, show, clear)",
        description="Detectors compare against a locked baseline when one exists, else a long "
        "rolling window. A running agent picks changes up within a second.",
    )
    verbs = base.add_subparsers(dest="baseline_command", required=True)
    cap = verbs.add_parser(
        "capture",
        help="pool a span of the local history into a captured baseline",
        description="--last is counted back from the channel's newest minute in the history "
        "(not from the wall clock), so it also works on the demo's simulated time. Times are "
        "ISO 8601 with a timezone, e.g. 2026-03-02T08:00+01:00; spans are whole minutes.",
    )
    cap.add_argument("--channel", required=True, help="channel name, e.g. sewing.m05.tension")
    span = cap.add_mutually_exclusive_group(required=True)
    span.add_argument("--last", metavar="DURATION", help="e.g. 30m, 2h, 1d")
    span.add_argument("--from", dest="start", metavar="TIME", help="ISO 8601 with timezone")
    cap.add_argument("--to", dest="end", metavar="TIME", help="ISO 8601 with timezone")
    cap.add_argument("--note", default="", help="quoted in alerts: 'sample approval SKU 4711'")
    cap.add_argument(
        "--min-readings", type=int, default=MIN_READINGS, help=f"refuse below this ({MIN_READINGS})"
    )
    verbs.add_parser("list", help="one line per locked baseline")
    show = verbs.add_parser("show", help="one baseline in full, as JSON")
    clear = verbs.add_parser("clear", help="delete a locked baseline (back to the rolling window)")
    for p in (show, clear):
        p.add_argument("channel", help="channel name")
    for p in (cap, verbs.choices["list"], show, clear):
        p.add_argument("-c", "--config", type=Path, help="agent config (for its state_dir)")
        p.add_argument("--state-dir", type=Path, help="state dir (default ./.driftgate)")


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


def _num(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.4g}"


def baseline_table(store: BaselineStore) -> str:
    """`baseline list`: channel, source, mean, std, n, span, note."""
    head = ("channel", "source", "mean", "std", "n", "span", "note")
    rows = [head]
    for name, b in store.items():
        span = span_words(b.start_ns, b.end_ns) if b.end_ns else "-"
        rows.append((name, b.source, _num(b.mean), _num(b.std), str(b.n), span, b.note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def run_baseline_command(args: argparse.Namespace, state_dir: Path) -> int:
    """Dispatch `driftgate baseline ...`; exit code 0 on success."""
    store = BaselineStore(state_dir / "baselines.json")
    verb = args.baseline_command
    if verb == "capture":
        b = capture(
            state_dir, args.channel, last=args.last, start=args.start, end=args.end,
            note=args.note, min_readings=args.min_readings,
        )  # fmt: skip
        print(
            f"{args.channel}: captured mean {b.mean:.6g}, std {b.std:.4g} over {b.n} readings, "
            f"{span_words(b.start_ns, b.end_ns)}" + (f" ({b.note})" if b.note else "")
        )
        print("a running agent with this state_dir compares against it within a second")
        return 0
    if verb == "list":
        if not store.items():
            print(f"no locked baselines in {store.path}")
            return 0
        print(baseline_table(store))
        return 0
    found = store.get(args.channel)
    if found is None:
        known = ", ".join(name for name, _ in store.items()) or "none"
        raise CaptureError(f"no locked baseline for {args.channel!r} (locked: {known})")
    if verb == "show":
        print(json.dumps({"channel": args.channel, **asdict(found),
                          "describe": found.describe()}, indent=2))  # fmt: skip
        return 0
    store.remove(args.channel)
    print(
        f"{args.channel}: baseline cleared; a running agent compares against its rolling window "
        "within a second (and learns a new baseline where its kind learns one)"
    )
    return 0
