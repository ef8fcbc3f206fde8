"""Reading the YAML file: line numbers for every key, and one ``file:line: key: reason`` per
problem, all collected before the user sees any."""

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agent.config.base import CONTEXT_KEY, ConfigWarning, Loading, Loc
from agent.config.detectors import DETECTOR_TYPES
from agent.config.models import SOURCE_TYPES, AgentConfig, duplicate_names
from agent.config.notify import TARGET_TYPES
from agent.config.risks import risks
from agent.errors import ConfigError

# --------------------------------------------------------------------------- YAML with line numbers

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class _Document:
    data: Any
    lines: dict[Loc, int]
    problems: list[tuple[Loc, int, str]]


def _parse_yaml(text: str) -> _Document:
    """Parse one YAML document, recording the line of every mapping key and sequence item."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return _Document(None, {}, [])
        lines: dict[Loc, int] = {(): node.start_mark.line + 1}
        problems: list[tuple[Loc, int, str]] = []
        _walk(loader=loader, node=node, path=(), lines=lines, problems=problems, active=set())
        return _Document(loader.construct_document(node), lines, problems)
    finally:
        loader.dispose()


def _walk(
    *,
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Loc,
    lines: dict[Loc, int],
    problems: list[tuple[Loc, int, str]],
    active: set[int],
) -> None:
    if id(node) in active:  # a recursive alias; validation will reject the value itself
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if not isinstance(key, int | str | bool):
                continue
            child = (*path, key)
            if key in seen:
                problems.append(
                    (child, line, f"duplicate key (first on line {seen[key]}); remove one of them")
                )
            else:
                seen[key] = line
                lines[child] = line
                _walk(
                    loader=loader,
                    node=value_node,
                    path=child,
                    lines=lines,
                    problems=problems,
                    active=active,
                )
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines[child] = item.start_mark.line + 1
            _walk(
                loader=loader, node=item, path=child, lines=lines, problems=problems, active=active
            )
    active.discard(id(node))


# --------------------------------------------------------------------------- error lines

_MISSING = object()
_PARSE_DETAIL = re.compile(r", unable to parse string as an? \w+")


def format_path(path: Loc) -> str:
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _where(source: str, line: int, lines: Mapping[Loc, int]) -> str:
    """``file:line:``, or just ``source:`` for in-memory data that has no lines."""
    return f"{source}:{line}:" if lines else f"{source}:"


def line_of(path: Loc, lines: Mapping[Loc, int]) -> int:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return 1


def locate(loc: Loc, data: Any) -> tuple[Loc, Any, Any]:
    """Map pydantic's loc onto the input: drop discriminator tags and union member names.

    Returns the path, the container holding its last part, and the value there (or _MISSING).
    """
    path: list[int | str] = []
    parent: Any = None
    node: Any = data
    for part in loc:
        if isinstance(node, dict):
            if part in node:
                path.append(part)
                parent, node = node, node[part]
                continue
            if part == node.get("type"):
                continue
            path.append(part)
            parent, node = node, _MISSING
            break
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            parent, node = node, node[part]
            continue
        break
    return tuple(path), parent, node


def describe_value(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, datetime):
        return repr(value.isoformat())
    return repr(value)


def problem_text(
    error: Mapping[str, Any], path: Loc, parent: Any, value: Any, loading: Loading
) -> tuple[Loc, str]:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "driftgate":
        return path, str(ctx.get("reason", error["msg"]))
    if kind == "missing":
        return path, "required key is missing"
    if kind == "extra_forbidden":
        key = path[-1] if path else "?"
        allowed = loading.fields.get(id(parent), ())
        guess = difflib.get_close_matches(str(key), allowed, n=1)
        if guess:
            return path, f"unknown key {key!r}; did you mean {guess[0]!r}?"
        if allowed:
            return path, f"unknown key {key!r}; allowed here: {', '.join(allowed)}"
        return path, f"unknown key {key!r}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        expected: tuple[str, ...]
        if "detectors" in path:
            expected = DETECTOR_TYPES
        elif "targets" in path:
            expected = TARGET_TYPES
        else:
            expected = SOURCE_TYPES
        choices = ", ".join(expected)
        if kind == "union_tag_not_found":
            return (*path, "type"), f"required key is missing; one of: {choices}"
        return (*path, "type"), f"unknown type {ctx.get('tag')!r}; one of: {choices}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"should be a mapping of keys, got {describe_value(value)}"
    if kind == "finite_number":
        return path, f"{describe_value(value)} is not a number: give a finite value"
    if kind == "list_type":
        return path, f"should be a list (items starting with '- '), got {describe_value(value)}"
    message = _PARSE_DETAIL.sub("", str(error["msg"]).removeprefix("Value error, "))
    if value is not _MISSING:
        message += f", got {describe_value(value)}"
    return path, message


def _problem_lines(
    exc: ValidationError, source: str, data: Any, lines: Mapping[Loc, int], loading: Loading
) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for error in exc.errors():
        if error["type"] == "invalid_key":
            # pydantic mangles a non-text key in loc; the key itself is the input.
            parent_path, _, _ = locate(tuple(error["loc"][:-1]), data)
            key = error["input"]
            line = lines.get((*parent_path, key), line_of(parent_path, lines))
            text = (
                f"key {key!r} is not text; quote it "
                "(YAML reads yes, no, on, off, null and numbers as values)"
            )
            out.append((line, f"{_where(source, line, lines)} {format_path(parent_path)}: {text}"))
            continue
        path, parent, value = locate(tuple(error["loc"]), data)
        path, text = problem_text(error, path, parent, value, loading)
        line = line_of(path, lines)
        out.append((line, f"{_where(source, line, lines)} {format_path(path)}: {text}"))
    return out


# --------------------------------------------------------------------------- entry points

_DEFAULTED_SECTIONS = (
    "log", "alerts", "spool", "self_metrics", "sources", "channels", "color", "incidents",
    "notify", "input_limits",
)  # fmt: skip


def _validate(
    *,
    data: Any,
    source: str,
    lines: Mapping[Loc, int],
    base_dir: Path | None,
    env: Mapping[str, str] | None,
    found: list[tuple[int, str]],
) -> AgentConfig:
    if data is None:
        found.append((1, f"{source}:1: (top level): the file is empty; expected site, gateway, …"))
    elif not isinstance(data, dict):
        line = lines.get((), 1)
        found.append(
            (
                line,
                f"{_where(source, line, lines)} (top level): should be a mapping of keys "
                f"(site:, gateway:, …), got {describe_value(data)}",
            )
        )
    if not isinstance(data, dict):
        raise ConfigError([text for _, text in found])
    # A section left empty ("spool:" with every key commented out) means its defaults.
    data = {k: v for k, v in data.items() if not (k in _DEFAULTED_SECTIONS and v is None)}
    loading = Loading(base_dir=base_dir, env=os.environ if env is None else env)
    try:
        config = AgentConfig.model_validate(data, context={CONTEXT_KEY: loading})
    except ValidationError as exc:
        found += _problem_lines(exc, source, data, lines, loading)
        # The models check names only once every item is valid; say it now rather than later.
        raw_names = {
            section: [item.get("name") if isinstance(item, dict) else None for item in items]
            for section in ("sources", "channels")
            if isinstance(items := data.get(section), list)
        }
        for loc, text in duplicate_names(raw_names):
            line = line_of(loc, lines)
            found.append((line, f"{_where(source, line, lines)} {format_path(loc)}: {text}"))
    if found:
        found.sort(key=lambda item: item[0])
        raise ConfigError(list(dict.fromkeys(text for _, text in found)))
    located = sorted(((line_of(r.loc, lines), r) for r in risks(config)), key=lambda x: x[0])
    for line, risk in located:
        where = f"{_where(source, line, lines)} {format_path(risk.loc)}"
        config.warnings.append(ConfigWarning(where, risk.event, risk.detail))
    return config


def read_yaml(path: Path) -> _Document:
    """Read and parse a YAML file with line numbers; ConfigError naming the file otherwise."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text ({exc.reason})"]) from None
    try:
        return _parse_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1"
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError([f"{source}:{where}: YAML syntax error: {reason}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}:1: YAML syntax error: {exc}"]) from None


def load_config(path: Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate the YAML config at ``path``; raise ConfigError listing every problem.

    ``env`` (default ``os.environ``) supplies secrets and ``CREDENTIALS_DIRECTORY``.
    """
    source = str(path)
    document = read_yaml(path)
    found = [
        (line, f"{source}:{line}: {format_path(loc)}: {text}")
        for loc, line, text in document.problems
    ]
    return _validate(
        data=document.data,
        source=source,
        lines=document.lines,
        base_dir=path.absolute().parent,
        env=env,
        found=found,
    )


def config_from_dict(
    data: dict[str, Any], source: str = "<built-in>", env: Mapping[str, str] | None = None
) -> AgentConfig:
    """Validate an in-memory config exactly like a file (relative paths stay as given)."""
    return _validate(data=data, source=source, lines={}, base_dir=None, env=env, found=[])
