"""A real SMTP server for the tests: aiosmtpd on a free 127.0.0.1 port, in its own thread.

``MailServer`` keeps every mail it accepted (envelope and parsed message), can require a login
and STARTTLS, or speak implicit TLS, and can refuse the next N mails with a temporary error
(451), as a real server under load does. ``self_signed`` makes a certificate for 127.0.0.1 with
Debian's openssl.
"""

from __future__ import annotations

import email
import email.policy
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from servers import LOOPBACK, MissingBinaryError, free_port


def self_signed(workdir: Path) -> tuple[Path, Path]:
    """(certificate, key) for CN localhost, IP 127.0.0.1, valid one day."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise MissingBinaryError("openssl not found: apt-get install -y openssl")
    cert, key = workdir / "smtp-cert.pem", workdir / "smtp-key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@dataclass
class Received:
    """One mail the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: str

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def text(self) -> str:
        """The plain-text part."""
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None, "no text/plain part"
        return str(part.get_content())  # type: ignore[attr-defined]

    def html(self) -> str:
        """The HTML part."""
        part = self.message.get_body(preferencelist=("html",))
        assert part is not None, "no text/html part"
        return str(part.get_content())  # type: ignore[attr-defined]

    def notice_keys(self) -> list[str]:
        """The delivery keys this mail carries (X-Driftgate-Notices)."""
        return [k.strip() for k in str(self.message["X-Driftgate-Notices"]).split(",")]


@dataclass
class _Handler:
    refuse: int = 0  # the next N mails get 451
    refused: int = 0
    mails: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.refuse > 0:
                self.refuse -= 1
                self.refused += 1
                return "451 4.3.0 Try again later"
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            login = session.auth_data.login.decode() if session.authenticated else ""
            self.mails.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    message,
                    tls_used(server, session),
                    login,
                )
            )
            self.arrived.set()
        return "250 OK"


class MailServer:
    """aiosmtpd on 127.0.0.1: ``with MailServer() as smtp: … smtp.port, smtp.mails``."""

    def __init__(
        self,
        *,
        port: int | None = None,
        login: tuple[str, str] | None = None,
        starttls: tuple[Path, Path] | None = None,
        implicit_tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.handler = _Handler()
        kwargs: dict[str, Any] = {}
        if starttls is not None:
            kwargs.update(tls_context=_server_context(*starttls), require_starttls=True)
        if login is not None:
            user, password = login

            def authenticate(
                server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
            ) -> AuthResult:
                ok = isinstance(auth_data, LoginPassword) and (
                    auth_data.login.decode(),
                    auth_data.password.decode(),
                ) == (user, password)
                return AuthResult(success=ok, handled=False, auth_data=auth_data)

            kwargs.update(
                auth_required=True,
                authenticator=authenticate,
                auth_require_tls=starttls is not None or implicit_tls is not None,
            )
        if implicit_tls is not None:
            kwargs.update(ssl_context=_server_context(*implicit_tls))
        self.controller = Controller(self.handler, hostname=LOOPBACK, port=self.port, **kwargs)

    def start(self) -> Self:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def refuse(self, count: int) -> None:
        """Answer the next ``count`` mails with 451 (try again later)."""
        with self.handler.lock:
            self.handler.refuse = count

    @property
    def mails(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.mails)


def tls_used(server: Any, session: Any) -> bool:
    """Whether the SMTP session is encrypted: by STARTTLS, or implicit TLS from the start."""
    return session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context
