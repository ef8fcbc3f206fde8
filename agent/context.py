"""Production context (leather lot, operator, shift, order) per line or zone.

Set over MQTT (e.g. by the MES) or with `driftgate context set`; every reading afterwards
carries the context as tags, so an engineer can compare the second material batch with the
first. Kept in state_dir/context.json, so it survives a restart; the running agent notices a
change the CLI wrote within a second.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from agent.errors import DriftgateError

CONTEXT_KEYS = ("lot", "operator", "shift", "order")
"""The documented context tags; other tag-safe names are accepted too."""

PER_READING_TAGS = frozenset({*CONTEXT_KEYS, "sample"})
"""Tags that change along one channel's life (production context, a sample id): they are put
on each reading's point but never make a channel of their own."""

SCOPES = ("line", "zone")
"""A context applies to every channel on a line, or in a zone; a line's wins over its zone's."""

RESERVED = frozenset({"site", "gateway", "zone", "line", "station", "sensor", "channel"})
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class ContextError(DriftgateError):
    """A context update was refused (bad scope, reserved or malformed tag name)."""


def validate_update(scope: str, name: str, tags: Mapping[str, str | None]) -> None:
    """Raise ContextError unless this update can be applied as tags."""
    if scope not in SCOPES:
        raise ContextError(f"context scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    if not name or len(name) > 128:
        raise ContextError(f"a {scope} name must be 1 to 128 characters")
    for key, value in tags.items():
        if key in RESERVED:
            raise ContextError(f"{key!r} is a location tag and cannot be set as context")
        if not _KEY.match(key):
            raise ContextError(f"{key!r} is not a tag name: use letters, digits and _")
        if value is not None and len(value) > 256:
            raise ContextError(f"the value of {key!r} is longer than 256 characters")


class ContextStore:
    """Context tags per scope (``line:L2``, ``zone:edge_paint``), persisted as JSON."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.scopes: dict[str, dict[str, str]] = {}
        self.version = 0  # bumped on every change, so caches of tagged prefixes know
        self.dirty = False  # changed in memory, not written yet
        self.saved_version = 0  # the version the file holds (or held when last written)
        self._mtime: float | None = None
        self.reload()

    def reload(self) -> bool:
        """Read the file if it changed since last read; True when the context changed."""
        if self.path is None or self.dirty or not self.path.exists():
            return False  # unsaved changes win until they are written
        mtime = self.path.stat().st_mtime
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ContextError(f"cannot read the context file {self.path}: {exc}") from None
        scopes = {str(k): {str(a): str(b) for a, b in v.items()} for k, v in raw.items()}
        changed = scopes != self.scopes
        self.scopes = scopes
        if changed:
            self.version += 1
        self.saved_version = self.version  # read from the file: it is there
        return changed

    def set(
        self, scope: str, name: str, tags: Mapping[str, str | None], *, save: bool = True
    ) -> bool:
        """Merge tags into a scope's context (None or "" removes a tag); True if it changed.

        ``save=False`` leaves the file to ``save()`` (the running agent writes it from a
        thread, not from the MQTT callback that runs on the event loop).
        """
        validate_update(scope, name, tags)
        key = f"{scope}:{name}"
        current = dict(self.scopes.get(key, {}))
        for tag, value in tags.items():
            if value is None or value == "":
                current.pop(tag, None)
            else:
                current[tag] = value
        if current == self.scopes.get(key, {}):
            return False
        if current:
            self.scopes[key] = current
        else:
            self.scopes.pop(key, None)
        self.version += 1
        self.dirty = True
        if save:
            self.save()
        return True

    def save(self) -> None:
        """Write the file atomically."""
        version = self.version
        self.dirty = False
        if self.path is None:
            self.saved_version = version
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.scopes, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)
        self._mtime = self.path.stat().st_mtime
        self.saved_version = version

    def for_tags(self, tags: Mapping[str, str]) -> dict[str, str]:
        """The context for a channel with these location tags (zone's, then line's on top)."""
        out: dict[str, str] = {}
        for scope in ("zone", "line"):
            name = tags.get(scope)
            if name:
                out.update(self.scopes.get(f"{scope}:{name}", {}))
        return out
