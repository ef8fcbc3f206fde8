"""YAML documents validated like the config but kept in files of their own: device profiles,
Modbus register maps, tower-light command profiles.

Each is a pydantic ``Section`` in a ``NAME.yaml`` whose ``name:`` must match the file name, and
each problem is reported as the config's are (``file:line: key.path: reason``, "did you mean"
for unknown keys). One loader for all three, so a fix to the messages reaches every kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from agent.config.base import CONTEXT_KEY, Loading, Loc, Section
from agent.config.loader import (
    describe_value,
    format_path,
    line_of,
    locate,
    problem_text,
    read_yaml,
)
from agent.errors import ConfigError

__all__ = ["is_path", "load_document", "located_problems", "validate_document"]

M = TypeVar("M", bound=Section)


def is_path(name_or_path: str | Path) -> bool:
    """Whether a profile reference is a file (a Path, a slash, a .yaml suffix), not a name."""
    text = str(name_or_path)
    return isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml"))


def located_problems(
    exc: ValidationError,
    source: str,
    data: Any,
    lines: dict[Loc, int],
    model: type[Section],
    union_types: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """``file:line: key.path: reason`` for each error of a ``model`` document, sorted by line;
    unknown keys get a "did you mean", a missing or unknown ``type`` of a union key (named in
    ``union_types``) lists the types there are."""
    loading = Loading(base_dir=None, env={})
    # Re-run once with the loading context so that unknown keys get "did you mean".
    try:
        model.model_validate(data, context={CONTEXT_KEY: loading})
    except ValidationError as again:
        exc = again
    out: list[tuple[int, str]] = []
    for error in exc.errors():
        path, parent, value = locate(tuple(error["loc"]), data)
        kind = error["type"]
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            choices = ", ".join((union_types or {}).get(str(path[0]) if path else "", ()))
            if kind == "union_tag_not_found":
                path, text = (*path, "type"), f"required key is missing; one of: {choices}"
            else:
                tag = (error.get("ctx") or {}).get("tag")
                path, text = (*path, "type"), f"unknown type {tag!r}; one of: {choices}"
        elif kind == "invalid_key":
            text = f"key {error['input']!r} is not text; quote it"
        else:
            path, text = problem_text(error, path, parent, value, loading)
        line = line_of(path, lines)
        where = f"{source}:{line}:" if lines else f"{source}:"
        out.append((line, f"{where} {format_path(path)}: {text}"))
    out.sort(key=lambda item: item[0])
    return list(dict.fromkeys(text for _, text in out))


def validate_document(
    data: Any,
    source: str,
    lines: dict[Loc, int],
    model: type[M],
    keys: str,
    union_types: Mapping[str, Sequence[str]] | None = None,
) -> M:
    """``data`` as a ``model``; ConfigError lists every problem. ``keys`` names the document's
    first keys for the message when it is not a mapping at all (``name:, framing:``)."""
    if not isinstance(data, dict):
        line = lines.get((), 1)
        got = "nothing" if data is None else describe_value(data)
        raise ConfigError(
            [f"{source}:{line}: (top level): should be a mapping of keys ({keys}, …), got {got}"]
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(located_problems(exc, source, data, lines, model, union_types)) from None


def load_document(path: Path, validate: Callable[[Any, str, dict[Loc, int]], M]) -> M:
    """Read ``path`` and ``validate`` it; its ``name:`` must match the file name."""
    source = str(path)
    document = read_yaml(path)
    if document.problems:
        raise ConfigError(
            [f"{source}:{line}: {format_path(loc)}: {why}" for loc, line, why in document.problems]
        )
    found = validate(document.data, source, document.lines)
    name = getattr(found, "name", None)
    if name != path.stem:
        line = document.lines.get(("name",), 1)
        raise ConfigError(
            [f"{source}:{line}: name: {name!r} must match the file name {path.stem!r}"]
        )
    return found
