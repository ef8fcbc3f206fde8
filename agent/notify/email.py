"""E-mail through an SMTP server (aiosmtplib): STARTTLS or implicit TLS, login when configured.

A recipient's notices that fall due within ``batch_window`` go out in one mail. The outbox is
the only memory: a recipient's mail leaves once the oldest of its pending deliveries was queued
``batch_window`` ago; until then the target answers ``NotYet`` for all of them, which leaves them
due in ``state_dir/incidents.sqlite``. After a restart the same rule holds on what was stored
(their ``created_ns``), so a batch survives it and a window that passed meanwhile sends at once.

The ``Message-ID`` is derived from the deliveries' keys: the same notices re-sent after a lost
answer make a mail with the same ``Message-ID``, which mail clients recognise as the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Callable, Sequence
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate

import aiosmtplib

from agent.config.notify import EmailTarget
from agent.incidents.store import Delivery
from agent.notify import text
from agent.notify.outbox import NotTried, NotYet
from agent.notify.text import Origin

_CONNECTION_ERRORS = (
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    TimeoutError,
    OSError,
)


class EmailError(Exception):
    """The SMTP server did not take a mail; the message says what to check."""


def message_id(keys: Sequence[str], sender: str) -> str:
    """'<driftgate.<hash of the keys>@<sender's domain>>': the same notices, the same id."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:32]
    return f"<driftgate.{digest}@{sender.rpartition('@')[2]}>"


