"""The delivery targets a config names, built by type."""

from __future__ import annotations

from agent.config.models import AgentConfig
from agent.config.notify import AppriseTarget, EmailTarget, WebhookTarget
from agent.config.notify import Target as TargetConfig
from agent.errors import ConfigError
from agent.notify.outbox import Target
from agent.notify.text import Origin
from agent.notify.webhook import Webhook


def make_target(cfg: TargetConfig, origin: Origin | None = None) -> Target:
    """The target for one ``notify.targets`` entry; ``origin`` names the site and gateway in
    what people read (mail subjects, chat titles) and says how they acknowledge."""
    origin = origin if origin is not None else Origin(site="driftgate", gateway="")
    if isinstance(cfg, WebhookTarget):
        return Webhook(cfg)
    if isinstance(cfg, EmailTarget):
        from agent.notify.email import Email

        return Email(cfg, origin)
    if isinstance(cfg, AppriseTarget):
        from agent.notify.chat import Chat  # imports apprise (0.3 s): only when configured

        return Chat(cfg, origin)
    raise ConfigError([f"notify.targets: {cfg.name}: type {cfg.type} is not available yet"])


def origin_of(cfg: AgentConfig) -> Origin:
    """Where an agent's notices come from, and how people acknowledge them there."""
    return Origin(
        site=cfg.site, gateway=cfg.gateway, state_dir=str(cfg.state_dir), mqtt=cfg.mqtt is not None
    )
