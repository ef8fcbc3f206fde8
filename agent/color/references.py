"""Approved colour references per SKU and part, kept in state_dir, and capture requests.

One JSON file per reference under ``state_dir/references/`` (``4711--clasp.json``), so the CLI
and the running agent never rewrite each other's entries. ``driftgate reference capture`` drops
a request file in ``references/requests/``; the agent sees it within a second and turns the
next measurement of that SKU and part into the reference. A reference is a reflectance
spectrum (fractions 0-1.5 per wavelength) or L*a*b* values per illuminant (a colorimeter's,
or typed from a specification sheet).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.errors import DriftgateError

__all__ = [
    "CaptureRequest",
    "Reference",
    "ReferenceError",
    "ReferenceStore",
    "check_name",
    "load_reference_file",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,63}$")
MAX_REFLECTANCE = 1.5  # fluorescent whitening can exceed 1; more is a broken instrument


class ReferenceError(DriftgateError):
    """A reference or a reference file was refused (bad name, values or format)."""


def check_name(what: str, value: str) -> str:
    """A SKU or part name as used in channel names and file names; ReferenceError if not."""
    if not _NAME.match(value):
        raise ReferenceError(
            f"{what} {value!r}: use 1-64 letters, digits, '_' or '.', starting with a letter "
            "or digit ('-' separates sku, part and serial in sample ids)"
        )
    return value


@dataclass(frozen=True, slots=True)
class Reference:
    """The approved colour of one SKU's part: a spectrum, or L*a*b* per illuminant."""

    sku: str
    part: str
    spectrum: tuple[float, ...] | None = None
    start_nm: float = 400.0
    step_nm: float = 10.0
    lab: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    captured_ns: int = 0
    note: str = ""
    source: str = ""
    label: str = ""
    affects: str = ""

    def __post_init__(self) -> None:
        check_name("sku", self.sku)
        check_name("part", self.part)
        if self.spectrum is None and not self.lab:
            raise ReferenceError(f"{self.key}: a reference needs a spectrum or L*a*b* values")
        if self.spectrum is not None:
            _check_spectrum(self.key, self.spectrum, self.step_nm)
        for illuminant, lab in self.lab.items():
            if len(lab) != 3 or not all(math.isfinite(x) for x in lab) or not 0 <= lab[0] <= 100:
                raise ReferenceError(f"{self.key}: L*a*b* under {illuminant} is not valid: {lab}")

    @property
    def key(self) -> str:
        """``sku/part``, as shown to people."""
        return f"{self.sku}/{self.part}"

    @property
    def kind(self) -> str:
        """``spectrum`` or ``lab``."""
        return "spectrum" if self.spectrum is not None else "lab"

    def to_json(self) -> dict[str, Any]:
        """As stored in its file."""
        out: dict[str, Any] = {"sku": self.sku, "part": self.part}
        if self.spectrum is not None:
            out["spectrum"] = {
                "start_nm": self.start_nm,
                "step_nm": self.step_nm,
                "values": list(self.spectrum),
            }
        if self.lab:
            out["lab"] = {k: list(v) for k, v in self.lab.items()}
        out.update(
            captured_ns=self.captured_ns,
            note=self.note,
            source=self.source,
            label=self.label,
            affects=self.affects,
        )
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reference:
        """From its stored form (ReferenceError if malformed)."""
        try:
            spectrum = data.get("spectrum")
            lab = {
                str(k): (float(v[0]), float(v[1]), float(v[2]))
                for k, v in (data.get("lab") or {}).items()
            }
            return cls(
                sku=str(data["sku"]),
                part=str(data["part"]),
                spectrum=tuple(float(x) for x in spectrum["values"]) if spectrum else None,
                start_nm=float(spectrum["start_nm"]) if spectrum else 400.0,
                step_nm=float(spectrum["step_nm"]) if spectrum else 10.0,
                lab=lab,
                captured_ns=int(data.get("captured_ns", 0)),
                note=str(data.get("note", "")),
                source=str(data.get("source", "")),
                label=str(data.get("label", "")),
                affects=str(data.get("affects", "")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ReferenceError(f"malformed reference: {exc!r}") from None


def _check_spectrum(key: str, values: tuple[float, ...], step_nm: float) -> None:
    if len(values) < 3:
        raise ReferenceError(f"{key}: a spectrum needs at least 3 values, got {len(values)}")
    if not step_nm > 0:
        raise ReferenceError(f"{key}: step_nm must be positive")
    for i, v in enumerate(values):
        if not (math.isfinite(v) and 0.0 <= v <= MAX_REFLECTANCE):
            raise ReferenceError(
                f"{key}: reflectance #{i + 1} is {v:g}; give fractions from 0 to 1.5 "
                "(set unit: percent for 0-150 values)"
            )


@dataclass(frozen=True, slots=True)
class CaptureRequest:
    """``driftgate reference capture``: the next measurement of sku/part becomes the reference."""

    sku: str
    part: str
    requested_ns: int
    note: str = ""
    label: str = ""
    affects: str = ""


def _file_key(sku: str, part: str) -> str:
    return f"{sku}--{part}.json"  # '-' is not allowed in names: the split is unambiguous


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class ReferenceStore:
    """The references of one agent (``state_dir/references``) and its pending capture requests.

    ``reload`` re-reads the directory when a file was added, changed or removed (the CLI writes
    while the agent runs); the agent calls it about once a second.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests_dir = directory / "requests"
        self.references: dict[tuple[str, str], Reference] = {}
        self.requests: dict[tuple[str, str], CaptureRequest] = {}
        self.problems: list[str] = []
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self.reload()

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        out: list[tuple[str, int, int]] = []
        for folder in (self.directory, self.requests_dir):
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(folder):
                    if entry.name.endswith(".json") and not entry.name.startswith("."):
                        st = entry.stat()
                        out.append((entry.path, st.st_mtime_ns, st.st_size))
        return tuple(sorted(out))

    def reload(self) -> bool:
        """Re-read references and requests if any file changed; True when something did."""
        signature = self._scan()
        if signature == self._signature:
            return False
        self._signature = signature
        references: dict[tuple[str, str], Reference] = {}
        requests: dict[tuple[str, str], CaptureRequest] = {}
        problems: list[str] = []
        for path_text, _, _ in signature:
            path = Path(path_text)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if path.parent == self.requests_dir:
                    request = CaptureRequest(**data)
                    requests[(request.sku, request.part)] = request
                else:
                    ref = Reference.from_json(data)
                    references[(ref.sku, ref.part)] = ref
            except (OSError, ValueError, TypeError, ReferenceError) as exc:
                problems.append(f"{path}: {exc}")
        changed = references != self.references or requests != self.requests
        self.references, self.requests, self.problems = references, requests, problems
        return changed

    def get(self, sku: str, part: str) -> Reference | None:
        """The approved reference of sku/part, if any."""
        return self.references.get((sku, part))

    def all(self) -> list[Reference]:
        """Every reference, sorted by sku and part."""
        return [self.references[k] for k in sorted(self.references)]

    def put(self, reference: Reference) -> None:
        """Store (or replace) a reference."""
        _write_json(self.directory / _file_key(reference.sku, reference.part), reference.to_json())
        self.references[(reference.sku, reference.part)] = reference
        self._signature = self._scan()

    def remove(self, sku: str, part: str) -> bool:
        """Delete a reference (and any capture request for it); True if there was one."""
        found = False
        for path in (
            self.directory / _file_key(sku, part),
            self.requests_dir / _file_key(sku, part),
        ):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                found = True
        self.references.pop((sku, part), None)
        self.requests.pop((sku, part), None)
        self._signature = self._scan()
        return found

    def request_capture(
        self, sku: str, part: str, *, note: str = "", label: str = "", affects: str = ""
    ) -> CaptureRequest:
        """Arm a capture: the next measurement of sku/part the agent sees becomes the reference."""
        request = CaptureRequest(
            check_name("sku", sku), check_name("part", part), time.time_ns(), note, label, affects
        )
        _write_json(self.requests_dir / _file_key(sku, part), asdict(request))
        self.requests[(sku, part)] = request
        return request

    def capture(self, request: CaptureRequest, reference: Reference) -> None:
        """Fulfil a capture request with the measurement that answered it."""
        self.put(reference)
        with contextlib.suppress(FileNotFoundError):
            (self.requests_dir / _file_key(request.sku, request.part)).unlink()
        self.requests.pop((request.sku, request.part), None)
        self._signature = self._scan()


# --------------------------------------------------------------------------- import files


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ReferenceError(f"{where}: expected a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ReferenceError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ReferenceError(f"{where}: expected a finite number, got {value!r}")
    return out


def _lab_entry(data: Mapping[str, Any], where: str, default_illuminant: str) -> dict[str, Any]:
    """``{L:, a:, b:, illuminant:}`` or ``{D65: [L, a, b], FL11: [...]}`` → {illuminant: Lab}."""
    from agent.config.models import COLOR_ILLUMINANT_ALIASES

    def canonical(name: Any) -> str:
        found = COLOR_ILLUMINANT_ALIASES.get(str(name).strip().upper())
        if found is None:
            raise ReferenceError(f"{where}: unknown illuminant {name!r}")
        return found

    if {"L", "a", "b"} <= set(data):
        illuminant = canonical(data.get("illuminant") or default_illuminant)
        return {
            illuminant: tuple(_number(data[k], f"{where}.{k}") for k in ("L", "a", "b")),
        }
    out: dict[str, Any] = {}
    for name, lab in data.items():
        if not isinstance(lab, list | tuple) or len(lab) != 3:
            raise ReferenceError(f"{where}.{name}: expected [L, a, b]")
        out[canonical(name)] = tuple(_number(x, f"{where}.{name}") for x in lab)
    return out


def _reference_from_item(
    item: Mapping[str, Any], where: str, source: str, default_illuminant: str
) -> Reference:
    if not isinstance(item, Mapping):
        raise ReferenceError(f"{where}: expected a mapping with sku, part and spectrum or lab")
    unknown = set(item) - {"sku", "part", "note", "label", "affects", "spectrum", "lab"}
    if unknown:
        raise ReferenceError(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    if "sku" not in item or "part" not in item:
        raise ReferenceError(f"{where}: sku and part are required")
    spectrum: tuple[float, ...] | None = None
    start, step = 400.0, 10.0
    if item.get("spectrum") is not None:
        spec = item["spectrum"]
        if not isinstance(spec, Mapping) or not isinstance(spec.get("values"), list):
            raise ReferenceError(f"{where}.spectrum: expected start_nm, step_nm and values: [...]")
        scale = {"fraction": 1.0, "percent": 0.01}.get(str(spec.get("unit", "fraction")))
        if scale is None:
            raise ReferenceError(f"{where}.spectrum.unit: fraction or percent")
        start = _number(spec.get("start_nm", 400), f"{where}.spectrum.start_nm")
        step = _number(spec.get("step_nm", 10), f"{where}.spectrum.step_nm")
        spectrum = tuple(
            _number(v, f"{where}.spectrum.values[{i}]") * scale
            for i, v in enumerate(spec["values"])
        )
    lab: dict[str, Any] = {}
    if item.get("lab") is not None:
        if not isinstance(item["lab"], Mapping):
            raise ReferenceError(f"{where}.lab: expected L:, a:, b: (and illuminant:)")
        lab = _lab_entry(item["lab"], f"{where}.lab", default_illuminant)
    try:
        return Reference(
            sku=str(item["sku"]),
            part=str(item["part"]),
            spectrum=spectrum,
            start_nm=start,
            step_nm=step,
            lab=lab,
            captured_ns=time.time_ns(),
            note=str(item.get("note") or ""),
            source=source,
            label=str(item.get("label") or ""),
            affects=str(item.get("affects") or ""),
        )
    except ReferenceError as exc:
        raise ReferenceError(f"{where}: {exc}") from None


_WAVELENGTH_COLUMN = re.compile(r"^r?(\d+(?:\.\d+)?)(?:\s*nm)?$", re.I)


def _csv_references(path: Path, default_illuminant: str) -> list[Reference]:
    """CSV: ``sku,part[,note,label,affects]`` then either L,a,b[,illuminant] or one column per
    wavelength (``400,410,…`` or ``r400,…``, reflectance as fractions; ``unit`` column percent)."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.lstrip().startswith("#")))
    out: list[Reference] = []
    for n, raw_row in enumerate(rows, start=2):
        where = f"{path}: row {n}"
        row = {str(k).strip(): (v or "").strip() for k, v in raw_row.items() if k is not None}
        waves = sorted(
            (float(m.group(1)), k) for k in row if (m := _WAVELENGTH_COLUMN.match(k)) and row[k]
        )
        item: dict[str, Any] = {
            k: row[k] for k in ("sku", "part", "note", "label", "affects") if k in row
        }
        if any(row.get(k) for k in ("L", "a", "b")):
            item["lab"] = {k: row.get(k) for k in ("L", "a", "b")}
            if row.get("illuminant"):
                item["lab"]["illuminant"] = row["illuminant"]
        if waves:
            steps = {round(b[0] - a[0], 6) for a, b in itertools.pairwise(waves)}
            if len(steps) != 1:
                raise ReferenceError(f"{where}: wavelength columns must be evenly spaced")
            item["spectrum"] = {
                "start_nm": waves[0][0],
                "step_nm": steps.pop(),
                "values": [row[k] for _, k in waves],
                "unit": row.get("unit") or "fraction",
            }
        out.append(_reference_from_item(item, where, f"import {path.name}", default_illuminant))
    return out


def load_reference_file(path: Path, default_illuminant: str = "D65") -> list[Reference]:
    """References from a YAML file (``references: [...]``) or a CSV file; ReferenceError lists
    the first problem with its place. L*a*b* without an illuminant are taken as
    ``default_illuminant``."""
    try:
        if path.suffix.lower() == ".csv":
            refs = _csv_references(path, default_illuminant)
        else:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            items: Iterable[Any] = data.get("references", []) if isinstance(data, dict) else data
            if not isinstance(items, list):
                raise ReferenceError(f"{path}: expected references: [ ... ] or a list")
            refs = [
                _reference_from_item(item, f"{path}: references[{i}]", f"import {path.name}",
                                     default_illuminant)
                for i, item in enumerate(items)
            ]  # fmt: skip
    except OSError as exc:
        raise ReferenceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ReferenceError(f"{path}: not valid YAML: {exc}") from None
    keys = [r.key for r in refs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ReferenceError(f"{path}: {', '.join(dupes)} appear more than once")
    return refs
