"""The simulated workshop behind the demo and the simulated source.

An edge-paint room whose humidity follows a daily cycle with noise and starts creeping upward in
week 3, a cutting room that stays stable, and eight sewing machines' thread tension, one of
which shifts after an operator change. Leather arrives at intake twice a week; the second
delivery is drier than the others (what the moisture meter's emulator measures). Deterministic
for a given seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from agent.reading import Channel

DAY = 86400.0
DELIVERY_DAYS = 3.5  # leather arrives twice a week
DELIVERY_MOISTURE = (14.2, 12.7, 14.0, 14.1)
"""Mean moisture (% of the leather's mass) of the leather deliveries, in turn; every fourth
is drier."""


@dataclass(slots=True)
class _Climate:
    """One room's humidity and temperature physics."""

    humidity: Channel
    temperature: Channel
    base_rh: float
    base_c: float
    drift_start_day: float | None = None
    drift_per_day: float = 0.0
    drift_max: float = 0.0
    ar_rh: float = 0.0
    ar_c: float = 0.0


@dataclass(slots=True)
class _Machine:
    """One sewing machine's thread tension physics."""

    channel: Channel
    base_cn: float
    shift_day: float | None = None
    shift_cn: float = 0.0


@dataclass(slots=True)
class Workshop:
    """The simulated floor: call ``sample(t)`` for every channel's value at time t (seconds)."""

    start: float
    seed: int = 1
    rooms: list[_Climate] = field(default_factory=list)
    machines: list[_Machine] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def build(cls, start: float, seed: int = 1, tags: dict[str, str] | None = None) -> Workshop:
        """The demo floor, with `tags` (site, gateway) on every channel."""
        base = dict(tags or {})
        shop = cls(start=start, seed=seed, rng=random.Random(seed))

        def climate(zone: str, label: str, affects: str, sensor: str) -> tuple[Channel, Channel]:
            tags = {**base, "zone": zone, "sensor": sensor}
            rh = Channel(
                name=f"{zone}.humidity",
                measurement="climate",
                field="humidity_rh",
                unit="%RH",
                kind="climate",
                label=f"{label} humidity",
                affects=affects,
                tags=tags,
            )
            temp = Channel(
                name=f"{zone}.temperature",
                measurement="climate",
                field="temperature_c",
                unit="°C",
                kind="climate",
                label=f"{label} temperature",
                affects=affects,
                tags=tags,
            )
            return rh, temp

        rh, temp = climate("edge_paint", "Edge paint room", "edge paint drying", "sht41-ep1")
        shop.rooms.append(
            _Climate(rh, temp, 50.0, 21.5, drift_start_day=14.0, drift_per_day=1.5, drift_max=10.0)
        )
        rh, temp = climate(
            "cutting", "Cutting room", "leather dimensional stability at cutting", "sht41-ct1"
        )
        shop.rooms.append(_Climate(rh, temp, 45.0, 20.5))
        for i in range(1, 9):
            station = f"m{i:02d}"
            channel = Channel(
                name=f"sewing.{station}.tension",
                measurement="tension",
                field="tension_cn",
                unit="cN",
                kind="tension",
                label=f"Sewing machine {station.upper()} thread tension",
                affects="seam strength and stitch appearance",
                tags={
                    **base,
                    "zone": "sewing",
                    "line": "L1" if i <= 4 else "L2",
                    "station": station,
                    "sensor": f"hx711-{station}",
                },
            )
            machine = _Machine(channel, base_cn=118.0 + 1.1 * i)
            if i == 5:
                # Operator rotation on day 10 at the 06:00 shift change: tension set higher.
                machine.shift_day = 10.25
                machine.shift_cn = 8.0
            shop.machines.append(machine)
        return shop

    def channels(self) -> list[Channel]:
        """Every channel the workshop produces."""
        out: list[Channel] = []
        for room in self.rooms:
            out += [room.humidity, room.temperature]
        out += [m.channel for m in self.machines]
        return out

    def intake_moisture(self, t: float) -> float:
        """The mean moisture of the leather delivery being received at time ``t``.

        Deliveries follow the calendar, not the simulation's start, so ``driftgate simulate
        --start`` picks one: the demo's start (2024-03-01 08:00 UTC) falls in a normal one,
        four days later (2024-03-05) in a dry one.
        """
        delivery = int(t // (DELIVERY_DAYS * DAY))
        return DELIVERY_MOISTURE[delivery % len(DELIVERY_MOISTURE)]

    def sample(self, t: float) -> list[tuple[Channel, float]]:
        """Every channel's value at time ``t`` (seconds since the epoch)."""
        rng = self.rng
        gauss = rng.gauss
        day = (t - self.start) / DAY
        phase = 2 * math.pi * ((t % DAY) / DAY - 0.375)  # warmest, most humid mid-afternoon
        cycle = math.sin(phase)
        out: list[tuple[Channel, float]] = []
        for room in self.rooms:
            room.ar_rh = 0.95 * room.ar_rh + gauss(0.0, 0.25)
            room.ar_c = 0.95 * room.ar_c + gauss(0.0, 0.05)
            rh = room.base_rh + 4.0 * cycle + room.ar_rh + gauss(0.0, 0.3)
            if room.drift_start_day is not None and day > room.drift_start_day:
                rh += min((day - room.drift_start_day) * room.drift_per_day, room.drift_max)
            if rng.random() < 0.001:  # a single outlier: a door left open, a probe breathed on
                rh += gauss(0.0, 8.0)
            out.append((room.humidity, round(min(max(rh, 0.0), 100.0), 2)))
            out.append((room.temperature, round(room.base_c + 1.5 * cycle + room.ar_c, 2)))
        for machine in self.machines:
            value = machine.base_cn + gauss(0.0, 2.0)
            if machine.shift_day is not None and day > machine.shift_day:
                value += machine.shift_cn
            out.append((machine.channel, round(value, 1)))
        return out
