"""An agent running in the test's own event loop (for tests that look at its objects)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from agent.config import AgentConfig
from agent.runtime.agent import Agent, RunResult


@contextlib.asynccontextmanager
async def running(cfg: AgentConfig) -> AsyncIterator[Agent]:
    """An agent running in this event loop, connected to its broker; stopped at exit, and
    checked to have stopped as asked (not by a failure)."""
    agent = Agent(cfg)
    task = asyncio.create_task(agent.run(handle_signals=False), name="agent")
    try:
        assert agent.mqtt is not None
        await asyncio.wait_for(agent.mqtt.connected_event.wait(), 10)
        yield agent
    finally:
        agent.stop_event.set()
        result: RunResult = await task
        assert result.stopped_by_signal
