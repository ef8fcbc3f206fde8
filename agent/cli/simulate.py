"""``driftgate simulate``: one emulated device writing its real frames to a port or a broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from agent.cli.common import EXIT_OK, Subparsers


def add_parser(sub: Subparsers) -> None:
    """The ``simulate`` command."""
    sim = sub.add_parser(
        "simulate",
        help="emulate a device: write its real frames to a serial port or an MQTT broker",
        description="Write one emulated device's frames (the demo's physics and drift "
        "scenarios) to a serial port / pty or to MQTT, to check wiring and config without "
        "the hardware. A Modbus register map (xy-md02, vaisala-hmp) becomes slaves that "
        "answer the agent's requests on the port (RTU) or on --modbus-tcp. Stops on Ctrl-C, "
        "after --count frames (answers) or --days simulated days.",
    )
    sim.add_argument("--profile", required=True, help="device profile, e.g. sht4x-serial")
    target = sim.add_mutually_exclusive_group(required=True)
    target.add_argument("--serial", metavar="PORT", help="serial port or pty to write to")
    target.add_argument("--mqtt", metavar="URL", help="broker: mqtt://[user:pass@]host:port")
    target.add_argument(
        "--modbus-tcp", metavar="HOST:PORT", help="Modbus register maps: listen for Modbus TCP"
    )
    pace = sim.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="frames per second (wall clock)")
    pace.add_argument("--speed", type=float, default=1.0, help="simulated s per wall s (1)")
    sim.add_argument("--start", help="simulated start, ISO 8601 (default: now)")
    sim.add_argument("--days", type=float, help="stop after this many simulated days")
    sim.add_argument("--seed", type=int, default=1, help="random seed of the simulation")
    sim.add_argument("--device", help="which device: a zone, machine (m01-m08) or sample kind")
    sim.add_argument("--count", type=int, help="stop after this many frames")
    sim.add_argument(
        "--baud", type=int, help="serial baud rate (115200; Modbus: the map's factory setting)"
    )
    sim.add_argument("--parity", choices=["N", "E", "O"], default="N", help="Modbus RTU (N)")
    sim.add_argument("--stopbits", type=int, choices=[1, 2], default=1, help="Modbus RTU (1)")
    sim.add_argument(
        "--slave",
        type=int,
        action="append",
        help="Modbus address to answer at (repeat for several; default: the map's)",
    )
    sim.add_argument("--qos", type=int, choices=[0, 1, 2], default=0, help="MQTT QoS (0)")
    sim.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the emulator until done or Ctrl-C."""
    from agent.ingest.registers import is_register_map
    from agent.sim.emulator import SimulateOptions, parse_start, simulate

    opts = SimulateOptions(
        profile=args.profile,
        serial=args.serial,
        mqtt=args.mqtt,
        rate=args.rate,
        speed=args.speed,
        start=parse_start(args.start) if args.start else None,
        days=args.days,
        seed=args.seed,
        device=args.device,
        count=args.count,
        baud=args.baud,
        qos=args.qos,
        modbus_tcp=args.modbus_tcp,
        slaves=tuple(args.slave or ()),
        parity=args.parity,
        stopbits=args.stopbits,
    )
    if is_register_map(args.profile):
        from agent.sim.modbus import simulate_modbus

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(simulate_modbus(opts))
        return EXIT_OK
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(simulate(opts))
    return EXIT_OK
