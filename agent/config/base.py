"""What every config model shares: strict sections, located problems, the value types.

Validation of one file carries a ``Loading`` context (where relative paths start, the
environment, secrets read so far); validators raise ``reason(...)`` so that the text reaches
the user verbatim, prefixed with the file, line and key by ``agent.config.loader``.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from agent.config.units import parse_duration, parse_size

Loc = tuple[int | str, ...]


@dataclass
class Loading:
    """What validation needs beyond the data: where relative paths start, the environment."""

    base_dir: Path | None
    env: Mapping[str, str]
    secrets: dict[Path, str] = field(default_factory=dict)
    fields: dict[int, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """A setting that is accepted but exposes the gateway, located like a problem."""

    where: str  # "file:line: key.path"
    event: str  # a fixed text, e.g. "TLS certificates are not verified"
    detail: str  # what exactly, and what to do

    def __str__(self) -> str:
        return f"{self.where}: warning: {self.event}: {self.detail}"


CONTEXT_KEY = "driftgate"
_SECRET_FIELDS = frozenset({"password", "token"})


def loading_of(info: ValidationInfo) -> Loading | None:
    context = info.context
    if isinstance(context, dict):
        found = context.get(CONTEXT_KEY)
        if isinstance(found, Loading):
            return found
    return None


def reason(text: str) -> PydanticCustomError:
    # The text goes in through ctx so that braces in user values are not read as placeholders.
    return PydanticCustomError("driftgate", "{reason}", {"reason": text})


def raise_problems(title: str, problems: list[tuple[Loc, str]]) -> None:
    """Raise several located problems at once; pydantic prefixes each loc with the model's."""
    if problems:
        details = [
            InitErrorDetails(type=reason(text), loc=loc, input=None) for loc, text in problems
        ]
        raise ValidationError.from_exception_data(title, details)


def _to_duration(v: Any) -> float:
    try:
        return parse_duration(v)
    except ValueError as exc:
        raise reason(str(exc)) from None


def _to_size(v: Any) -> int:
    try:
        return parse_size(v)
    except ValueError as exc:
        raise reason(str(exc)) from None


def positive(v: float) -> float:
    if v <= 0:
        raise reason(f"must be greater than 0, got {v:g}")
    return v


def at_least_one_mib(v: int) -> int:
    if v < 1024**2:
        raise reason(f"must be at least 1MiB, got {v} bytes")
    return v


def _non_blank(v: str) -> str:
    if not v.strip():
        raise reason("must not be empty")
    return v


def _name(v: str) -> str:
    if not v.strip():
        raise reason("must not be empty")
    if any(c.isspace() for c in v):
        raise reason(f"{v!r} contains whitespace: use e.g. edge_paint.humidity")
    return v


def aware(v: datetime) -> datetime:
    if v.tzinfo is None or v.utcoffset() is None:
        raise reason(
            f"'{v.isoformat()}' has no timezone: write e.g. 2024-03-01T08:00:00+01:00 "
            "or 2024-03-01T07:00:00Z"
        )
    return v


def config_path(v: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the config file's directory, not to the cwd."""
    loading = loading_of(info)
    if loading is not None and loading.base_dir is not None and not v.is_absolute():
        return loading.base_dir / v
    return v


def _existing_file(v: Path, info: ValidationInfo) -> Path:
    if loading_of(info) is not None and not v.is_file():
        raise reason(f"file {v} does not exist or is not a regular file")
    return v


Duration = Annotated[float, BeforeValidator(_to_duration)]
Size = Annotated[int, BeforeValidator(_to_size)]
NonBlank = Annotated[str, AfterValidator(_non_blank)]
Name = Annotated[str, AfterValidator(_name)]
ConfigPath = Annotated[Path, AfterValidator(config_path)]
ExistingFile = Annotated[Path, AfterValidator(config_path), AfterValidator(_existing_file)]
Direction = Literal["up", "down", "both"]


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    # NaN and infinity are never a setting: `speed: .nan` once passed every "> 0" check.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _note_keys(cls, data: Any, info: ValidationInfo) -> Any:
        # Remembered per input mapping so that an unknown key can be answered with "did you mean".
        loading = loading_of(info)
        if loading is not None and isinstance(data, dict):
            loading.fields[id(data)] = tuple(k for k in cls.model_fields if k not in _SECRET_FIELDS)
        return data
