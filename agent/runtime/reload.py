"""What a configuration reload (SIGHUP, ``systemctl reload driftgate``) changes, decided before
anything is touched.

A reload does for the changed parts what a restart would do, and leaves the rest running with
its state: the spool and the readings it buffers, the detectors of unchanged channels, open
incidents, the MQTT session. Sections whose change would mean rebuilding what everything else
hangs on (the spool, the MQTT link, the tags on every point) are not applied live: the running
value stays and a warning says they need a restart. A section this module does not know (one
added later) counts as needing a restart: never applied half.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.config.models import AgentConfig, MqttSourceConfig

ANSWER_FILE = "reload.json"
"""The agent's answer to each reload, in the unit's runtime directory (``RuntimeDirectory=``,
``$RUNTIME_DIRECTORY``): ``driftgate reload`` (the unit's ``ExecReload=``) waits for it, so
``systemctl reload`` returns once the file was applied or refused, with the verdict."""

LIVE_SECTIONS = frozenset({"log", "sources", "channels", "influx", "notify", "self_metrics"})
"""Sections a reload applies while the agent runs (see ``docs/architecture.md``)."""


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """The changes between the running configuration and the file, and what runs after."""

    config: AgentConfig
    """What runs after the reload: the file's settings, except where a change needs a restart
    (those keep their running values)."""
    sources_added: tuple[str, ...] = ()
    sources_removed: tuple[str, ...] = ()
    sources_changed: tuple[str, ...] = ()
    channels_changed: tuple[str, ...] = ()  # configs added, removed or changed
    influx: bool = False
    notify: bool = False
    log: bool = False
    self_metrics: bool = False
    needs_restart: tuple[str, ...] = ()  # config keys whose change was not applied

    @property
    def applied(self) -> list[str]:
        """The changes applied live, as config keys (for the log line)."""
        out = [f"sources.{n} (added)" for n in self.sources_added]
        out += [f"sources.{n} (removed)" for n in self.sources_removed]
        out += [f"sources.{n}" for n in self.sources_changed]
        out += [f"channels.{n}" for n in self.channels_changed]
        out += [name for name in ("influx", "notify", "log", "self_metrics") if getattr(self, name)]
        return out

    @property
    def empty(self) -> bool:
        """Nothing to apply and nothing waiting for a restart."""
        return not self.applied and not self.needs_restart


def needs_link(source: object) -> bool:
    """Whether a source rides on the shared MQTT link, whose subscriptions are made at connect:
    adding, removing or changing one needs a restart."""
    return isinstance(source, MqttSourceConfig)


def _by_name(items: Iterable[Any]) -> dict[str, Any]:
    return {item.name: item for item in items}


def plan_reload(running: AgentConfig, new: AgentConfig) -> ReloadPlan:
    """Compare the running configuration with a freshly loaded one."""
    keep: dict[str, Any] = {}
    restart: list[str] = []
    for name in type(running).model_fields:
        if name in {"sources", "channels"}:
            continue
        if getattr(running, name) != getattr(new, name) and name not in LIVE_SECTIONS:
            restart.append(name)
            keep[name] = getattr(running, name)

    old_sources, new_sources = _by_name(running.sources), _by_name(new.sources)
    added: list[str] = []
    removed: list[str] = []
    changed: list[str] = []
    kept_sources = []  # the sources that run after the reload, in the file's order
    for name, source in new_sources.items():
        old = old_sources.get(name)
        if old is not None and old == source:
            kept_sources.append(source)
            continue
        if needs_link(source) or (old is not None and needs_link(old)):
            restart.append(f"sources.{name}")
            if old is not None:
                kept_sources.append(old)
            continue
        kept_sources.append(source)
        (added if old is None else changed).append(name)
    for name, old in old_sources.items():
        if name in new_sources:
            continue
        if needs_link(old):
            restart.append(f"sources.{name}")
            kept_sources.append(old)
        else:
            removed.append(name)
    keep["sources"] = kept_sources

    old_channels, new_channels = _by_name(running.channels), _by_name(new.channels)
    channels = sorted(
        name
        for name in old_channels.keys() | new_channels.keys()
        if old_channels.get(name) != new_channels.get(name)
    )
    config = new.model_copy(update=keep)
    return ReloadPlan(
        config=config,
        sources_added=tuple(added),
        sources_removed=tuple(removed),
        sources_changed=tuple(changed),
        channels_changed=tuple(channels),
        influx=running.influx != new.influx,
        notify=running.notify != new.notify,
        log=running.log != new.log,
        self_metrics=running.self_metrics != new.self_metrics,
        needs_restart=tuple(restart),
    )


@dataclass(frozen=True, slots=True)
class ReloadAnswer:
    """How one reload went, as the agent writes it for ``driftgate reload``."""

    pid: int  # the agent's process: an answer of an earlier process is not this one's
    generation: int  # reloads asked of this process so far
    accepted: bool
    problems: list[str] = field(default_factory=list)  # file:line: key: reason
    applied: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)


def answer_path(env: Mapping[str, str] | None = None) -> Path | None:
    """Where answers go: the unit's runtime directory; None outside systemd."""
    runtime = (os.environ if env is None else env).get("RUNTIME_DIRECTORY", "")
    # systemd may list several directories separated by ':'; the first is ours.
    first = runtime.split(":")[0]
    return Path(first) / ANSWER_FILE if first else None


def write_answer(path: Path, answer: ReloadAnswer) -> None:
    """Replace the answer file atomically (a reader never sees half of it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(answer)) + "\n")
    os.replace(tmp, path)


def read_answer(path: Path) -> ReloadAnswer | None:
    """The last answer, or None if there is none (yet) or it cannot be read."""
    try:
        data = json.loads(path.read_text())
        return ReloadAnswer(**data)
    except (OSError, ValueError, TypeError):
        return None
