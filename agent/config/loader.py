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
from agent.config.layers import Layered, Where, conf_d_files, merge, substitute
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


@dataclass(frozen=True)
class Locator:
    """Where each key of a configuration was set: ``file:line:`` for a key path."""

    source: str
    where: Mapping[Loc, Where]
    files: tuple[str, ...] = ()

    def find(self, path: Loc) -> tuple[tuple[int, int], str]:
        """A sort key (file order, line) and ``file:line:`` of the nearest key set in a file."""
        for end in range(len(path), -1, -1):
            found = self.where.get(path[:end])
            if found is not None:
                source, line = found
                order = self.files.index(source) if source in self.files else 0
                return (order, line), f"{source}:{line}:"
        return (0, 1), f"{self.source}:1:" if self.where else f"{self.source}:"

    def problem(self, path: Loc, text: str) -> tuple[tuple[int, int], str]:
        """A located problem line for ``path``."""
        key, where = self.find(path)
        return key, f"{where} {format_path(path)}: {text}"

    def __call__(self, path: Loc) -> str:
        """``file:line: key.path``, as a warning about that key starts."""
        return f"{self.find(path)[1]} {format_path(path)}"


Located = tuple[tuple[int, int], str]


def _problem_lines(
    exc: ValidationError, data: Any, locator: Locator, loading: Loading, told: set[Loc]
) -> list[Located]:
    out: list[Located] = []
    for error in exc.errors():
        if error["type"] == "invalid_key":
            # pydantic mangles a non-text key in loc; the key itself is the input.
            parent_path, _, _ = locate(tuple(error["loc"][:-1]), data)
            key = error["input"]
            text = (
                f"key {key!r} is not text; quote it "
                "(YAML reads yes, no, on, off, null and numbers as values)"
            )
            order, where = locator.find((*parent_path, key))
            out.append((order, f"{where} {format_path(parent_path)}: {text}"))
            continue
        path, parent, value = locate(tuple(error["loc"]), data)
        if any(path[: len(loc)] == loc for loc in told):
            continue  # a ${VAR} left in place: its own problem says what to do
        path, text = problem_text(error, path, parent, value, loading)
        out.append(locator.problem(path, text))
    return out


# --------------------------------------------------------------------------- entry points

_DEFAULTED_SECTIONS = (
    "log", "alerts", "spool", "self_metrics", "sources", "channels", "color", "incidents",
    "notify", "input_limits",
)  # fmt: skip


def _validate(
    *,
    data: Any,
    locator: Locator,
    base_dir: Path | None,
    env: Mapping[str, str] | None,
    found: list[Located],
    told: set[Loc] | None = None,
) -> AgentConfig:
    source = locator.source
    if data is None:
        found.append(((0, 1), f"{source}:1: (top level): the file is empty; expected site, "
                              "gateway, …"))  # fmt: skip
    elif not isinstance(data, dict):
        order, where = locator.find(())
        found.append(
            (
                order,
                f"{where} (top level): should be a mapping of keys (site:, gateway:, …), "
                f"got {describe_value(data)}",
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
        found += _problem_lines(exc, data, locator, loading, told or set())
        # The models check names only once every item is valid; say it now rather than later.
        raw_names = {
            section: [item.get("name") if isinstance(item, dict) else None for item in items]
            for section in ("sources", "channels")
            if isinstance(items := data.get(section), list)
        }
        found += [locator.problem(loc, text) for loc, text in duplicate_names(raw_names)]
    if found:
        found.sort(key=lambda item: item[0])
        raise ConfigError(list(dict.fromkeys(text for _, text in found)))
    located = sorted(((locator.find(r.loc)[0], r) for r in risks(config)), key=lambda x: x[0])
    for _, risk in located:
        config.warnings.append(ConfigWarning(locator(risk.loc), risk.event, risk.detail))
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


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration and how it was read: for ``check-config``."""

    config: AgentConfig
    files: list[Path]
    """The main file, then each ``conf.d/`` file merged into it, in that order."""
    variables: dict[str, str]
    """Each ``${VAR}`` substituted: ``environment`` or ``default``."""
    where: Locator
    """``file:line: key.path`` of a key, as a warning about it starts."""


def load_config(path: Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate the YAML config at ``path`` (with its ``conf.d/`` files and ``${VAR}``
    substituted); raise ConfigError listing every problem.

    ``env`` (default ``os.environ``) supplies ``${VAR}``, secrets and ``CREDENTIALS_DIRECTORY``.
    """
    return load_config_files(path, env).config


def load_config_files(path: Path, env: Mapping[str, str] | None = None) -> LoadedConfig:
    """``load_config``, also saying which files and variables were read and where each key is."""
    environ = os.environ if env is None else env
    layered = Layered(files=[path, *conf_d_files(path)])
    names = tuple(str(f) for f in layered.files)
    problems: list[Located] = []
    told: set[Loc] = set()
    for index, file in enumerate(layered.files):
        source = str(file)
        document = read_yaml(file)
        here = Locator(source, {loc: (source, line) for loc, line in document.lines.items()},
                       names)  # fmt: skip
        problems += [
            ((index, line), f"{source}:{line}: {format_path(loc)}: {text}")
            for loc, line, text in document.problems
        ]
        data = document.data
        if index > 0 and data is None:
            continue  # an empty conf.d file (everything commented out)
        if index > 0 and not isinstance(data, dict):
            problems.append(
                here.problem((), "a conf.d file holds keys like the main file (a mapping), "
                             f"got {describe_value(data)}")
            )  # fmt: skip
            continue
        data, unset = substitute(data, environ, layered.variables)
        problems += [here.problem(loc, text) for loc, text in unset]
        told.update(loc for loc, _ in unset)
        merge(layered, data, document.lines, source)
    locator = Locator(str(path), layered.where, names)
    config = _validate(
        data=layered.data,
        locator=locator,
        base_dir=path.absolute().parent,
        env=environ,
        found=problems,
        told=told,
    )
    return LoadedConfig(config, layered.files, layered.variables, locator)


def config_from_dict(
    data: dict[str, Any], source: str = "<built-in>", env: Mapping[str, str] | None = None
) -> AgentConfig:
    """Validate an in-memory config exactly like a file (relative paths stay as given)."""
    return _validate(data=data, locator=Locator(source, {}), base_dir=None, env=env, found=[])
