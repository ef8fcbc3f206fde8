"""The MQTT source: devices publishing to the agent's broker (ESPHome, Tasmota, custom JSON).

The agent's one ``MqttLink`` owns the connection; a source only registers its topic filters
and decodes what arrives. A configured topic is a template: ``{name}`` levels are matched by
``+`` in the subscription and become tags on the readings (``{field}`` picks an ESPHome
field), so ``factory/{zone}/tele/{sensor}/SENSOR`` subscribes to ``factory/+/tele/+/SENSOR``
and tags each reading with its zone and sensor. MQTT's own ``+`` and ``#`` may be used for
levels that are not tags. Without ``topics`` the profile's template is used.
"""

from __future__ import annotations

import asyncio
import re

from aiomqtt import Wildcard

from agent.channels import ChannelRegistry
from agent.config import MqttSourceConfig
from agent.errors import ConfigError
from agent.ingest.broker import MessageHandler, MqttLink
from agent.ingest.decode import Decoder
from agent.ingest.frames import FrameHandler, MeasurementSink, SourceHealth
from agent.ingest.profiles import Profile, load_profile
from agent.pipeline import Pipeline
from agent.reading import Channel

__all__ = ["MqttSource", "subscription_filter"]

_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


def subscription_filter(template: str) -> str:
    """The MQTT filter for a topic template: each level holding a ``{name}`` becomes ``+``."""
    levels = template.split("/")
    return "/".join("+" if _PLACEHOLDER.search(level) else level for level in levels)


def _on_message(handler: FrameHandler) -> MessageHandler:
    frame = handler.frame

    def on_message(topic: str, payload: bytes, received_ns: int) -> None:
        frame(payload, topic, received_ns)

    return on_message


class MqttSource:
    """One kind of device on the broker, decoded with one profile."""

    def __init__(
        self,
        cfg: MqttSourceConfig,
        link: MqttLink,
        pipeline: Pipeline,
        registry: ChannelRegistry,
        *,
        profile: Profile | None = None,
        measurements: MeasurementSink | None = None,
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.link = link
        self.health = SourceHealth()
        self.profile = profile or load_profile(cfg.profile)
        self.templates = self.topic_templates(cfg, self.profile)
        self.handlers: list[FrameHandler] = []
        for template in self.templates:
            decoder = Decoder(self.profile, tags=cfg.base_tags(), sensor=cfg.sensor, topic=template)
            handler = FrameHandler(
                cfg.name,
                decoder,
                pipeline,
                registry,
                prefix=cfg.prefix(),
                base_tags=cfg.base_tags(),
                health=self.health,
                measurements=measurements,
            )
            self.handlers.append(handler)
            link.subscribe(subscription_filter(template), cfg.qos, _on_message(handler))
        link.watchers.append(self.health)

    @staticmethod
    def topic_templates(cfg: MqttSourceConfig, profile: Profile) -> list[str]:
        """The topic templates of a source (its own, else its profile's); ConfigError if one
        cannot be subscribed to or does not fit the profile."""
        where = f"sources.{cfg.name}"
        if profile.transport != "mqtt":
            raise ConfigError(
                [
                    f"{where}.profile: {profile.name} is a serial device profile; an mqtt "
                    "source needs an MQTT profile (framing: message)"
                ]
            )
        default = profile.topic_template
        templates = list(cfg.topics) or ([default] if default else [])
        if not templates:
            raise ConfigError(
                [f"{where}.topics: profile {profile.name} has no topic: list the topics"]
            )
        problems = []
        for index, template in enumerate(templates):
            try:
                Wildcard(subscription_filter(template))
            except ValueError:
                problems.append(f"{where}.topics[{index}]: {template!r} is not a topic filter")
            if profile.format.type == "esphome" and "{field}" not in template:
                problems.append(
                    f"{where}.topics[{index}]: an ESPHome topic needs {{field}} "
                    "(the sensor's object id), e.g. {sensor}/sensor/{field}/state"
                )
        if problems:
            raise ConfigError(problems)
        return templates

    @property
    def filters(self) -> list[str]:
        """The subscriptions this source asked the link for."""
        return [subscription_filter(t) for t in self.templates]

    def channels(self) -> list[Channel]:
        """None up front: channels appear as devices publish."""
        return []

    async def run(self, pipeline: Pipeline) -> None:
        """Nothing to do: the link hands this source's messages to its frame handlers."""
        del pipeline
        await asyncio.Event().wait()
