"""``replay --plot``: one panel per channel with signal, baselines, thresholds and alert spans."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from agent.drift.alerts import CLEARED, AlertEvent, Level
from agent.drift.baselines import Baseline, BaselineStore
from agent.words import fmt

if TYPE_CHECKING:
    pass

from agent.replay.inputs import ReplayError
from agent.replay.run import ReplayResult

SEVERITY_COLORS = {"warn": "#f5a623", "alarm": "#d0021b"}

NEEDS_MATPLOTLIB = (
    "--plot needs matplotlib: pip install 'driftgate[plot]' (or pip install matplotlib)"
)


def matplotlib_missing() -> bool:
    """Whether --plot must be refused: matplotlib cannot be found (looked up, not imported)."""
    try:
        return importlib.util.find_spec("matplotlib") is None
    except ValueError:  # a module in sys.modules without a spec: broken, as good as missing
        return True


@runtime_checkable
class DrawsLevels(Protocol):
    """A detector that can say where its thresholds lie on the signal's axis (for plots)."""

    name: str

    def levels(self) -> Mapping[str, float]:
        """Named levels in the channel's units, e.g. {"warn +": 53.1, "alarm +": 56.1}."""
        ...


def alert_spans(events: Sequence[AlertEvent], end_ns: int) -> list[tuple[int, int, str]]:
    """A channel's (start, end, severity) spans: the worst level any of its alerts is at,
    from raised to cleared; an alert still active runs to ``end_ns``."""
    spans: list[tuple[int, int, str]] = []
    active: dict[str, Level] = {}
    level, start = Level.OK, 0
    for event in sorted(events, key=lambda e: e.ts_ns):
        if event.transition == CLEARED or event.level == Level.OK:
            active.pop(event.detector, None)
        else:
            active[event.detector] = event.level
        now = max(active.values(), default=Level.OK)
        if now != level:
            if level != Level.OK:
                spans.append((start, event.ts_ns, level.label))
            level, start = now, event.ts_ns
    if level != Level.OK:
        spans.append((start, end_ns, level.label))
    return spans


def _channel_baselines(store: BaselineStore, name: str) -> list[Baseline]:
    return [b for key, b in store.items() if key == name or key.startswith(name + "/")]


def plot_replay(result: ReplayResult, path: Path, title: str = "") -> None:
    """One panel per channel: signal, baseline, thresholds (where detectors tell), alert spans."""
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:  # found by matplotlib_missing() but broken
        raise ReplayError(NEEDS_MATPLOTLIB) from None
    names = [n for n, tr in result.traces.items() if tr.t]
    if not names:
        raise ReplayError("nothing to plot: no readings")
    fig, axes = plt.subplots(
        len(names), 1, figsize=(15, 2.8 * len(names) + 0.6), sharex=True, squeeze=False
    )
    for ax, name in zip(axes[:, 0], names, strict=True):
        tr = result.traces[name]
        channel = result.channels[name]
        t = np.asarray(tr.t, dtype="datetime64[ns]")
        if tr.per_bucket > 1:
            ax.fill_between(t, tr.lo, tr.hi, color="#4a90d9", alpha=0.25, lw=0, label="min–max")
        ax.plot(t, tr.mean, color="#1f4e79", lw=0.8, label="signal")
        end_ns = tr.t[-1]
        for b in _channel_baselines(result.baselines, name):
            start = max(b.start_ns, tr.t[0])
            span = np.asarray([start, end_ns], dtype="datetime64[ns]")
            ax.plot(span, [b.mean, b.mean], color="#333333", lw=1.2, ls="--",
                    label=f"baseline {fmt(b.mean, channel.unit)} ({b.describe()})")  # fmt: skip
        drawn_levels = 0
        drift = result.engine.drift(channel)
        detectors = drift.detectors if drift is not None else []
        for detector in detectors:
            if not isinstance(detector, DrawsLevels):
                continue
            for label, level in detector.levels().items():
                color = SEVERITY_COLORS["alarm" if "alarm" in label else "warn"]
                ax.axhline(level, color=color, lw=0.9, ls=":", label=f"{detector.name} {label}")
                drawn_levels += 1
        mine = [e for e in result.events if e.channel.name == name]
        low, high = min(tr.lo), max(tr.hi)
        pad = max(high - low, 1e-9)
        # Baselines on the signal's scale only (a spread detector quotes a std, not a level).
        quoted = [e for e in mine if low - pad <= e.baseline <= high + pad]
        if quoted:
            ax.plot(
                np.asarray([e.ts_ns for e in quoted], dtype="datetime64[ns]"),
                [e.baseline for e in quoted],
                ls="none", marker="_", ms=14, mew=2, color="#333333",
                label="baseline quoted by alerts",
            )  # fmt: skip
        seen: set[str] = set()
        for start, stop, severity in alert_spans(mine, end_ns):
            span_label = f"{severity} span" if severity not in seen else None
            seen.add(severity)
            ax.axvspan(
                np.datetime64(start, "ns"), np.datetime64(stop, "ns"),
                color=SEVERITY_COLORS[severity], alpha=0.18, lw=0, label=span_label,
            )  # fmt: skip
        unit = f" ({channel.unit})" if channel.unit else ""
        ax.set_title(f"{channel.label}{unit} — {len(mine)} events", loc="left", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False)
        if not drawn_levels and detectors:
            ax.text(0.995, 0.03, "thresholds: detectors do not expose them", ha="right",
                    va="bottom", transform=ax.transAxes, fontsize=7, color="#777777")  # fmt: skip
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    formatter = mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
    axes[-1, 0].xaxis.set_major_locator(locator)
    axes[-1, 0].xaxis.set_major_formatter(formatter)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
