"""Colorimetry with colour-science: CIE XYZ and CIELAB of a spectrum under several illuminants,
ΔE00 and the metamerism index, and the illuminants' names as people say them.

The stage asks colour-science once per (spectrum shape, illuminant) for the tristimulus weights
(its ASTM E308 result for each unit spectrum; sd_to_XYZ is linear in the reflectance) and then
applies them, which gives colour.sd_to_XYZ's numbers at a fraction of its cost.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from functools import cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from agent.color.references import Reference

Array = npt.NDArray[np.float64]

OBSERVERS: Final = {
    2: "CIE 1931 2 Degree Standard Observer",
    10: "CIE 1964 10 Degree Standard Observer",
}
_WORDS: Final = {
    "D65": "daylight (D65)",
    "D50": "graphic-arts daylight (D50)",
    "A": "incandescent light (A)",
    "FL2": "cool-white fluorescent light (F2)",
    "FL11": "warehouse fluorescent light (F11)",
    "LED-B1": "warm-white LED light (LED-B1)",
    "LED-B2": "warm-white LED light (LED-B2)",
    "LED-B3": "white LED shop light (LED-B3)",
    "LED-B4": "neutral-white LED light (LED-B4)",
    "LED-B5": "cool-white LED light (LED-B5)",
}
DEFAULT_AFFECTS = "This affects the colour customers see in shops."


def illuminant_slug(name: str) -> str:
    """The illuminant in field and channel names: D65 → d65, FL11 → f11, LED-B3 → led_b3."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return "f" + slug[2:] if re.fullmatch(r"fl\d+", slug) else slug


def illuminant_words(name: str) -> str:
    """The illuminant as a supervisor reads it: warehouse fluorescent light (F11)."""
    return _WORDS.get(name, f"illuminant {name.replace('FL', 'F')}")


# --------------------------------------------------------------------------- colour-science


