"""One configuration from several files, for fleets: ``${VAR}`` substitution and ``conf.d/``.

- ``${VAR}`` in a value is replaced by the environment variable ``VAR``; ``${VAR:-text}`` by
  ``text`` when ``VAR`` is unset or empty; ``$${`` is a literal ``${``. Only values are
  substituted (never keys), as text: ``port: ${MQTT_PORT:-1883}`` is then read as the number
  the key expects. An unset variable without a default is a problem located at its key.
- ``conf.d/*.yaml`` beside the main file are read after it, in name order (``10-site.yaml``
  before ``50-sources.yaml``): a mapping merges key by key into what was read before, anything
  else (a list, a number, a text) replaces it whole. So a gateway's ``conf.d/50-sources.yaml``
  with ``sources:`` gives that gateway's whole list of sources, and one with ``influx:
  {url: …}`` changes only the URL. A key left empty (``spool:`` with every key commented out)
  changes nothing.

Every value keeps the file and line that set it, so a problem names the file to edit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.base import Loc

CONF_D = "conf.d"
"""The directory beside the main file whose ``*.yaml`` files are merged in after it."""

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}?")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.S)

Where = tuple[str, int]
"""A value's origin: the file and the line."""


@dataclass
class Layered:
    """Data merged from several files, with the origin of every key."""

    data: Any = None
    where: dict[Loc, Where] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    """Each substituted variable: ``environment`` or ``default``."""
    problems: list[tuple[Loc, str]] = field(default_factory=list)


def conf_d_files(main: Path) -> list[Path]:
    """The ``conf.d/*.yaml`` (and ``*.yml``) files beside ``main``, in name order."""
    directory = main.parent / CONF_D
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.suffix in (".yaml", ".yml")]
    return sorted((p for p in found if not p.name.startswith(".")), key=lambda p: p.name)


def substitute(
    data: Any, env: Mapping[str, str], variables: dict[str, str]
) -> tuple[Any, list[tuple[Loc, str]]]:
    """``data`` with ``${VAR}`` replaced in every text value; problems by key path."""
    problems: list[tuple[Loc, str]] = []

    def walk(node: Any, path: Loc) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, (*path, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*path, i)) for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            return _expand(node, path, env, variables, problems)
        return node

    return walk(data, ()), problems


def _expand(
    text: str,
    path: Loc,
    env: Mapping[str, str],
    variables: dict[str, str],
    problems: list[tuple[Loc, str]],
) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        inner = match.group(1)
        ref = _VARIABLE.fullmatch(inner) if match.group(0).endswith("}") else None
        if ref is None:
            problems.append(
                (
                    path,
                    f"{match.group(0)!r} is not a variable: write ${{NAME}} or "
                    "${NAME:-default} (letters, digits, _), or $${ for a literal ${",
                )
            )
            return match.group(0)
        name, default = ref.group(1), ref.group(2)
        value = env.get(name)
        if default is not None and not value:
            variables.setdefault(name, "default")
            return default
        if value is None:
            problems.append(
                (
                    path,
                    f"${{{name}}} is not set: set the environment variable {name} (for the "
                    f"service: Environment= or EnvironmentFile= in a drop-in) or give a "
                    f"default, ${{{name}:-…}}",
                )
            )
            return match.group(0)
        variables.setdefault(name, "environment")
        return value

    return _REFERENCE.sub(replace, text)


def _under(where: dict[Loc, Where], path: Loc) -> Iterator[Loc]:
    n = len(path)
    return (loc for loc in list(where) if len(loc) > n and loc[:n] == path)


def merge(base: Layered, data: Any, lines: Mapping[Loc, int], source: str) -> None:
    """Merge one more file's data into ``base``: mappings key by key, the rest replaced."""
    if base.data is None:
        base.data = data
        base.where.update({loc: (source, line) for loc, line in lines.items()})
        return

    def into(target: dict[Any, Any], layer: dict[Any, Any], path: Loc) -> None:
        for key, value in layer.items():
            child = (*path, key)
            old = target.get(key)
            if isinstance(old, dict) and value is None:
                continue  # "spool:" with every key commented out changes nothing
            if isinstance(old, dict) and isinstance(value, dict):
                if child in lines:
                    base.where[child] = (source, lines[child])
                into(old, value, child)
                continue
            for loc in _under(base.where, child):
                del base.where[loc]
            target[key] = value
            base.where.update(
                {loc: (source, line) for loc, line in lines.items() if loc[: len(child)] == child}
            )

    if isinstance(base.data, dict) and isinstance(data, dict):
        into(base.data, data, ())
