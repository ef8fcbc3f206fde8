"""Baselines a detector compares against, kept in state_dir so a restart compares like with like."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path


def day(ts_ns: int) -> str:
    """A date as an alert quotes it."""
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class Baseline:
    """Mean and spread of a channel over a span, and where they came from."""

    mean: float
    std: float
    n: int
    start_ns: int
    end_ns: int
    source: str  # "configured", "learned" or "captured"
    note: str = ""

    def describe(self) -> str:
        """Where the baseline comes from, in words an alert can quote."""
        if self.source == "configured":
            return "the configured baseline"
        what = "learned" if self.source == "learned" else "captured"
        extra = f", {self.note}" if self.note else ""
        return f"{what} {day(self.start_ns)} to {day(self.end_ns)}{extra}"


class BaselineStore:
    """A small JSON file of baselines keyed by ``channel/detector``; written atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, Baseline] = {}
        if path is not None and path.exists():
            raw = json.loads(path.read_text(encoding="utf-8"))
            self._data = {key: Baseline(**value) for key, value in raw.items()}

    def get(self, key: str) -> Baseline | None:
        """The stored baseline for a key, if any."""
        return self._data.get(key)

    def put(self, key: str, baseline: Baseline) -> None:
        """Store a baseline and write the file (rare: once per learned or captured baseline)."""
        self._data[key] = baseline
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        payload = {k: asdict(v) for k, v in sorted(self._data.items())}
        tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        os.replace(tmp, self.path)

    def items(self) -> list[tuple[str, Baseline]]:
        """All stored baselines, sorted by key."""
        return sorted(self._data.items())
