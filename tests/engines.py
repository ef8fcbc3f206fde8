"""Watching test channels with the real drift engine, from plain detector mappings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent.config.detectors import BaselineSpecConfig, parse_detectors
from agent.config.models import AlertsConfig
from agent.drift.baselines import BaselineStore
from agent.drift.engine import DriftEngine
from agent.reading import Channel


def watch(
    channel: Channel,
    specs: Sequence[Mapping[str, Any]] | None = None,
    store: BaselineStore | None = None,
    *,
    baseline: Mapping[str, Any] | None = None,
    alerts: AlertsConfig | None = None,
    engine: DriftEngine | None = None,
) -> DriftEngine:
    """Attach ``specs`` (None: the kind's defaults) to ``channel``; the engine that watches it."""
    if engine is None:
        engine = DriftEngine(store if store is not None else BaselineStore(None), alerts)
    engine.attach(
        channel,
        detectors=parse_detectors(specs) if specs is not None else None,
        baseline=BaselineSpecConfig.model_validate(baseline) if baseline is not None else None,
    )
    return engine
