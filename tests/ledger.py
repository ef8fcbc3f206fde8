"""The fault suite's ledger (see tests/faults/conftest.py): the rows and the table printed at
the end of the run. Its hooks are imported by tests/conftest.py, which every pytest process
loads, so the table is printed by the one that reports: with pytest-xdist the controller, which
never loads tests/faults/conftest.py and gets the rows on the workers' test reports."""

from __future__ import annotations

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
ROW = "fault_row"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        LEDGER.extend(FaultRow(**value) for name, value in report.user_properties if name == ROW)


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