@cache
def _colour() -> Any:
    """colour-science, imported on first use (it takes a second, more on a Pi)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Matplotlib related API features are not available"
        import colour

    return colour


def warm_up_colour() -> None:
    """Import colour-science now (the agent does it off the event loop at startup)."""
    _colour()


def delta_e00(lab1: npt.ArrayLike, lab2: npt.ArrayLike) -> Array:
    """CIEDE2000 colour difference (kL = kC = kH = 1) of L*a*b* arrays (…, 3), by colour-science."""
    out = _colour().delta_E(np.asarray(lab1, float), np.asarray(lab2, float), method="CIE 2000")
    return np.atleast_1d(np.asarray(out, dtype=np.float64))


def metamerism_index(
    lab_spl_t: Array, lab_std_t: Array, lab_spl_r: Array, lab_std_r: Array
) -> Array:
    """ISO 18314-4 metamerism index for change of illuminant (additive L*a*b* correction,
    ΔE00), by colour-science; NaN where this colour-science has no such function."""
    difference = _colour().difference
    func = getattr(difference, "Lab_to_metamerism_index", None)
    if func is None:
        return np.full(len(lab_spl_t), math.nan)
    out = func(lab_spl_t, lab_std_t, lab_spl_r, lab_std_r, correction="Additive", method="CIE 2000")
    return np.atleast_1d(np.asarray(out, dtype=np.float64))


class Colorimetry:
    """Reflectance → XYZ → L*a*b* under a set of illuminants, for one standard observer."""

    def __init__(self, observer: int = 10, illuminants: Sequence[str] = ("D65", "FL11", "LED-B3")):
        if observer not in OBSERVERS:
            raise ValueError(f"observer must be 2 or 10, not {observer!r}")
        self.observer = observer
        self.illuminants = tuple(illuminants)
        self._weights: dict[tuple[float, float, int, str], Array] = {}
        self._white_xy: dict[str, Array] = {}

    def prepare(self, start_nm: float, step_nm: float, count: int) -> None:
        """Compute the weights and white points a spectrum shape needs, ahead of its first
        measurement (from a thread: colour-science takes ~100 ms per shape, more on a Pi)."""
        for illuminant in self.illuminants:
            self.weights(start_nm, step_nm, count, illuminant)
            self.white_xy(illuminant)

    def weights(self, start_nm: float, step_nm: float, count: int, illuminant: str) -> Array:
        """(count, 3) tristimulus weights: XYZ (0-100) = reflectance @ weights."""
        key = (start_nm, step_nm, count, illuminant)
        found = self._weights.get(key)
        if found is None:
            colour = _colour()
            wavelengths = start_nm + step_nm * np.arange(count)
            unit_spectra = colour.MultiSpectralDistributions(np.eye(count), wavelengths)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # colour's notes on interpolating the CMFs
                found = np.asarray(
                    colour.msds_to_XYZ(
                        unit_spectra,
                        colour.MSDS_CMFS[OBSERVERS[self.observer]],
                        colour.SDS_ILLUMINANTS[illuminant],
                        method="ASTM E308",
                    ),
                    dtype=np.float64,
                ).reshape(count, 3)
            self._weights[key] = found
        return found

    def xyz_direct(
        self, values: Sequence[float], start_nm: float, step_nm: float, illuminant: str
    ) -> Array:
        """XYZ (0-100) by colour.sd_to_XYZ itself: the reference the weights are checked against."""
        colour = _colour()
        wavelengths = start_nm + step_nm * np.arange(len(values))
        sd = colour.SpectralDistribution(np.asarray(values, float), wavelengths)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xyz = colour.sd_to_XYZ(
                sd, colour.MSDS_CMFS[OBSERVERS[self.observer]], colour.SDS_ILLUMINANTS[illuminant]
            )
        return np.asarray(xyz, dtype=np.float64)

    def xyz(
        self,
        values: Sequence[float],
        start_nm: float,
        step_nm: float,
        illuminants: Sequence[str] | None = None,
    ) -> Array:
        """(n_illuminants, 3) CIE XYZ (Y = 100 for the perfect white) of a reflectance spectrum."""
        r = np.asarray(values, dtype=np.float64)
        names = self.illuminants if illuminants is None else illuminants
        return np.stack([r @ self.weights(start_nm, step_nm, len(r), n) for n in names])

    def white_xy(self, illuminant: str) -> Array:
        """Chromaticity of the perfect white under the illuminant with this observer."""
        found = self._white_xy.get(illuminant)
        if found is None:
            colour = _colour()
            # The same wavelengths as the measurements' weights give exactly L* 100, a* = b* = 0
            # for a perfect white; colour's weights for 400-700 nm / 10 nm stand in for any shape.
            white = self.weights(400.0, 10.0, 31, illuminant).sum(axis=0)
            found = np.asarray(colour.XYZ_to_xy(white / 100.0), dtype=np.float64)
            self._white_xy[illuminant] = found
        return found

    def lab_from_xyz(self, xyz: Array, illuminants: Sequence[str] | None = None) -> Array:
        """(n, 3) CIELAB from (n, 3) XYZ (0-100), each under its illuminant's white."""
        names = self.illuminants if illuminants is None else illuminants
        whites = np.stack([self.white_xy(n) for n in names])
        lab = _colour().XYZ_to_Lab(xyz / 100.0, whites)
        return np.asarray(lab, dtype=np.float64).reshape(len(names), 3)

    def lab(
        self,
        values: Sequence[float],
        start_nm: float,
        step_nm: float,
        illuminants: Sequence[str] | None = None,
    ) -> Array:
        """(n_illuminants, 3) CIELAB of a reflectance spectrum under each illuminant."""
        return self.lab_from_xyz(self.xyz(values, start_nm, step_nm, illuminants), illuminants)

    def reference_lab(self, ref: Reference, illuminants: Sequence[str]) -> dict[str, Array]:
        """The reference's L*a*b* under each of these illuminants it can give."""
        if ref.spectrum is not None:
            lab = self.lab(ref.spectrum, ref.start_nm, ref.step_nm, illuminants)
            return {n: lab[i] for i, n in enumerate(illuminants)}
        return {n: np.asarray(ref.lab[n], dtype=np.float64) for n in illuminants if n in ref.lab}


# --------------------------------------------------------------------------- the stage