class Email:
    """Sends notices as e-mail through one SMTP server, batched per recipient."""

    def __init__(
        self, cfg: EmailTarget, origin: Origin, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.origin = origin
        self.clock = clock  # the wall clock, as the outbox stamps created_ns
        self._tls: ssl.SSLContext | None = None
        if cfg.tls or cfg.starttls:
            cafile = str(cfg.ca_file) if cfg.ca_file is not None else None
            self._tls = ssl.create_default_context(cafile=cafile)

    # -- what a mail is ------------------------------------------------------------------------

    def compose(self, deliveries: Sequence[Delivery]) -> EmailMessage:
        """One mail to one recipient (or the default list) with these deliveries' notices."""
        cfg, origin = self.cfg, self.origin
        items = [(d.key, d.body) for d in deliveries]
        bodies = [body for _, body in items]
        msg = EmailMessage(policy=SMTP_POLICY)
        msg["Subject"] = text.subject(bodies, origin)
        msg["From"] = Address(display_name=f"driftgate {origin.where}", addr_spec=cfg.sender)
        msg["To"] = ", ".join(self.recipients(deliveries[0].recipient))
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = message_id([d.key for d in deliveries], cfg.sender)
        domain = cfg.sender.rpartition("@")[2]
        incidents = dict.fromkeys(str(b.get("id")) for b in bodies)
        # Mail clients thread every notice of one incident together.
        msg["References"] = " ".join(f"<incident.{i}.{origin.gateway}@{domain}>" for i in incidents)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to it
        msg["X-Driftgate-Notices"] = ", ".join(d.key for d in deliveries)
        msg.set_content(text.plain(items, origin))
        msg.add_alternative(text.rich(items, origin), subtype="html")
        return msg

    def recipients(self, recipient: str) -> list[str]:
        """A delivery's addresses: its own, or the target's default ``to:``."""
        return [recipient] if recipient else list(self.cfg.to)

    # -- sending -------------------------------------------------------------------------------

    async def send(self, deliveries: Sequence[Delivery]) -> Sequence[BaseException | None]:
        """One mail per recipient whose batch window has passed; the others are held (NotYet).
        A failure is reported on the mail's first delivery, its others and every later mail
        wait (NotTried), so a batch is retried whole and in order."""
        results: list[BaseException | None] = [None] * len(deliveries)
        now = self.clock()
        window = int(self.cfg.batch_window * 1e9)
        groups: dict[str, list[int]] = {}
        for i, delivery in enumerate(deliveries):
            groups.setdefault(delivery.recipient, []).append(i)
        ready: list[list[int]] = []
        for recipient, indices in groups.items():
            oldest = min(deliveries[i].created_ns for i in indices)
            if oldest > 0 and now - oldest < window:  # 0: unknown (a test notice), send now
                until = oldest + window
                why = f"held for one mail to {recipient or 'the default recipients'}"
                for i in indices:
                    results[i] = NotYet(why, until)
            else:
                ready.append(indices)
        if not ready:
            return results
        smtp: aiosmtplib.SMTP | None = None
        try:
            smtp = await self._connect()
            for n, indices in enumerate(ready):
                mail = [deliveries[i] for i in indices]
                try:
                    await self._deliver(smtp, mail)
                except _CONNECTION_ERRORS as exc:
                    self._failed(results, indices, self._why(exc, "sending"))
                    for later in ready[n + 1 :]:
                        for i in later:
                            results[i] = NotTried("an earlier mail failed: the server is away")
                    break
                except Exception as exc:
                    # Refused for this mail (a recipient, its size), or a notice that cannot
                    # become a mail: the other recipients go on, the worker lives.
                    self._failed(results, indices, self._why(exc, "sending"))
        except (*_CONNECTION_ERRORS, aiosmtplib.SMTPException, ssl.SSLError) as exc:
            error = self._why(exc, "connecting")
            self._failed(results, [i for indices in ready for i in indices], error)
        finally:
            if smtp is not None:
                await self._quit(smtp)
        return results

    @staticmethod
    def _failed(results: list[BaseException | None], indices: list[int], error: EmailError) -> None:
        first, *rest = sorted(indices)
        results[first] = error
        for i in rest:
            results[i] = NotTried("in the same mail as a notice that failed")

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self.cfg
        smtp = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            use_tls=cfg.tls,
            start_tls=cfg.starttls and not cfg.tls,
            tls_context=self._tls,
            timeout=cfg.timeout,
        )
        try:
            # aiosmtplib bounds each step by cfg.timeout; this bounds the whole of them.
            async with asyncio.timeout(cfg.timeout * 3):
                await smtp.connect()
                if cfg.username is not None:
                    password = cfg.password.get_secret_value() if cfg.password else ""
                    await smtp.login(cfg.username, password)
        except BaseException:
            smtp.close()  # half open (greeted, refused the login, timed out): not left behind
            raise
        return smtp

    async def _deliver(self, smtp: aiosmtplib.SMTP, deliveries: Sequence[Delivery]) -> None:
        recipients = self.recipients(deliveries[0].recipient)
        if not recipients:  # queued for the default list, which the config no longer has
            raise EmailError(f"no recipients: give target {self.name!r} `to:` addresses again")
        msg = self.compose(deliveries)
        async with asyncio.timeout(self.cfg.timeout * 2):
            await smtp.send_message(msg, sender=self.cfg.sender, recipients=recipients)

    async def _quit(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            async with asyncio.timeout(self.cfg.timeout):
                if smtp.is_connected:
                    await smtp.quit()
        except (*_CONNECTION_ERRORS, aiosmtplib.SMTPException):
            pass  # the mails went out (or not) already: a failed goodbye changes nothing
        finally:
            smtp.close()

    def _why(self, exc: BaseException, doing: str) -> EmailError:
        """What failed, in words that say what to check (never the password)."""
        if isinstance(exc, EmailError):
            return exc
        cfg = self.cfg
        server = f"SMTP server {cfg.host}:{cfg.port}"
        detail = str(exc).strip() or type(exc).__name__
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            return EmailError(
                f"{server} refused the login of {cfg.username!r} ({detail}): check the username "
                "and the password (password_file, DRIFTGATE_SMTP_PASSWORD or the smtp_password "
                "credential)"
            )
        if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY" in detail:
            return EmailError(
                f"{server}: its TLS certificate is not trusted ({detail}): give the target "
                "ca_file: the CA (or the server's own certificate) if it is a private server"
            )
        if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
            return EmailError(f"{server} did not answer within {cfg.timeout:g} s while {doing}")
        if isinstance(exc, aiosmtplib.SMTPException) and "STARTTLS" in detail.upper():
            return EmailError(
                f"{server} offers no STARTTLS ({detail}): use its TLS port with tls: true, or "
                "starttls: false only for a relay on a trusted network"
            )
        if isinstance(exc, aiosmtplib.SMTPException) and "AUTH" in detail.upper():
            return EmailError(
                f"{server} offers no login ({detail}): leave username out if the server takes "
                "mail without one, or use its submission port (587) with STARTTLS"
            )
        if isinstance(exc, aiosmtplib.SMTPResponseException | aiosmtplib.SMTPRecipientsRefused):
            return EmailError(f"{server} refused the mail ({detail})")
        if isinstance(exc, _CONNECTION_ERRORS):
            return EmailError(
                f"cannot reach {server} ({type(exc).__name__}: {detail}) while {doing}: check "
                "the target's host and port, and that the server runs"
            )
        if isinstance(exc, aiosmtplib.SMTPException):
            return EmailError(f"{server}: {detail} (while {doing})")
        return EmailError(f"the mail could not be made or sent ({type(exc).__name__}: {detail})")

    async def close(self) -> None:
        """Nothing stays open between rounds (one connection per round of mails)."""
