"""``driftgate baseline capture|list|show|clear``: lock the approved sample's conditions."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict

from agent.cli.common import EXIT_OK, Subparsers, add_state_args, state_dir
from agent.drift.baselines import BaselineStore
from agent.drift.capture import MIN_READINGS, CaptureError, capture, span_words


def add_parser(sub: Subparsers) -> None:
    """The ``baseline`` command and its four verbs."""
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
    verbs.add_parser(
        "list",
        help="one line per locked baseline",
        description="channel, source (learned, captured), mean, std, readings, span and note",
    )
    show = verbs.add_parser("show", help="one baseline in full, as JSON")
    clear = verbs.add_parser("clear", help="delete a locked baseline (back to the rolling window)")
    for p in (show, clear):
        p.add_argument("channel", help="channel name")
    for p in (cap, verbs.choices["list"], show, clear):
        add_state_args(p)
    base.set_defaults(handler=run)


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


def run(args: argparse.Namespace) -> int:
    """Dispatch ``driftgate baseline ...``."""
    directory = state_dir(args)
    store = BaselineStore(directory / "baselines.json")
    verb = args.baseline_command
    if verb == "capture":
        b = capture(
            directory, args.channel, last=args.last, start=args.start, end=args.end,
            note=args.note, min_readings=args.min_readings,
        )  # fmt: skip
        print(
            f"{args.channel}: captured mean {b.mean:.6g}, std {b.std:.4g} over {b.n} readings, "
            f"{span_words(b.start_ns, b.end_ns)}" + (f" ({b.note})" if b.note else "")
        )
        print("a running agent with this state_dir compares against it within a second")
        return EXIT_OK
    if verb == "list":
        if not store.items():
            print(f"no locked baselines in {store.path}")
            return EXIT_OK
        print(baseline_table(store))
        return EXIT_OK
    found = store.get(args.channel)
    if found is None:
        known = ", ".join(name for name, _ in store.items()) or "none"
        raise CaptureError(f"no locked baseline for {args.channel!r} (locked: {known})")
    if verb == "show":
        print(json.dumps({"channel": args.channel, **asdict(found),
                          "describe": found.describe()}, indent=2))  # fmt: skip
        return EXIT_OK
    store.remove(args.channel)
    print(
        f"{args.channel}: baseline cleared; a running agent compares against its rolling window "
        "within a second (and learns a new baseline where its kind learns one)"
    )
    return EXIT_OK
