"""The fault suite's ledger: every fault test records one row — readings sent, acknowledged
by the agent (MQTT PUBACK, or taken off the wire), arrived in InfluxDB, dropped (with the
reason and where it was counted), duplicates — and the row must balance:
arrived + counted drops = acknowledged. The table is printed at the end of the run.

Run the longer soak variants with ``./scripts/test --soak tests/faults``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest


@dataclass
class FaultRow:
    """What one fault did to the readings that went through it."""

    fault: str
    sent: int
    acknowledged: int
    arrived: int
    dropped: dict[str, int] = field(
        default_factory=dict
    )  # reason -> count (each counted by the agent)
    duplicates: int = 0

    @property
    def balanced(self) -> bool:
        """Nothing acknowledged is lost without a count."""
        return self.arrived + sum(self.dropped.values()) == self.acknowledged


LEDGER: list[FaultRow] = []


@pytest.fixture
def fault_report() -> Callable[[FaultRow], None]:
    """Record a fault's row; fails the test unless it balances."""

    def record(row: FaultRow) -> None:
        LEDGER.append(row)
        assert row.balanced, (
            f"{row.fault}: arrived {row.arrived} + dropped {sum(row.dropped.values())} "
            f"!= acknowledged {row.acknowledged} ({row.dropped})"
        )

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not LEDGER:
        return
    head = ("fault", "sent", "acknowledged", "arrived", "dropped (reason)", "duplicates", "ok")
    rows = [head]
    for r in LEDGER:
        dropped = ", ".join(f"{n} {why}" for why, n in r.dropped.items() if n) or "0"
        rows.append(
            (r.fault, f"{r.sent:,}", f"{r.acknowledged:,}", f"{r.arrived:,}", dropped,
             f"{r.duplicates:,}", "yes" if r.balanced else "NO")
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    terminalreporter.write_sep("=", "fault suite: arrived + counted drops = acknowledged")
    for n, row in enumerate(rows):
        terminalreporter.write_line(
            "  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w)
                      for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )  # fmt: skip
        if n == 0:
            terminalreporter.write_line("  ".join("-" * w for w in widths))
