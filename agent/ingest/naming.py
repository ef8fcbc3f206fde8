"""How a device source names its channels: one rule, used by ``FrameHandler`` when a reading
arrives and by ``check-config`` to list, before anything runs, what each source will produce.

The rule: ``<prefix>.<tags of the frame, by tag name>.<field>``.

- ``prefix``: the source's ``channel_prefix``, else its ``zone``, else its ``name``;
- then the value of each tag the frame itself carries (the profile's ``tags:``, such as the
  probe id ``sensor`` or the machine ``station``, and the ``{name}`` levels of an MQTT topic),
  in the order of the tag names, unless the source sets that tag to the same value (then it
  names nothing new: ``sensor: sht41-ep1`` on the source makes the probe's channels
  ``<prefix>.humidity``); tags that change from reading to reading (a sample id, a lot,
  operator, shift or order) never take part;
- last, the profile field's channel name (``humidity``, ``tension``, ``L``).

So ``zone: leather_store`` and a probe sending ``id=sht41-ep1`` make
``leather_store.sht41-ep1.humidity``, which a ``channels:`` entry named
``leather_store.humidity`` does not match.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.config.models import MqttSourceConfig, SerialSourceConfig
from agent.context import PER_READING_TAGS
from agent.ingest.decode import Decoder
from agent.ingest.profiles import Profile

Tags = tuple[tuple[str, str], ...]

NAMING_RULE = (
    "a source's channels are named <prefix>.<tags the frame carries, by tag name>.<field>: "
    "prefix = channel_prefix, else zone, else the source's name; a frame tag the source sets "
    "to the same value (e.g. sensor: sht41-ep1) adds nothing; sample, lot, operator, shift "
    "and order never do"
)
"""The rule in one line, as ``check-config`` prints it."""


def split_tags(tags: Mapping[str, str], base: Mapping[str, str]) -> tuple[Tags, Tags]:
    """A reading's tags beyond its source's own: those that tell streams apart (which name a
    channel), and the per-reading ones (which go on that reading's point only), by tag name."""
    identity: list[tuple[str, str]] = []
    own: list[tuple[str, str]] = []
    for key, tag in sorted(tags.items()):
        if key in PER_READING_TAGS:
            own.append((key, tag))
        elif base.get(key) != tag:
            identity.append((key, tag))
    return tuple(identity), tuple(own)


def channel_name(prefix: str, identity: Iterable[tuple[str, str]], name: str) -> str:
    """The channel of a reading: the prefix, the identity tags' values, the field's name."""
    return ".".join([prefix, *(value for _, value in identity), name])


def placeholder(tag: str) -> str:
    """How a tag whose value only the frames know is shown in a listed name."""
    return "{" + tag + "}"


@dataclass(frozen=True, slots=True)
class PlannedChannel:
    """A channel a source will produce, its frame-given parts shown as ``{tag}``."""

    pattern: str
    measurement: str
    field: str
    unit: str
    kind: str
    same_as: str = ""
    """Frame tags the source also sets, with its values (``sensor=sht41-ep1``): ``pattern`` is
    the name while the frames agree, ``other`` the name of frames that say otherwise."""
    other: str = ""

    @property
    def patterns(self) -> tuple[str, ...]:
        """Every name this channel may take."""
        return (self.pattern, self.other) if self.other else (self.pattern,)


def planned_channels(
    cfg: SerialSourceConfig | MqttSourceConfig, profile: Profile, templates: Iterable[str] = ()
) -> list[PlannedChannel]:
    """The channels of a serial or MQTT source, named by the rule the running source uses:
    each reading's tags pass through ``split_tags`` and ``channel_name`` exactly as in
    ``FrameHandler``, with ``{tag}`` for what only the frames say. ``templates``: an MQTT
    source's topic templates (each is decoded on its own)."""
    base = cfg.base_tags()
    prefix = cfg.prefix()
    out: dict[str, PlannedChannel] = {}
    chosen: list[str | None] = [*templates]
    for template in chosen or [None]:
        decoder = Decoder(profile, tags=base, sensor=cfg.sensor, topic=template)
        given = decoder.frame_tags()
        unknown = {**decoder.tags, **{tag: placeholder(tag) for tag in given}}
        agreeing = {**unknown, **{tag: decoder.tags[tag] for tag in given if tag in decoder.tags}}
        same_as = ", ".join(f"{t}={decoder.tags[t]}" for t in sorted(given) if t in decoder.tags)
        for field in profile.fields:
            other = channel_name(prefix, split_tags(unknown, base)[0], field.channel)
            usual = channel_name(prefix, split_tags(agreeing, base)[0], field.channel)
            out.setdefault(
                usual,
                PlannedChannel(
                    usual, field.measurement, field.field, field.unit, field.kind,
                    same_as, other if other != usual else "",
                ),
            )  # fmt: skip
    return list(out.values())
