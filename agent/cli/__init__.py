"""The ``driftgate`` command: one module per subcommand, argparse and printing only.

Each module has ``add_parser(sub)`` (which sets ``handler``) and a ``run(args)`` that imports
what it needs when it runs, so ``driftgate --help`` and the small commands start fast.
"""

from __future__ import annotations

import argparse
import sys

from agent import __version__
from agent.cli import (
    alerts,
    baseline,
    check,
    context,
    lot,
    reference,
    replay,
    report,
    run,
    simulate,
    spool,
    status,
    users,
)
from agent.cli.common import EXIT_CONFIG, EXIT_ERROR, EXIT_INTERRUPTED
from agent.errors import ConfigError, DriftgateError

COMMANDS = (
    run,
    status,
    check,
    alerts,
    spool,
    context,
    simulate,
    replay,
    reference,
    baseline,
    lot,
    report,
    users,
)
"""The subcommands, in the order ``driftgate --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (``docs/cli.md`` is generated from it)."""
    parser = argparse.ArgumentParser(
        prog="driftgate",
        description="Edge agent that catches slow drift on the workshop floor.",
    )
    parser.add_argument("--version", action="version", version=f"driftgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``driftgate`` console script and ``python -m agent``."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except DriftgateError as exc:
        print(f"driftgate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
