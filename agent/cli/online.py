"""``check-config --online``: the probes' lines (``agent.runtime.probes``), printed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.config.models import AgentConfig
    from agent.runtime.plan import SourcePlan


def print_probes(config: AgentConfig, plans: Sequence[SourcePlan]) -> tuple[int, int]:
    """One ``online: … ok|NOT OK: …`` line per probe; (not ok, tried)."""
    from agent.runtime.probes import probe_all

    probes = asyncio.run(probe_all(config, plans))
    for probe in probes:
        print(f"online: {probe}")
    if not probes:
        print("online: nothing to try (no influx, no mqtt, no serial ports)")
    return sum(not probe.ok for probe in probes), len(probes)
