"""What several commands share: exit codes, the state-dir options, log levels."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2  # a bad config or bad input: systemd must not restart into it
EXIT_INTERRUPTED = 130

DEFAULT_STATE_DIR = Path(".driftgate")

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction


def add_state_args(parser: argparse.ArgumentParser) -> None:
    """``-c CONFIG`` / ``--state-dir DIR``: which agent's state a command reads or changes."""
    parser.add_argument("-c", "--config", type=Path, help="agent config (for its state_dir)")
    parser.add_argument("--state-dir", type=Path, help="state dir (default ./.driftgate)")


def state_dir(args: argparse.Namespace) -> Path:
    """The state dir a command works on: --state-dir, else the config's, else ./.driftgate."""
    if getattr(args, "state_dir", None) is not None:
        return Path(args.state_dir)
    if getattr(args, "config", None) is not None:
        from agent.config import load_config

        return load_config(args.config).state_dir
    return DEFAULT_STATE_DIR


def log_level(verbose: int, default: str) -> str:
    """``-v`` raises the level to info, ``-vv`` to debug."""
    if verbose >= 2:
        return "debug"
    if verbose == 1:
        return "info"
    return default
