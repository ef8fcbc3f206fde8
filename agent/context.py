"""Production context (leather lot, operator, shift, order) per line or zone.

Set over MQTT (e.g. by the MES) or with `driftgate context set`; every reading afterwards
carries the context as tags, so an engineer can compare the second material batch with the
first. Kept in state_dir/context.json, so it survives a restart; the running agent notices a
change the CLI wrote within a second.

Every context tag lands on every reading of its line or zone, so a context InfluxDB refuses
would have every one of those readings refused with it (a 2,000-tag message once did, until
and after a restart). What can be set is therefore bounded up front (``LIMITS``), and a file
written by an older version is checked the same way when it is read: the valid part is kept
and what was dropped is logged.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.errors import DriftgateError
from agent.logs import get_logger

log = get_logger("driftgate.context")

CONTEXT_KEYS = ("lot", "operator", "shift", "order")
"""The documented context tags; other tag-safe names are accepted too."""

PER_READING_TAGS = frozenset({*CONTEXT_KEYS, "sample"})
"""Tags that change along one channel's life (production context, a sample id): they are put
on each reading's point but never make a channel of their own."""

SCOPES = ("line", "zone")
"""A context applies to every channel on a line, or in a zone; a line's wins over its zone's."""

RESERVED = frozenset({"site", "gateway", "zone", "line", "station", "sensor", "channel"})
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True, slots=True)
class ContextLimits:
    """How much context one gateway takes; InfluxDB 1.x refuses a point whose measurement and
    tags exceed 64 KiB, so a line's and its zone's context together stay far below that."""

    tags_per_scope: int = 16
    scopes: int = 256  # lines and zones with a context
    name_chars: int = 128  # a line's or zone's name
    value_chars: int = 256  # a tag value (at most 1 KiB of UTF-8)
    file_bytes: int = 4 * 1024**2  # context.json beyond this is not read


LIMITS: Final = ContextLimits()
"""The caps applied to every update and to the file when it is read."""

_DROPPED_SHOWN = 10  # entries of a dropped list named in the log line


class ContextError(DriftgateError):
    """A context update was refused (bad scope, reserved or malformed tag name, over a cap)."""


def _shown(text: str) -> str:
    """A user's text in an error: bounded, so a hostile 100 KB key does not fill the log."""
    return repr(text[:40] + ("…" if len(text) > 40 else ""))


_UNSAFE: Final = {  # Unicode categories a tag value cannot hold, in words
    "Cc": "the control character",
    "Zl": "the line separator",
    "Zp": "the paragraph separator",
    "Cs": "the lone surrogate (not UTF-8)",
}


def _unsafe(text: str) -> str | None:
    """Why ``text`` cannot be a tag value, or None. Control characters (newlines among them)
    cannot be carried faithfully by line protocol; lone surrogates cannot be UTF-8 at all."""
    for char in text:
        what = _UNSAFE.get(unicodedata.category(char))
        if what is not None:
            return f"it holds {what} U+{ord(char):04X}"
    return None


def check_scope(scope: str, name: str) -> None:
    """Raise ContextError unless ``scope``/``name`` names a line or zone."""
    if scope not in SCOPES:
        raise ContextError(f"context scope must be one of {', '.join(SCOPES)}, not {_shown(scope)}")
    if not name or len(name) > LIMITS.name_chars:
        raise ContextError(f"a {scope} name must be 1 to {LIMITS.name_chars} characters")
    problem = _unsafe(name)
    if problem:
        raise ContextError(f"the {scope} name {_shown(name)} cannot be a tag: {problem}")


def check_tag(key: str, value: str | None) -> None:
    """Raise ContextError unless ``key=value`` can be a tag on every reading (None removes)."""
    if key in RESERVED:
        raise ContextError(f"{key!r} is a location tag and cannot be set as context")
    if not _KEY.match(key):
        raise ContextError(
            f"{_shown(key)} is not a tag name: use letters, digits and _ (at most 64)"
        )
    if value is None:
        return
    if len(value) > LIMITS.value_chars:
        raise ContextError(
            f"the value of {key!r} is {len(value)} characters long: at most {LIMITS.value_chars}"
        )
    problem = _unsafe(value)
    if problem:
        raise ContextError(f"the value of {key!r} cannot be a tag: {problem}")


def validate_update(scope: str, name: str, tags: Mapping[str, str | None]) -> None:
    """Raise ContextError unless this update can be applied as tags."""
    check_scope(scope, name)
    if len(tags) > LIMITS.tags_per_scope:
        raise ContextError(
            f"{len(tags)} tags in one update: a {scope} carries at most {LIMITS.tags_per_scope}"
        )
    for key, value in tags.items():
        check_tag(key, value)


def _ordered(tags: Mapping[str, object]) -> list[str]:
    """The documented keys first, then the rest by name: what is kept when a file is over
    the cap."""
    rank = {key: n for n, key in enumerate(CONTEXT_KEYS)}
    return sorted(tags, key=lambda k: (rank.get(k, len(rank)), k))


def clean(raw: Any) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The valid part of a context file's content, and what was dropped (one entry each)."""
    if not isinstance(raw, dict):
        return {}, [f"the file holds {type(raw).__name__}, not a JSON object of scopes"]
    scopes: dict[str, dict[str, str]] = {}
    dropped: list[str] = []
    for where in sorted(raw, key=str):
        tags = raw[where]
        scope, _, name = str(where).partition(":")
        try:
            check_scope(scope, name)
            if not isinstance(tags, dict):
                raise ContextError(f"holds {type(tags).__name__}, not tags")
        except ContextError as exc:
            dropped.append(f"{_shown(str(where))}: {exc}")
            continue
        if len(scopes) >= LIMITS.scopes:
            dropped.append(f"{_shown(str(where))}: more than {LIMITS.scopes} lines and zones")
            continue
        kept: dict[str, str] = {}
        for key in _ordered(tags):
            value = tags[key]
            try:
                if not isinstance(value, str) or not value:
                    raise ContextError(f"the value of {_shown(key)} is not text")
                check_tag(key, value)
                if len(kept) >= LIMITS.tags_per_scope:
                    raise ContextError(
                        f"{_shown(key)} is past the cap of {LIMITS.tags_per_scope} tags"
                    )
            except ContextError as exc:
                dropped.append(f"{_shown(where)}: {exc}")
                continue
            kept[key] = value
        if kept:
            scopes[where] = kept
    return scopes, dropped


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
            if self.path.stat().st_size > LIMITS.file_bytes:
                raise ValueError(f"larger than {LIMITS.file_bytes // 1024**2} MiB")
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise ContextError(f"cannot read the context file {self.path}: {exc}") from None
        scopes, dropped = clean(raw)
        if dropped:
            # Written by an older version, or by hand: one bad tag would have every reading of
            # its line refused by InfluxDB. Keep the rest; the next save writes the clean file.
            log.warning(
                "context file entries dropped: they cannot be tags",
                path=str(self.path),
                dropped=len(dropped),
                first=dropped[:_DROPPED_SHOWN],
                kept_scopes=len(scopes),
            )
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
        if len(current) > LIMITS.tags_per_scope:
            raise ContextError(
                f"{scope} {name} would carry {len(current)} context tags: at most "
                f"{LIMITS.tags_per_scope}; remove one first (a null value removes a tag)"
            )
        if key not in self.scopes and current and len(self.scopes) >= LIMITS.scopes:
            raise ContextError(
                f"{LIMITS.scopes} lines and zones have a context already: clear one first "
                "(an object of nulls removes its tags)"
            )
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
