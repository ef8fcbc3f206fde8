"""The embedded demo's configuration: a simulated workshop on an accelerated clock."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, config_from_dict
from agent.config.status import DEFAULT_PORT

DEMO_DAYS = 28.0
DEMO_SPEED = 86_400.0  # simulated seconds per wall second: a simulated day a second


@dataclass(slots=True)
class DemoOptions:
    """What `driftgate run` without a config file was asked for."""

    state_dir: Path = Path(".driftgate")
    days: float = DEMO_DAYS
    speed: float = DEMO_SPEED
    seed: int = 1
    influx: dict[str, Any] | None = None
    log_level: str = "warning"


def demo_config(opts: DemoOptions) -> AgentConfig:
    """The demo's configuration, validated like a file would be."""
    data: dict[str, Any] = {
        "site": "demo-atelier",
        "gateway": "demo-gw",
        "timezone": "Europe/Paris",
        "state_dir": str(opts.state_dir),
        "channels": [
            {
                "name": "edge_paint.humidity",
                "action": "check the dehumidifier in the edge paint room; hold edge-painted "
                "parts for inspection",
                # The window the edge paint was approved in, its daily swing included.
                "limits": {
                    "low_warn": 40,
                    "high_warn": 58,
                    "high_alarm": 62,
                    "deadband": 1,
                    "hold": "1h",
                },
            },
        ],
        "incidents": {
            "actions": {
                "climate": "check the room's climate control (dehumidifier, heating, doors left "
                "open)",
                "tension": "check the machine's thread tension, bobbin and needle, and what "
                "changed (operator, thread lot); hold seams sewn since then for inspection",
            },
        },
        "log": {"level": opts.log_level},
        "sources": [
            {
                "type": "simulated",
                "name": "workshop",
                "speed": opts.speed,
                "days": opts.days,
                "seed": opts.seed,
                "interval": 60,
            }
        ],
        "self_metrics": {"interval": 2.0},
        "status": {"listen": f"127.0.0.1:{DEFAULT_PORT}"},  # another free port if taken
    }
    if opts.influx:
        data["influx"] = opts.influx
    return config_from_dict(data, source="<demo>")
