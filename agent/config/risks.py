"""Settings that work but expose the gateway: warned about by `check-config` and at every start.

They are warnings, not refusals. Each is a choice an operator can have good reason for inside a
plant network (a self-signed InfluxDB on the LAN, a broker reachable only over a VPN), and a
refusal would turn an upgrade into a data outage: the service never restarts after a
configuration error, so the devices' readings would be lost while nobody looks. A warning at
every start lands in the journal and in `check-config`, with the fix.
"""

import ipaddress
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from agent.config.base import Loc
from agent.config.models import AgentConfig

__all__ = ["Risk", "risks"]


@dataclass(frozen=True, slots=True)
class Risk:
    """One exposing setting: where it is, a fixed event text (for logs) and the details."""

    loc: Loc
    event: str
    detail: str


SECRET_READABLE = "secret file readable by every user"
PLAIN_HTTP_PASSWORD = "password sent over plain http:// to another host"
PLAIN_MQTT_PASSWORD = "password sent over plain MQTT to another host"
TLS_UNVERIFIED = "TLS certificates are not verified"
STATUS_PLAIN_HTTP = "status page logins sent over plain http"


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _world_readable(loc: Loc, path: Path | None) -> list[Risk]:
    if path is None:
        return []
    try:
        mode = path.stat().st_mode
    except OSError:
        return []  # validation already read it; gone since is not a permission question
    if not mode & stat.S_IROTH:
        return []
    return [
        Risk(
            loc,
            SECRET_READABLE,
            f"{path} has mode {stat.filemode(mode)}: every account on the gateway can read the "
            f"secret; chmod 600 {path} (owner driftgate), or 640 with group driftgate",
        )
    ]


def risks(cfg: AgentConfig) -> list[Risk]:
    """The exposing settings of ``cfg`` (the loader puts them in file order)."""
    found: list[Risk] = []
    influx = cfg.influx
    if influx is not None:
        found += _world_readable(("influx", "password_file"), influx.password_file)
        found += _world_readable(("influx", "token_file"), influx.token_file)
        url = urlsplit(influx.url)
        secret = "password" if influx.password is not None else "token" if influx.token else None
        if secret and url.scheme == "http" and not _loopback(url.hostname):
            found.append(
                Risk(
                    ("influx", "url"),
                    PLAIN_HTTP_PASSWORD,
                    f"the InfluxDB {secret} goes unencrypted to {url.hostname}: anyone on the "
                    "network path can read it; use https:// (with ca_file for a private CA)",
                )
            )
        if not influx.verify_tls:
            found.append(
                Risk(
                    ("influx", "verify_tls"),
                    TLS_UNVERIFIED,
                    "verify_tls: false accepts any server that answers: a machine in between "
                    "can read the credentials and change the data; give the server's CA in "
                    "ca_file instead",
                )
            )
    mqtt = cfg.mqtt
    if mqtt is not None:
        found += _world_readable(("mqtt", "password_file"), mqtt.password_file)
        tls = mqtt.tls or mqtt.ca_file is not None or mqtt.cert_file is not None
        if mqtt.password is not None and not tls and not _loopback(mqtt.host):
            found.append(
                Risk(
                    ("mqtt", "host"),
                    PLAIN_MQTT_PASSWORD,
                    f"the MQTT password goes unencrypted to {mqtt.host}: anyone on the network "
                    "path can read it; set tls: true (port 8883, ca_file for a private CA)",
                )
            )
    status = cfg.status
    if status.enabled:
        # A line's PIN has 10,000 values: whoever reads its scrypt hash has it within minutes.
        users = status.users_file or cfg.state_dir / "status-users"
        found += _world_readable(("status", "users_file"), users if users.exists() else None)
    if status.enabled and status.tls_cert_file is None and not _loopback(status.address[0]):
        found.append(
            Risk(
                ("status", "listen"),
                STATUS_PLAIN_HTTP,
                f"the status page listens on {status.listen}: passwords and PINs typed into it "
                "cross the network unencrypted, and a login can be taken off the wire; set "
                "status.tls_cert_file and status.tls_key_file (reading needs no login)",
            )
        )
    return found
