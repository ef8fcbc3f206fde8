"""Waiting in tests: poll a condition, fail with what was awaited when the time is up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest


async def until(predicate: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    """Poll `predicate` every 20 ms; fail the test naming `what` after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


def wait_for(predicate: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    """``until`` for plain (not async) tests: poll every 0.1 s, fail naming `what`."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what or predicate}")
        time.sleep(0.1)
