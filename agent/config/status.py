"""The gateway's own status page (``status:``): where it listens, who may act on it."""

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from agent.config.base import ConfigPath, Duration, ExistingFile, Section, raise_problems, reason
from agent.config.bounds import within

DEFAULT_PORT = 8765
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"


def split_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8765`` for IPv6) → (host, port); ValueError with the reason."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: write an IPv6 address as [::1]:{DEFAULT_PORT}")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} has no port: write e.g. 0.0.0.0:{DEFAULT_PORT}")
    if not host:
        raise ValueError(f"{text!r} has no address: write 0.0.0.0:{port} for every interface")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{text!r}: the port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{text!r}: the port must be 0 to 65535 (0: any free port)")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"{text!r}: {host!r} is not an IP address; the page listens on an address of "
                "this gateway: 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or one "
                "interface's address"
            ) from None
    return host, number


def _listen(v: str) -> str:
    try:
        split_listen(v)
    except ValueError as exc:
        raise reason(str(exc)) from None
    return v.strip()


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach an address the page listens on."""
    if host == "localhost":
        return True
    return ipaddress.ip_address(host).is_loopback


class StatusConfig(Section):
    """The status page, ``driftgate status``, /healthz and /metrics, served by the agent."""

    enabled: bool = True
    listen: Annotated[str, AfterValidator(_listen)] = Field(
        default=DEFAULT_LISTEN,
        description="address:port; 127.0.0.1 is this machine only, 0.0.0.0 opens it on the LAN",
    )
    users_file: ConfigPath | None = Field(
        default=None,
        description="logins and line PINs (driftgate users add); default <state_dir>/status-users",
    )
    session: Annotated[Duration, within("status.session")] = Field(
        default=12 * 3600.0, description="a login lasts this long (a shift)"
    )
    health_grace: Annotated[Duration, within("status.health_grace")] = Field(
        default=60.0,
        description="/healthz answers 503 once a source or InfluxDB has been down this long",
    )
    tls_cert_file: ExistingFile | None = Field(
        default=None, description="serve https:// with this certificate (PEM)"
    )
    tls_key_file: ExistingFile | None = Field(default=None, description="its private key (PEM)")

    @model_validator(mode="after")
    def _tls_pair(self) -> "StatusConfig":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = (
                ("tls_cert_file", "tls_key_file")
                if self.tls_key_file is None
                else ("tls_key_file", "tls_cert_file")
            )
            raise_problems("StatusConfig", [((missing,), f"{given} needs {missing} too")])
        return self

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to listen on."""
        return split_listen(self.listen)

    @property
    def scheme(self) -> str:
        """http or https."""
        return "https" if self.tls_cert_file is not None else "http"
