"""The fault suite's ledger: every fault test records one row — readings sent, acknowledged
by the agent (MQTT PUBACK, or taken off the wire), arrived in InfluxDB, dropped (with the
reason and where it was counted), duplicates — and the row must balance:
arrived + counted drops = acknowledged. The table is printed at the end of the run.

Run the longer soak variants with ``./scripts/test --soak tests/faults``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import pytest
from ledger import ROW, FaultRow

__all__ = ["FaultRow", "fault_report"]


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> Callable[[FaultRow], None]:
    """Record a fault's row; fails the test unless it balances."""

    def record(row: FaultRow) -> None:
        # On the test's report, so that the row reaches the process that prints the table
        # under pytest-xdist too (workers send their reports to the controller).
        request.node.user_properties.append((ROW, asdict(row)))
        assert row.balanced, (
            f"{row.fault}: arrived {row.arrived} + dropped {sum(row.dropped.values())} "
            f"!= acknowledged {row.acknowledged} ({row.dropped})"
        )

    return record
