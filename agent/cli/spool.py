"""``driftgate spool``: what waits for InfluxDB, what was dropped, the newest dead letters."""

from __future__ import annotations

import argparse
import time

from agent.cli.common import EXIT_OK, Subparsers, add_state_args, state_dir


def add_parser(sub: Subparsers) -> None:
    """The ``spool`` command."""
    spool = sub.add_parser(
        "spool",
        help="what waits in the spool, what was dropped, and the newest dead letters",
        description="Reads the spool read-only, so it is safe while the agent runs.",
    )
    add_state_args(spool)
    spool.add_argument("--dead", type=int, default=10, metavar="N", help="dead letters to show")
    spool.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the spool's state."""
    from agent.store.spool import inspect, spool_path
    from agent.words import duration_words

    path = spool_path(state_dir(args))
    stats, oldest_ns, dead = inspect(path, args.dead)
    age = (
        f", oldest spooled {duration_words((time.time_ns() - oldest_ns) / 1e9)} ago"
        if oldest_ns
        else ""
    )
    print(f"spool {path}")
    print(
        f"  waiting: {stats.pending_lines:,} lines ({stats.pending_bytes / 1e6:.1f} MB) in "
        f"{stats.chunks:,} chunks{age}"
    )
    print(f"  on disk: {stats.disk_bytes / 1e6:.1f} MB (the files spool.max_bytes caps)")
    print(f"  dropped at the byte cap, ever: {stats.dropped_total:,} lines")
    print(f"  dead letters (refused by InfluxDB or out of range): {stats.dead_letters:,}")
    if stats.dead_letters_dropped:
        print(f"  oldest dead letters deleted at the cap, ever: {stats.dead_letters_dropped:,}")
    for letter in dead:
        status = f"HTTP {letter.status}" if letter.status else "agent"
        print(f"    [{status}] {letter.reason[:160]}\n      {letter.line[:200]}")
    return EXIT_OK
