"""``driftgate check-config``: every problem of a config file, or a one-line summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli.common import EXIT_CONFIG, EXIT_OK, Subparsers


def add_parser(sub: Subparsers) -> None:
    """The ``check-config`` command."""
    check = sub.add_parser(
        "check-config",
        help="validate a config file and list every problem",
        description="Every problem as file:line: key: reason, all at once (exit 2); or one "
        "line saying what the agent would read and where it would write (exit 0), after a "
        "file:line: key: warning: … line for each setting that exposes the gateway (a secret "
        "file others can read, a password over plain http:// or MQTT, verify_tls: false).",
    )
    check.add_argument("-c", "--config", type=Path, required=True, help="agent YAML config")
    check.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print every problem (exit 2) or a one-line summary (exit 0)."""
    from agent.config import load_config
    from agent.errors import ConfigError

    path: Path = args.config
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        count = len(exc.problems)
        print(f"{path}: {count} problem{'' if count == 1 else 's'}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in config.warnings:  # accepted, but exposes the gateway: say so, exit 0
        print(warning)
    print(f"OK: {config.summary()}")
    return EXIT_OK
