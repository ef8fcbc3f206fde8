"""The delivery targets a config names, built by type."""

from __future__ import annotations

from agent.config.notify import Target as TargetConfig
from agent.config.notify import WebhookTarget
from agent.errors import ConfigError
from agent.notify.outbox import Target
from agent.notify.webhook import Webhook


def make_target(cfg: TargetConfig) -> Target:
    """The target for one ``notify.targets`` entry."""
    if isinstance(cfg, WebhookTarget):
        return Webhook(cfg)
    raise ConfigError([f"notify.targets: {cfg.name}: type {cfg.type} is not available yet"])
