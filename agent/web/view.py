"""What the status page reads of a running agent: named as a protocol, so that the page sits
below the runtime that starts it (``agent.runtime.agent.Agent`` is one)."""

from __future__ import annotations

from typing import Protocol

from agent.channels import ChannelRegistry
from agent.config.models import AgentConfig
from agent.context import ContextStore
from agent.drift.engine import DriftEngine
from agent.metrics import AgentMetrics
from agent.runtime.build import Incidents, Source
from agent.runtime.lag import LoopLag
from agent.runtime.supervisor import Supervisor
from agent.store.forwarder import Forwarder
from agent.store.history import History
from agent.store.spool import Spool


class AgentView(Protocol):
    """The parts of a running agent the page shows, and the two things it may ask of it."""

    cfg: AgentConfig
    metrics: AgentMetrics
    registry: ChannelRegistry
    engine: DriftEngine
    context: ContextStore
    history: History | None
    spool: Spool
    forwarder: Forwarder | None
    sources: list[Source]
    incidents: Incidents
    supervisor: Supervisor
    lag: LoopLag

    def acknowledge(self, incident: str, by: str, note: str = "") -> None:
        """Someone acknowledged an incident."""
        ...

    def incident_clock(self) -> int:
        """Now in ns: the wall clock, or reading time in an accelerated simulation."""
        ...
