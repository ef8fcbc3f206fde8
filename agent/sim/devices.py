"""Device emulators: each shipped profile's REAL frames, driven by the simulated workshop.

``DeviceEmulator(profile).frames(t)`` gives the frames (bytes, and the MQTT topic for MQTT
profiles) that device would send at time ``t``, with correct checksums and framing, plus what
they hold (``expected``) so tests can check that encoder and decoder agree. The climate probes
read a room of ``Workshop``; the tension sensor sends 100 Hz batches around a sewing machine's
tension; the spectrophotometer and the colorimeter measure a leather (or plating) sample whose
reflectance darkens slightly with the edge-paint room's humidity, so drift scenarios show; the
leather moisture meter measures the hides of the week's delivery at intake.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from agent.ingest.decode import append_checksum
from agent.ingest.profiles import Profile, StxEtxFraming, load_profile
from agent.sim.workshop import Workshop

__all__ = [
    "DEMO_START",
    "DeviceEmulator",
    "DeviceFrame",
    "dew_point",
    "frames_for",
    "lab_from_reflectance",
    "reflectance",
]

DEMO_START = 1709280000.0  # 2024-03-01T08:00:00Z
TENSION_RATE_HZ = 100
TENSION_BATCH = 50
_WAVELENGTHS = tuple(400 + 10 * i for i in range(31))
MOISTURE_INTERVAL_S = 20.0  # one hide measured every 20 s while a delivery is checked
HIDE_SPREAD = 0.5  # % moisture from hide to hide within one delivery (and the meter's own)


@dataclass(frozen=True, slots=True)
class DeviceFrame:
    """One frame as sent on the wire, and what it holds as the device encoded it."""

    topic: str | None
    data: bytes
    expected: tuple[tuple[str, int, float], ...] = ()  # (channel name, ts_ns, value)
    tags: dict[str, str] = field(default_factory=dict)
    spectrum: tuple[float, ...] | None = None


# --------------------------------------------------------------------------- colour model


def reflectance(sample: str, wet: float = 0.0) -> tuple[float, ...]:
    """Reflectance (0-1) at 400-700 nm / 10 nm of a tan leather or a gold-tone plating sample.

    ``wet`` (relative humidity above 50 %RH, in %RH) darkens leather slightly, as moist leather
    does; plating does not care.
    """
    out = []
    for nm in _WAVELENGTHS:
        if sample == "plating":
            value = 0.30 + 0.55 / (1 + math.exp(-(nm - 520) / 25))
        else:
            value = (0.06 + 0.38 / (1 + math.exp(-(nm - 585) / 32))) * (1 - 0.006 * wet)
        out.append(value)
    return tuple(out)


def _lobe(nm: float, mu: float, s1: float, s2: float) -> float:
    s = s1 if nm < mu else s2
    return math.exp(-0.5 * ((nm - mu) / s) ** 2)


def _cmf(nm: float) -> tuple[float, float, float]:
    # CIE 1931 2° colour-matching functions, multi-lobe fit of Wyman, Sloan & Shirley (2013).
    x = 1.056 * _lobe(nm, 599.8, 37.9, 31.0) + 0.362 * _lobe(nm, 442.0, 16.0, 26.7)
    x -= 0.065 * _lobe(nm, 501.1, 20.4, 26.2)
    y = 0.821 * _lobe(nm, 568.8, 46.9, 40.5) + 0.286 * _lobe(nm, 530.9, 16.3, 31.1)
    z = 1.217 * _lobe(nm, 437.0, 11.8, 36.0) + 0.681 * _lobe(nm, 459.0, 26.0, 13.8)
    return x, y, z


def lab_from_reflectance(values: tuple[float, ...]) -> tuple[float, float, float]:
    """Approximate CIE L*a*b* (equal-energy illuminant) of a 400-700 nm / 10 nm spectrum.

    Good enough for an emulator; the colour stage does this properly (D65, CIE tables).
    """
    xyz = [0.0, 0.0, 0.0]
    white = [0.0, 0.0, 0.0]
    for nm, r in zip(_WAVELENGTHS, values, strict=True):
        for i, c in enumerate(_cmf(nm)):
            xyz[i] += r * c
            white[i] += c

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = (f(xyz[i] / white[i]) for i in range(3))
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


# --------------------------------------------------------------------------- the emulator


def dew_point(t_c: float, rh: float) -> float:
    """The dew point (°C) of air at ``t_c`` °C and ``rh`` %RH (Magnus formula, Sonntag 1990)."""
    gamma = math.log(max(rh, 0.1) / 100) + 17.62 * t_c / (243.12 + t_c)
    return 243.12 * gamma / (17.62 - gamma)


class DeviceEmulator:
    """One emulated device of a profile, reading the simulated workshop.

    ``device`` picks which: a zone for climate probes (``edge_paint``, ``cutting``), a
    station for the tension sensor (``m01`` … ``m08``), a sample kind for colour instruments
    (``leather``, ``plating``), a meter id for the leather moisture meter (``lm-01``).
    ``interval`` is how often the real device sends, in seconds.
    """

    def __init__(
        self,
        profile: str | Profile,
        *,
        workshop: Workshop | None = None,
        start: float = DEMO_START,
        seed: int = 1,
        device: str | None = None,
    ) -> None:
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.workshop = workshop if workshop is not None else Workshop.build(start, seed)
        self.seed = seed
        self.rng = random.Random(seed * 7919 + 17)
        self.samples = 0
        kinds: dict[str, tuple[str, float, Callable[[float], list[DeviceFrame]]]] = {
            "sht4x-serial": ("edge_paint", 1.0, self._sht_serial),
            "sht4x-esphome": ("edge_paint", 10.0, self._sht_esphome),
            "tasmota-sht3x": ("edge_paint", 10.0, self._tasmota),
            "tasmota-bme280": ("cutting", 10.0, self._tasmota),
            "hx711-tension": ("m05", TENSION_BATCH / TENSION_RATE_HZ, self._hx711),
            "spectro-31": ("leather", 60.0, self._spectro),
            "colorimeter-lab": ("leather", 60.0, self._colorimeter),
            "leather-moisture": ("lm-01", MOISTURE_INTERVAL_S, self._moisture),
        }
        if self.profile.name not in kinds:
            raise ValueError(
                f"no emulator for profile {self.profile.name!r}; known: {', '.join(kinds)}"
            )
        default, self.interval, self._make = kinds[self.profile.name]
        self.device = device or default

    def frames(self, t: float) -> list[DeviceFrame]:
        """The frames the device sends at time ``t`` (seconds since the epoch)."""
        return self._make(t)

    # -- helpers

    def _room(self, t: float) -> tuple[str, float, float]:
        """(sensor id, %RH, °C) of the emulated zone at time t."""
        values = {channel.name: (channel, value) for channel, value in self.workshop.sample(t)}
        if f"{self.device}.humidity" not in values:
            zones = sorted({n.split(".")[0] for n in values if n.endswith(".humidity")})
            raise ValueError(f"no climate zone {self.device!r}; zones: {', '.join(zones)}")
        channel, rh = values[f"{self.device}.humidity"]
        _, temp = values[f"{self.device}.temperature"]
        return channel.tags.get("sensor", self.device), rh, temp

    def _wet(self, t: float) -> float:
        values = {channel.name: value for channel, value in self.workshop.sample(t)}
        return max(values.get("edge_paint.humidity", 50.0) - 50.0, 0.0)

    # -- climate

    def _sht_serial(self, t: float) -> list[DeviceFrame]:
        sensor, rh, temp = self._room(t)
        rh_text, t_text = f"{rh:.2f}", f"{temp:.2f}"
        body = f"$id={sensor},rh={rh_text},t={t_text}".encode()
        ts = int(t * 1e9)
        return [
            DeviceFrame(
                None,
                append_checksum(self.profile.checksum, body) + b"\r\n",
                (("humidity", ts, float(rh_text)), ("temperature", ts, float(t_text))),
                {"sensor": sensor},
            )
        ]

    def _sht_esphome(self, t: float) -> list[DeviceFrame]:
        sensor, rh, temp = self._room(t)
        ts = int(t * 1e9)
        out = []
        for name, value in (("humidity", rh), ("temperature", temp)):
            text = f"{value:.1f}"
            out.append(
                DeviceFrame(
                    f"{sensor}/sensor/{name}/state",
                    text.encode(),
                    ((name, ts, float(text)),),
                    {"sensor": sensor},
                )
            )
        return out

    def _tasmota(self, t: float) -> list[DeviceFrame]:
        sensor, rh, temp = self._room(t)
        device = f"tasmota_{sensor.rsplit('-', 1)[-1]}"
        chip = "BME280" if self.profile.name == "tasmota-bme280" else "SHT3X"
        reading: dict[str, float] = {
            "Temperature": round(temp, 1),
            "Humidity": round(rh, 1),
            "DewPoint": round(dew_point(temp, rh), 1),
        }
        if chip == "BME280":
            pressure = (
                1013.25 + 6.0 * math.sin(2 * math.pi * t / (3 * 86400)) + self.rng.gauss(0, 0.1)
            )
            reading["Pressure"] = round(pressure, 1)
        # Tasmota's Time is the device's local time, without a zone (SetOption52 0)
        stamp = datetime.fromtimestamp(int(t)).strftime("%Y-%m-%dT%H:%M:%S")
        doc: dict[str, object] = {"Time": stamp, chip: reading}
        if chip == "BME280":
            doc["PressureUnit"] = "hPa"
        doc["TempUnit"] = "C"
        ts = int(t * 1e9)
        names = {"Temperature": "temperature", "Humidity": "humidity", "DewPoint": "dew_point"}
        names["Pressure"] = "pressure"
        expected = tuple((names[k], ts, v) for k, v in reading.items())
        payload = json.dumps(doc, separators=(",", ":")).encode()
        return [DeviceFrame(f"tele/{device}/SENSOR", payload, expected, {"sensor": device})]

    # -- tension

    def _hx711(self, t: float) -> list[DeviceFrame]:
        values = {channel.name: value for channel, value in self.workshop.sample(t)}
        key = f"sewing.{self.device}.tension"
        if key not in values:
            raise ValueError(f"no sewing machine {self.device!r}; machines are m01 … m08")
        base = values[key]
        spec = self.profile.fields[0]
        t0_ms = round(t * 1000)
        counts: list[int] = []
        expected = []
        for i in range(TENSION_BATCH):
            # The stitch cycle (about 12 stitches/s) pulls the thread once per stitch.
            ripple = 3.0 * math.sin(2 * math.pi * 12.0 * i / TENSION_RATE_HZ)
            cn = base + ripple + self.rng.gauss(0.0, 0.6)
            count = round((cn - spec.offset) / spec.scale)
            counts.append(count)
            ts = t0_ms * 10**6 + round(i * 1e9 / TENSION_RATE_HZ)
            expected.append(("tension", ts, float(count) * spec.scale + spec.offset))
        body = f"T,{self.device},{t0_ms},{TENSION_RATE_HZ}," + ",".join(map(str, counts))
        sealed = append_checksum(self.profile.checksum, body.encode())
        framing = self.profile.framing
        assert isinstance(framing, StxEtxFraming)
        data = bytes([framing.start]) + sealed + bytes([framing.end])
        return [DeviceFrame(None, data, tuple(expected), {"station": self.device})]

    # -- leather moisture at intake

    def _moisture(self, t: float) -> list[DeviceFrame]:
        self.samples += 1
        # Each hide's own moisture, drawn from the time it is measured: two runs over other
        # hours measure other hides (a run's own sequence would repeat for every lot).
        hide = random.Random(f"{self.seed}:{t:.3f}")
        value = self.workshop.intake_moisture(t) + hide.gauss(0.0, HIDE_SPREAD)
        text = f"{min(max(value, 0.0), 60.0):.1f}"
        line = f"MC,{self.device},{self.samples % 10000:04d},{text},leather\r\n"
        return [
            DeviceFrame(
                None, line.encode(), (("moisture", int(t * 1e9), float(text)),),
                {"sensor": self.device},
            )
        ]  # fmt: skip

    # -- colour

    def _sample_id(self) -> str:
        self.samples += 1
        return f"LOT2411B-{self.samples:03d}"

    def _measured(self, t: float) -> tuple[float, ...]:
        return tuple(
            min(max(r + self.rng.gauss(0.0, 0.001), 0.0), 1.5)
            for r in reflectance(self.device, self._wet(t))
        )

    def _spectro(self, t: float) -> list[DeviceFrame]:
        sample = self._sample_id()
        texts = [f"{100 * r:.2f}" for r in self._measured(t)]
        line = f"R,{sample}," + ",".join(texts) + "\r\n"
        spectrum = tuple(float(x) * 0.01 for x in texts)
        return [DeviceFrame(None, line.encode(), (), {"sample": sample}, spectrum)]

    def _colorimeter(self, t: float) -> list[DeviceFrame]:
        sample = self._sample_id()
        lab = lab_from_reflectance(self._measured(t))
        texts = [f"{v:+07.2f}" for v in lab]
        record = f"@{sample:<13.13}L{texts[0]}a{texts[1]}b{texts[2]}\r\n"
        ts = int(t * 1e9)
        expected = tuple(
            (name, ts, float(x)) for name, x in zip(("L", "a", "b"), texts, strict=True)
        )
        return [DeviceFrame(None, record.encode(), expected, {"sample": sample})]


def frames_for(
    profile_name: str,
    t: float,
    *,
    workshop: Workshop | None = None,
    device: str | None = None,
    seed: int = 1,
) -> list[tuple[str | None, bytes]]:
    """One emission of a device at time ``t``: ``[(mqtt topic or None, frame bytes), …]``.

    Without ``workshop`` a fresh one starting at DEMO_START is used; pass one (or keep a
    DeviceEmulator) to follow its drift scenarios over a run.
    """
    emulator = DeviceEmulator(profile_name, workshop=workshop, device=device, seed=seed)
    return [(frame.topic, frame.data) for frame in emulator.frames(t)]
