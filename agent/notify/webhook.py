"""A plain JSON webhook: one POST per notice, with an ``Idempotency-Key`` header, so a receiver
that saw a notice before (a retry after a lost answer, a restart) can tell it is the same one.

The body is the standard notice (``Notice.body``: id, transition, severity, sentence, details,
action, context, …) or the target's ``template``: JSON text in which ``$name`` is replaced by
that field, JSON-escaped (``{"text": "$sentence", "level": "$severity"}``).
"""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Sequence
from typing import Any

import aiohttp

from agent.config.notify import WebhookTarget
from agent.incidents.store import Delivery
from agent.notify.outbox import NotTried


class WebhookError(Exception):
    """The endpoint did not take the notice (no answer, or not a 2xx status)."""


def render(template: str | None, body: dict[str, Any]) -> bytes:
    """The request body: the standard JSON, or the template with its fields filled in."""
    if template is None:
        return json.dumps(body, ensure_ascii=False).encode()
    values = {k: json.dumps(v if isinstance(v, str) else json.dumps(v))[1:-1] for k, v in
              body.items()}  # fmt: skip
    return string.Template(template).safe_substitute(values).encode()


class Webhook:
    """POSTs notices to one URL."""

    def __init__(self, cfg: WebhookTarget) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.cfg.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout, trust_env=False)
        return self._session

    async def send(self, deliveries: Sequence[Delivery]) -> Sequence[BaseException | None]:
        """One POST per delivery, in order; stops at the first failure (the rest wait)."""
        results: list[BaseException | None] = []
        session = self._open()
        for i, delivery in enumerate(deliveries):
            headers = {"Content-Type": "application/json", "Idempotency-Key": delivery.key,
                       **self.cfg.headers}  # fmt: skip
            try:
                async with session.post(
                    self.cfg.url, data=render(self.cfg.template, delivery.body), headers=headers
                ) as resp:
                    if 200 <= resp.status < 300:
                        results.append(None)
                        continue
                    text = (await resp.text())[:200]
                    error: BaseException = WebhookError(f"HTTP {resp.status}: {text}")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = WebhookError(f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc))
            # In order: the ones after a failure wait for the next round (not sent out of turn).
            results.append(error)
            results += [NotTried("an earlier notice to this URL failed")] * (
                len(deliveries) - i - 1
            )
            break
        return results

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0)
