"""What a second-batch report says, gathered from the gateway's own files (no InfluxDB).

- the lot samples: every finished sample in ``history.sqlite`` (table ``samples``) and the
  ones still filling in ``lots.json`` (per channel and value, the one with more readings);
- the approved lots: ``approved_lots.json``;
- the incidents: ``incidents.sqlite``, each with the lots that were in production while it
  was open.

The statistics are the alert's own (``agent.drift.compare``) on the same samples, so the report
and the ``lot_change`` alert cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.drift.approved import ApprovedLot, ApprovedLots, approved_path
from agent.drift.compare import Comparison, StoredSample, Verdict, compare
from agent.drift.lots import LOT, load_samples
from agent.errors import DriftgateError
from agent.incidents.model import Incident
from agent.incidents.store import read_incidents, read_timezone, store_path
from agent.store.history import HistoryError, history_path, read_samples

Mode = Literal["lot", "reference", "previous"]
DEFAULT_ALPHA = 0.01
MIN_REPORT = 10  # readings in each sample below which a channel is listed, not compared
COLOR_TOLERANCE = (1.0, 2.0)  # color.tolerance warn, alarm: the defaults


class ReportError(DriftgateError):
    """The report cannot be made (no such lot, nothing to compare it with)."""


@dataclass(frozen=True, slots=True)
class ChannelResult:
    """One channel's two samples and what they say."""

    channel: str
    label: str
    unit: str
    kind: str
    affects: str
    effect: float
    alpha: float
    lot: StoredSample
    other: StoredSample
    other_name: str  # "lot LOT-2411-A", "approved lot LOT-2411-A"
    result: Comparison
    verdict: Verdict

    @property
    def sku(self) -> str:
        """The SKU of a colour channel ('' otherwise)."""
        return str(self.lot.meta.get("tags", {}).get("sku", ""))

    @property
    def part(self) -> str:
        """The part of a colour channel ('' otherwise)."""
        return str(self.lot.meta.get("tags", {}).get("part", ""))

    @property
    def illuminant(self) -> str:
        """The light a ΔE00 channel is under, as its field names it (de00_f11 → f11)."""
        return str(self.lot.meta.get("field", "")).removeprefix("de00_")


@dataclass(slots=True)
class ReportData:
    """Everything the report shows."""

    lot: str
    mode: Mode
    against: str  # the other lot's name, "the approved lots", "the previous lots"
    state_dir: Path
    site: str = ""
    gateway: str = ""
    timezone: str | None = None
    tolerance: tuple[float, float] = COLOR_TOLERANCE
    channels: list[ChannelResult] = field(default_factory=list)  # everything but ΔE00
    colour: list[ChannelResult] = field(default_factory=list)  # ΔE00 per SKU, part, light
    only_lot: list[str] = field(default_factory=list)  # channels without the other sample
    incidents_lot: list[Incident] = field(default_factory=list)
    incidents_other: dict[str, list[Incident]] = field(default_factory=dict)  # by other lot

    @property
    def differing(self) -> list[ChannelResult]:
        """The channels where the lot differs by at least the effect that matters."""
        return [c for c in self.channels + self.colour if c.verdict is Verdict.DIFFERS]

    @property
    def other_lots(self) -> list[str]:
        """The lots compared against (one, or one per channel)."""
        seen: list[str] = []
        for c in self.channels + self.colour:
            if c.other.value not in seen:
                seen.append(c.other.value)
        return seen


def lot_samples(state_dir: Path) -> list[StoredSample]:
    """Every lot sample the gateway has: the history's, and lots.json's newer ones."""
    found: dict[tuple[str, str], StoredSample] = {}
    try:
        for s in read_samples(history_path(state_dir), key=LOT):
            found[(s.channel, s.value)] = s
    except HistoryError:
        pass  # no history yet: lots.json may still hold samples
    for s in load_samples(Path(state_dir) / "lots.json"):
        if s.key != LOT:
            continue
        known = found.get((s.channel, s.value))
        if known is None or s.n > known.n:
            meta = s.meta or (known.meta if known is not None else {})
            found[(s.channel, s.value)] = StoredSample(
                s.channel, s.key, s.value, s.values, s.first_ns, s.last_ns, meta
            )
    return sorted(found.values(), key=lambda s: (s.first_ns, s.channel))


def _from_approved(a: ApprovedLot) -> StoredSample:
    return StoredSample(a.channel, LOT, a.lot, a.values, a.first_ns, a.last_ns, a.meta)


