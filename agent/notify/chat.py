"""Chat and push services through apprise (Teams, Slack, ntfy, Telegram, SMS gateways, …).

One short message per notice (the sentence, the incident, how to acknowledge) to every URL of
the target's ``urls_file``. Each URL is its own apprise instance, so one dead service does not
hold the others back: a URL that failed is skipped for the rest of the round (its notices stay
in order), and a notice is retried only on the URLs that have not taken it yet (remembered while
the agent runs; after a restart a notice half delivered goes to all its URLs again).

The URLs hold tokens: they are never logged, nor put in an error. A URL is named by its line in
the file and its scheme, and apprise's own logger is silenced (its messages name URLs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.config.notify import AppriseTarget, apprise_urls
from agent.errors import ConfigError
from agent.incidents.store import Delivery
from agent.notify import text
from agent.notify.outbox import NotTried
from agent.notify.text import Origin

if TYPE_CHECKING:
    import apprise

REMEMBERED = 10_000  # half-delivered notices kept in memory, at most


class ChatError(Exception):
    """A service did not take a notice; the message names it by line and scheme, not by URL."""


@dataclass(slots=True)
class _Service:
    line: int
    scheme: str
    app: apprise.Apprise


def _quiet_apprise() -> None:
    # apprise logs the URLs it posts to (tokens in the path) and the exceptions that quote
    # them: none of it may reach a log, whoever configures the logging module.
    logger = logging.getLogger("apprise")
    logger.disabled = True
    logger.propagate = False
    # requests' urllib3 logs each request line, the path with its token, at debug level.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)


class Chat:
    """Sends each notice as a short message to every apprise URL of a file."""

    def __init__(self, cfg: AppriseTarget, origin: Origin) -> None:
        import apprise

        _quiet_apprise()
        self.name = cfg.name
        self.cfg = cfg
        self.origin = origin
        where = f"notify.targets: {cfg.name}: urls_file {cfg.urls_file}"
        try:
            content = cfg.urls_file.read_text(encoding="utf-8")
            urls = apprise_urls(content)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError([f"{where}: {exc}"]) from None
        if not urls:
            raise ConfigError([f"{where}: no URL in it: write one apprise URL per line"])
        asset = apprise.AppriseAsset(app_id="driftgate", app_desc="driftgate notices")
        self.services: list[_Service] = []
        for line, url in urls:
            app = apprise.Apprise(asset=asset)
            scheme = url.split("://", 1)[0].lower()
            if not app.add(url):
                raise ConfigError([
                    f"{where}: line {line}: apprise cannot use this {scheme}:// URL: check it "
                    "against the service's page in the apprise wiki "
                    "(https://github.com/caronc/apprise/wiki)"
                ])  # fmt: skip
            self.services.append(_Service(line, scheme, app))
        self._took: dict[str, set[int]] = {}  # delivery key -> lines that took it already

    async def send(self, deliveries: Sequence[Delivery]) -> Sequence[BaseException | None]:
        """Each notice to each URL, in order; a URL that fails is left alone until next round."""
        import apprise

        results: list[BaseException | None] = []
        down: set[int] = set()  # lines that failed this round: their later notices wait
        for delivery in deliveries:
            title, body = text.chat(delivery.body, self.origin)
            kind = {"alarm": apprise.NotifyType.FAILURE, "warn": apprise.NotifyType.WARNING,
                    "ok": apprise.NotifyType.SUCCESS}.get(str(delivery.body.get("severity")),
                                                          apprise.NotifyType.INFO)  # fmt: skip
            took = self._took.setdefault(delivery.key, set())
            failed: list[str] = []
            waiting = False
            for service in self.services:
                if service.line in took:
                    continue
                if service.line in down:
                    waiting = True
                    continue
                why = await self._notify(service, title, body, kind)
                if why:
                    down.add(service.line)
                    failed.append(f"line {service.line} ({service.scheme}://…) {why}")
                else:
                    took.add(service.line)
            if failed:
                results.append(ChatError(
                    f"{self.cfg.urls_file}: {'; '.join(failed)}: test the URL by hand with "
                    "`apprise -vv -t test -b test 'URL'`"
                ))  # fmt: skip
            elif waiting:
                results.append(NotTried("an earlier notice to the same URL failed"))
            else:
                results.append(None)
                del self._took[delivery.key]
        while len(self._took) > REMEMBERED:  # given up by the outbox: forget the oldest
            del self._took[next(iter(self._took))]
        return results

    async def _notify(
        self, service: _Service, title: str, body: str, kind: apprise.NotifyType
    ) -> str:
        """'' when the service took the message, else why not (never the URL)."""
        import apprise

        try:
            async with asyncio.timeout(self.cfg.timeout):
                ok = await service.app.async_notify(
                    body=body, title=title, notify_type=kind, body_format=apprise.NotifyFormat.TEXT
                )
        except TimeoutError:
            return f"did not answer within {self.cfg.timeout:g} s"
        except Exception as exc:  # apprise's own errors may quote the URL: only the type
            return f"failed inside apprise ({type(exc).__name__})"
        return "" if ok else "did not take it (apprise reports a failure)"

    async def close(self) -> None:
        """Nothing to release: apprise opens a connection per message."""
