"""``driftgate check-config``: every problem of a config file, or what it will do."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli.common import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, Subparsers

if TYPE_CHECKING:
    from agent.config.loader import LoadedConfig
    from agent.runtime.plan import SourcePlan


def add_parser(sub: Subparsers) -> None:
    """The ``check-config`` command."""
    check = sub.add_parser(
        "check-config",
        help="validate a config file and list every problem",
        description="Every problem as file:line: key: reason, all at once (exit 2). Otherwise "
        "the files read (the config, then its conf.d/*.yaml) and the ${VAR}s substituted, the "
        "channels each source will produce, a file:line: key: warning: … line for each "
        "setting that exposes the gateway or a channels: entry no source produces, and one "
        "line saying what the agent reads and where it writes (exit 0).",
    )
    check.add_argument("-c", "--config", type=Path, required=True, help="agent YAML config")
    check.add_argument(
        "--online",
        action="store_true",
        help="also try InfluxDB (login, database or bucket), the MQTT broker (login, the "
        "sources' subscriptions), each serial port (exists, may be opened) and Modbus TCP "
        "device (takes a connection); exit 1 if one is not ok",
    )
    check.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print every problem (exit 2), or what the config does (exit 0; 1 if a probe failed)."""
    from agent.config.loader import load_config_files
    from agent.errors import ConfigError
    from agent.runtime.plan import plan_sources, unproduced

    path: Path = args.config
    try:
        loaded = load_config_files(path)
        plans = plan_sources(loaded.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        count = len(exc.problems)
        print(f"{path}: {count} problem{'' if count == 1 else 's'}", file=sys.stderr)
        return EXIT_CONFIG
    config = loaded.config
    print_read(loaded)
    print_channels(loaded, plans)
    for warning in config.warnings:  # accepted, but exposes the gateway: say so, exit 0
        print(warning)
    for missing in unproduced(config, plans):
        print(f"{loaded.where(('channels', missing.index, 'name'))}: warning: {missing.detail}")
    if args.online:
        from agent.cli.online import print_probes

        failed, tried = print_probes(config, plans)
        if failed:
            print(f"NOT OK: {failed} of {tried} online checks failed; the file itself is valid: "
                  f"{config.summary()}")  # fmt: skip
            return EXIT_ERROR
    print(f"OK: {config.summary()}")
    return EXIT_OK


def print_read(loaded: LoadedConfig) -> None:
    """The files read, in merge order, and the variables substituted (names only)."""
    print(f"read: {', '.join(str(f) for f in loaded.files)}")
    if loaded.variables:
        shown = ", ".join(
            f"{name} ({'from the environment' if how == 'environment' else 'its default'})"
            for name, how in sorted(loaded.variables.items())
        )
        print(f"variables: {shown}")


def print_channels(loaded: LoadedConfig, plans: list[SourcePlan]) -> None:
    """Each source and the channels it will produce, with the rule that names them."""
    from agent.ingest.naming import NAMING_RULE
    from agent.runtime.plan import configured_for

    if not plans:
        return
    print(f"channel names: {NAMING_RULE}")
    print("sources and their channels ({tag}: what each device sends):")
    for plan in plans:
        print(f"  source {plan.name} ({plan.what}):")
        for channel in plan.channels:
            unit = f", {channel.unit}" if channel.unit else ""
            line = f"    {channel.pattern} ({channel.measurement} {channel.field}{unit})"
            if channel.same_as:
                line += f" while the frames say {channel.same_as}; other devices: {channel.other}"
            names = configured_for(loaded.config, channel)
            if names:
                line += f" [channels: {', '.join(names)}]"
            print(line)