def _result(
    sample: StoredSample, other: StoredSample, other_name: str, alpha: float | None
) -> ChannelResult | None:
    meta = sample.meta or other.meta
    if min(sample.n, other.n) < MIN_REPORT:
        return None
    a = float(meta.get("alpha", DEFAULT_ALPHA)) if alpha is None else alpha
    effect = float(meta.get("effect", 0.0))
    result = compare(sample.values, other.values, a)
    return ChannelResult(
        channel=sample.channel,
        label=str(meta.get("label") or sample.channel),
        unit=str(meta.get("unit", "")),
        kind=str(meta.get("kind", "")),
        affects=str(meta.get("affects", "")),
        effect=effect,
        alpha=a,
        lot=sample,
        other=other,
        other_name=other_name,
        result=result,
        verdict=result.verdict(effect, a),
    )


def gather(
    state_dir: Path,
    lot: str,
    *,
    against: str | None = None,
    reference: bool = False,
    sku: str | None = None,
    alpha: float | None = None,
    tolerance: tuple[float, float] = COLOR_TOLERANCE,
) -> ReportData:
    """The report of ``lot`` against lot ``against``, the approved lots (``reference``), or
    else each channel's previous lot."""
    state_dir = Path(state_dir)
    samples = lot_samples(state_dir)
    mine = {s.channel: s for s in samples if s.value == lot}
    if not mine:
        known = sorted({s.value for s in samples})
        raise ReportError(
            f"no readings of lot {lot!r} in {state_dir}; lots with readings: "
            + (", ".join(known) if known else "none yet (set one: driftgate context set)")
        )
    mode: Mode = "reference" if reference else "lot" if against is not None else "previous"
    others: dict[str, tuple[StoredSample, str]] = {}
    if mode == "lot":
        assert against is not None
        if not any(s.value == against for s in samples):
            raise ReportError(f"no readings of lot {against!r} in {state_dir}")
        others = {s.channel: (s, f"lot {against}") for s in samples if s.value == against}
    elif mode == "reference":
        approved = ApprovedLots(approved_path(state_dir))
        for channel in mine:
            found = approved.find(channel, sku)
            if found is None:
                mine_all = [a for a in approved if a.channel == channel]
                found = mine_all[0] if len(mine_all) == 1 else None
            if found is not None and found.lot != lot:
                others[channel] = (_from_approved(found), f"approved lot {found.lot}")
        if not others:
            raise ReportError(
                f"no approved lot for the channels of lot {lot!r}: approve one with "
                "driftgate lot approve LOT"
            )
    else:
        for channel, sample in mine.items():
            before = [s for s in samples if s.channel == channel and s.value != lot
                      and s.first_ns < sample.first_ns]  # fmt: skip
            if before:
                prev = before[-1]
                others[channel] = (prev, f"lot {prev.value}")
    names = {"lot": f"lot {against}", "reference": "the approved lots"}
    data = ReportData(
        lot=lot,
        mode=mode,
        against=names.get(mode, "the previous lots"),
        state_dir=state_dir,
        tolerance=tolerance,
    )
    for channel, sample in sorted(mine.items(), key=lambda kv: _order(kv[1])):
        pair = others.get(channel)
        res = _result(sample, pair[0], pair[1], alpha) if pair is not None else None
        if res is None:
            data.only_lot.append(str(sample.meta.get("label") or channel))
        elif res.kind == "color" and str(sample.meta.get("field", "")).startswith("de00_"):
            data.colour.append(res)
        else:
            data.channels.append(res)
    if not data.channels and not data.colour:
        raise ReportError(
            f"no channel saw both lot {lot!r} and {data.against} with enough readings to compare"
        )
    tags = next(iter(mine.values())).meta.get("tags", {})
    data.site, data.gateway = str(tags.get("site", "")), str(tags.get("gateway", ""))
    _incidents(data, state_dir)
    return data


def _order(s: StoredSample) -> tuple[str, str, str]:
    tags = s.meta.get("tags", {})
    return (str(tags.get("zone", "")), str(tags.get("line", "")), s.channel)


def _incidents(data: ReportData, state_dir: Path) -> None:
    path = store_path(state_dir)
    if not path.exists():
        return
    incidents = read_incidents(path)
    data.timezone = read_timezone(path)
    others = data.other_lots

    def of(lot: str) -> list[Incident]:
        return sorted(
            (i for i in incidents if lot in i.context.get(LOT, [])), key=lambda i: i.opened_ns
        )

    data.incidents_lot = of(data.lot)
    data.incidents_other = {other: of(other) for other in others}


def fmt_value(x: float, unit: str, digits: int | None = None) -> str:
    """A number in the channel's units, with as many decimals as it deserves."""
    if not math.isfinite(x):
        return "n/a"
    if digits is None:
        digits = 1 if abs(x) >= 10 else 2
    return f"{x:.{digits}f} {unit}".strip()
