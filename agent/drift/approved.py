"""Approved lots: the lot the approved sample was made from, per channel (and SKU).

A sample is approved once, from one leather lot. ``driftgate lot approve LOT-2411-A`` copies
that lot's sample (its first readings on each channel, from ``lots.json`` or the local history)
into ``state_dir/approved_lots.json``; from then on every new lot on those channels is
compared with the previous lot's **and** with the approved one's. Like a locked baseline
(``baselines.json``) or a colour reference (``references/``), the approved sample is a copy
kept apart from the rolling state, so it outlives the history's retention; the CLI writes the
file and the running agent reads it within a second.

An approval may name a SKU: the approved lot of SKU 4711 is used while the context of the
channel's line or zone says ``sku=4711``; an approval without a SKU is used otherwise.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import DriftgateError

FILENAME = "approved_lots.json"


class ApprovalError(DriftgateError):
    """An approval was refused or the file of approved lots is unreadable."""


def approved_path(state_dir: Path) -> Path:
    """Where the approved lots live under a state dir."""
    return Path(state_dir) / FILENAME


@dataclass(frozen=True, slots=True)
class ApprovedLot:
    """One channel's sample of the approved lot (the first readings of that lot)."""

    channel: str
    lot: str
    values: tuple[float, ...]
    first_ns: int
    last_ns: int
    approved_ns: int
    sku: str = ""  # "" : for every SKU
    note: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # label, unit, kind, effect, ...

    def __post_init__(self) -> None:
        if not self.values or not all(math.isfinite(x) for x in self.values):
            raise ApprovalError(f"{self.channel}: an approved sample needs finite readings")

    def to_json(self) -> dict[str, Any]:
        """As stored."""
        return {
            "channel": self.channel,
            "lot": self.lot,
            "sku": self.sku,
            "note": self.note,
            "approved_ns": self.approved_ns,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "meta": self.meta,
            "values": list(self.values),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ApprovedLot:
        """Back from its stored form (ApprovalError when malformed)."""
        try:
            return cls(
                channel=str(data["channel"]),
                lot=str(data["lot"]),
                values=tuple(float(x) for x in data["values"]),
                first_ns=int(data["first_ns"]),
                last_ns=int(data["last_ns"]),
                approved_ns=int(data["approved_ns"]),
                sku=str(data.get("sku", "")),
                note=str(data.get("note", "")),
                meta=dict(data.get("meta") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ApprovalError(f"malformed approved lot: {exc!r}") from None


class ApprovedLots:
    """The approved lots of one agent, keyed by (channel, sku)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lots: dict[tuple[str, str], ApprovedLot] = {}
        self._mtime: float | None = None
        self.reload()

    def reload(self) -> bool:
        """Re-read the file if it changed; True when it did (a missing file is no approvals)."""
        if self.path is None:
            return False
        try:
            mtime: float | None = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        lots: dict[tuple[str, str], ApprovedLot] = {}
        if mtime is not None:
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                for item in raw.get("approved", []):
                    lot = ApprovedLot.from_json(item)
                    lots[(lot.channel, lot.sku)] = lot
            except (OSError, ValueError, AttributeError) as exc:
                raise ApprovalError(f"cannot read the approved lots {self.path}: {exc}") from None
        changed = lots != self.lots
        self.lots = lots
        return changed

    def find(self, channel: str, sku: str | None) -> ApprovedLot | None:
        """The approved lot for this channel under this SKU, else the one for every SKU."""
        if sku:
            found = self.lots.get((channel, sku))
            if found is not None:
                return found
        return self.lots.get((channel, ""))

    def __iter__(self) -> Iterator[ApprovedLot]:
        return iter(self.lots[k] for k in sorted(self.lots))

    def put(self, lots: Sequence[ApprovedLot]) -> None:
        """Add or replace approvals and write the file atomically (the CLI's side)."""
        for lot in lots:
            self.lots[(lot.channel, lot.sku)] = lot
        self._write()

    def remove(self, channel: str, sku: str = "") -> bool:
        """Drop one approval; True if there was one."""
        found = self.lots.pop((channel, sku), None) is not None
        if found:
            self._write()
        return found

    def _write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        payload = {"approved": [lot.to_json() for lot in self]}
        tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
        self._mtime = self.path.stat().st_mtime
