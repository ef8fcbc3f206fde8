"""``driftgate run``: the agent from a config file, or without one the embedded workshop demo."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from agent.cli.common import (
    DEFAULT_STATE_DIR,
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_OK,
    Subparsers,
    log_level,
)

DEMO_ONLY = ("days", "speed", "seed", "influx")
"""``run`` options that only the demo takes; with ``-c`` the config file says these things."""


def add_parser(sub: Subparsers) -> None:
    """The ``run`` command."""
    run_ = sub.add_parser(
        "run",
        help="run the agent (without -c: the embedded workshop demo)",
        description="Run the agent from a config file, or without one the embedded demo.",
    )
    run_.add_argument("-c", "--config", type=Path, help="agent YAML config; omit for the demo")
    run_.add_argument(
        "--state-dir", type=Path, help="spool, baselines, history, context (demo: ./.driftgate)"
    )
    run_.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv)")
    demo = run_.add_argument_group("demo options (without -c)")
    demo.add_argument("--days", type=float, default=None, help="simulated days (default 28)")
    demo.add_argument(
        "--speed", type=float, default=None, help="simulated s per wall s (default 86400)"
    )
    demo.add_argument("--seed", type=int, default=None, help="random seed of the simulation")
    demo.add_argument("--influx", metavar="URL", help="forward to InfluxDB at URL")
    demo.add_argument(
        "--influx-api", choices=["v1", "v2"], default="v1", help="InfluxDB write API (v1)"
    )
    demo.add_argument("--influx-db", default="driftgate", help="v1 database (default driftgate)")
    demo.add_argument("--influx-rp", default=None, help="v1 retention policy")
    demo.add_argument("--influx-user", default=None, help="v1 user (password: env or file)")
    demo.add_argument(
        "--influx-password-file", type=Path, default=None, help="v1 password, in a file"
    )
    demo.add_argument("--influx-org", default="driftgate", help="v2 organisation")
    demo.add_argument("--influx-bucket", default="driftgate", help="v2 bucket")
    demo.add_argument("--influx-token-file", type=Path, default=None, help="v2 token, in a file")
    run_.set_defaults(handler=run)


def _demo_influx(args: argparse.Namespace) -> dict[str, Any] | None:
    if not args.influx:
        return None
    influx: dict[str, Any] = {"url": args.influx, "api": args.influx_api}
    if args.influx_api == "v1":
        influx["database"] = args.influx_db
        if args.influx_rp:
            influx["retention_policy"] = args.influx_rp
        if args.influx_user:
            influx["username"] = args.influx_user
        if args.influx_password_file:
            influx["password_file"] = str(args.influx_password_file.resolve())
    else:
        influx["org"] = args.influx_org
        influx["bucket"] = args.influx_bucket
        if args.influx_token_file:
            influx["token_file"] = str(args.influx_token_file.resolve())
    return influx


def run(args: argparse.Namespace) -> int:
    """Run the demo, or the agent from ``-c``."""
    from agent.logs import configure_logging

    if args.config is None:
        from agent.cli.demo import run_demo
        from agent.sim.demo import DEMO_DAYS, DEMO_SPEED, DemoOptions

        opts = DemoOptions(
            state_dir=args.state_dir or DEFAULT_STATE_DIR,
            days=args.days if args.days is not None else DEMO_DAYS,
            speed=args.speed if args.speed is not None else DEMO_SPEED,
            seed=args.seed if args.seed is not None else 1,
            influx=_demo_influx(args),
            log_level=log_level(args.verbose, "warning"),
        )
        configure_logging(opts.log_level)
        asyncio.run(run_demo(opts))
        return EXIT_OK

    given = [f"--{name.replace('_', '-')}" for name in DEMO_ONLY if getattr(args, name)]
    if given:
        print(
            f"driftgate run: {', '.join(given)} only apply to the demo (without -c); with -c "
            "the config file says these things (sources, influx:)",
            file=sys.stderr,
        )
        return EXIT_CONFIG

    from agent.runtime.systemd import hold_sighup

    hold_sighup()  # a reload asked while the imports below take their seconds is kept

    from agent.config import AgentConfig, load_config
    from agent.runtime.agent import Agent

    def read_config() -> AgentConfig:
        cfg = load_config(args.config)
        if args.state_dir is not None:
            cfg = cfg.model_copy(update={"state_dir": args.state_dir})
        return cfg

    cfg = read_config()
    configure_logging(log_level(args.verbose, cfg.log.level), cfg.log.format)

    async def main() -> str | None:
        # SIGHUP (systemctl reload) reads the file again: see Agent.reload
        agent = Agent(cfg, reload_config=read_config)
        if cfg.alerts.console:
            agent.pipeline.sinks.append(lambda e: print(e.message, flush=True))
        return (await agent.run()).failure

    failure = asyncio.run(main())
    if failure is not None:
        print(f"driftgate: {failure}", file=sys.stderr)
        return EXIT_ERROR  # not 2: systemd restarts the service (Restart=on-failure)
    return EXIT_OK
