"""``check-config --online``: try what the agent will need, before it needs it.

- InfluxDB: reachable, the login, and the database (v1) or bucket (v2) exist and take writes:
  an empty write through the agent's own v1 writer, so what it tests is what the forwarder
  does (no point is written);
- the MQTT broker: the login, and every subscription the agent makes (its sources' topics,
  the production context, acknowledgements, the broker's drop counter), each SUBACK's reason
  code read: a broker that refuses a subscription says so there (Mosquitto's dynamic-security
  plugin does; its ``acl_file`` grants every subscription and only drops what it forbids);
  under a client id of its own, so a running agent's session is left alone;
- each serial port (a Modbus RTU bus's too): it exists, is a serial device, and this user
  may open it; a Modbus TCP device or gateway: it takes a connection.

Each probe gives one line: ``ok`` and what was found, or what is wrong and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import grp
import os
import pwd
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from agent.config.models import (
    AgentConfig,
    InfluxConfig,
    ModbusSourceConfig,
    MqttConfig,
    SerialSourceConfig,
)
from agent.ingest.mqtt import subscription_filter
from agent.runtime.plan import SourcePlan

TIMEOUT_S = 5.0
"""How long one probe waits for an answer."""
BY_ID = Path("/dev/serial/by-id")


@dataclass(frozen=True, slots=True)
class Probe:
    """The outcome of trying one thing the agent will need."""

    target: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.target}: {'ok' if self.ok else 'NOT OK'}: {self.detail}"


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


# --------------------------------------------------------------------------- InfluxDB


async def probe_influx(cfg: InfluxConfig) -> Probe:
    """Reachable, logged in, and the database or bucket takes an (empty) write."""
    if cfg.api == "v1":
        return await _probe_v1(cfg)
    return await _probe_v2(cfg)


async def _probe_v1(cfg: InfluxConfig) -> Probe:
    from agent.runtime.agent import forwarder_settings
    from agent.store.forwarder import NO_ANSWER, V1Writer, create_database_command

    target = f"influx {cfg.url} database {cfg.database}"
    # The agent's own writer, told not to create the database: a check changes nothing.
    settings = dataclasses.replace(forwarder_settings(cfg), create_database=False)
    writer = V1Writer(settings)
    try:
        result = await writer.write(b"")
    finally:
        await writer.close()
    user, db = cfg.username, cfg.database
    message = result.message
    if result.status == NO_ANSWER:
        return Probe(
            target,
            False,
            f"cannot reach InfluxDB: {message}; check influx.url, the "
            f"network and the firewall (curl -sS {cfg.url}/ping)",
        )
    if result.status == 204:
        who = f"user {user!r}" if user else "without a login"
        return Probe(target, True, f"{who} may write to database {db!r}")
    if result.status == 401:
        if not user:
            return Probe(
                target,
                False,
                "InfluxDB wants a login (auth-enabled): set influx.username and its password",
            )
        return Probe(
            target,
            False,
            f"InfluxDB refused user {user!r} ({message}): check the "
            "password (password_file, DRIFTGATE_INFLUX_PASSWORD or the "
            "influx_password credential) and the user (SHOW USERS)",
        )
    if result.status == 403:
        return Probe(
            target,
            False,
            f"user {user!r} may not write to database {db!r}: as an "
            f'InfluxDB admin, GRANT WRITE ON "{db}" TO "{user}"',
        )
    if result.status == 404 and "database not found" in message:
        command = create_database_command(cfg.url, db or "")
        if cfg.create_database:
            return Probe(
                target,
                True,
                f"database {db!r} does not exist yet: the agent creates "
                "it at its first write (influx.create_database; the user "
                f"must be an InfluxDB admin, else run {command})",
            )
        return Probe(
            target,
            False,
            f"database {db!r} does not exist: create it with "
            f"{command}, or set influx.create_database: true",
        )
    if "retention policy not found" in message:
        return Probe(
            target,
            False,
            f"retention policy {cfg.retention_policy!r} does not exist "
            f"in database {db!r}: create it, or fix "
            "influx.retention_policy",
        )
    return Probe(target, False, f"InfluxDB answered HTTP {result.status}: {message}")


async def _probe_v2(cfg: InfluxConfig) -> Probe:
    from agent.runtime.agent import forwarder_settings
    from agent.store.forwarder import create_bucket_command, server_message, ssl_context

    target = f"influx {cfg.url} org {cfg.org} bucket {cfg.bucket}"
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if cfg.token is not None:
        headers["Authorization"] = f"Token {cfg.token.get_secret_value()}"
    params = {"org": cfg.org or "", "bucket": cfg.bucket or "", "precision": "ns"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session,
            session.post(
                f"{cfg.url}/api/v2/write",
                params=params,
                data=b"",
                headers=headers,
                ssl=ssl_context(forwarder_settings(cfg)) or True,
            ) as resp,
        ):
            status, message = resp.status, server_message(await resp.text(errors="replace"))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Probe(
            target,
            False,
            f"cannot reach InfluxDB: {type(exc).__name__}: {exc}; "
            "check influx.url, the network and the firewall",
        )
    if status in (200, 204):
        return Probe(target, True, f"the token may write to bucket {cfg.bucket!r}")
    if status == 401:
        return Probe(
            target,
            False,
            f"InfluxDB refused the token ({message}): check token_file, "
            "DRIFTGATE_INFLUX_TOKEN or the influx_token credential",
        )
    if status == 403:
        return Probe(
            target,
            False,
            f"the token may not write to bucket {cfg.bucket!r}: give it "
            "write permission on the bucket",
        )
    if status == 404:
        command = create_bucket_command(cfg.org or "", cfg.bucket or "")
        return Probe(
            target,
            False,
            f"bucket {cfg.bucket!r} or org {cfg.org!r} not found "
            f"({message}): create it with {command}, or fix influx.org "
            "and influx.bucket",
        )
    return Probe(target, False, f"InfluxDB answered HTTP {status}: {message}")


# --------------------------------------------------------------------------- the broker


def broker_subscriptions(cfg: AgentConfig, plans: Sequence[SourcePlan]) -> dict[str, str]:
    """Every topic filter the agent subscribes to, with what it is for."""
    from agent.ingest.broker import DROPPED_TOPIC, MqttLink
    from agent.metrics import AgentMetrics

    assert cfg.mqtt is not None
    link = MqttLink(cfg.mqtt, site=cfg.site, gateway=cfg.gateway, metrics=AgentMetrics())
    out: dict[str, str] = {}
    for plan in plans:
        for template in plan.topics:
            out.setdefault(subscription_filter(template), f"source {plan.name}")
    out.setdefault(link.context_filter, "the production context")
    out.setdefault(f"driftgate/{cfg.site}/{cfg.gateway}/incidents/+/ack", "acknowledgements")
    if cfg.mqtt.watch_dropped:
        out.setdefault(DROPPED_TOPIC, "the broker's drop counter")
    return out


async def probe_broker(cfg: AgentConfig, plans: Sequence[SourcePlan]) -> list[Probe]:
    """Log in as the agent does, then subscribe to every filter it uses; read each SUBACK."""
    import aiomqtt
    from paho.mqtt.subscribeoptions import SubscribeOptions

    from agent.ingest.broker import AUTH_FAILURES, tls_parameters

    mqtt: MqttConfig | None = cfg.mqtt
    assert mqtt is not None
    target = f"mqtt {mqtt.host}:{mqtt.port}"
    who = f"user {mqtt.username!r}" if mqtt.username else "anonymous"
    wanted = broker_subscriptions(cfg, plans)
    client = aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        username=mqtt.username,
        password=mqtt.password.get_secret_value() if mqtt.password else None,
        identifier=f"{mqtt.client_id or f'driftgate-{cfg.site}-{cfg.gateway}'}-check",
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=True,
        keepalive=mqtt.keepalive,
        tls_params=tls_parameters(mqtt),
        timeout=TIMEOUT_S,
    )
    refused: list[Probe] = []
    try:
        async with asyncio.timeout(TIMEOUT_S * (2 + len(wanted))), client:
            for topic_filter, why in wanted.items():
                options = SubscribeOptions(
                    qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND
                )
                granted = await client.subscribe(topic_filter, options=options)
                codes = [code for code in granted if getattr(code, "value", code) >= 0x80]
                if codes:
                    refused.append(
                        Probe(
                            f"{target} subscribe {topic_filter}",
                            False,
                            f"the broker refused {who} the subscription for {why}: {codes[0]} "
                            f"({getattr(codes[0], 'value', codes[0])}); allow it in the "
                            "broker's ACL (read access to the topic)",
                        )
                    )
    except aiomqtt.MqttCodeError as exc:
        value = getattr(exc.rc, "value", exc.rc)
        if isinstance(value, int) and value in AUTH_FAILURES:
            return [
                Probe(
                    target,
                    False,
                    f"the broker refused the login of {who}: {exc}; check "
                    "mqtt.username and the password (password_file, "
                    "DRIFTGATE_MQTT_PASSWORD or the mqtt_password "
                    "credential) and the broker's password file",
                )
            ]
        return [Probe(target, False, f"the broker refused the connection: {exc}")]
    except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
        return [
            Probe(
                target,
                False,
                f"cannot reach the broker: {exc or type(exc).__name__}; "
                "check mqtt.host, mqtt.port and mqtt.tls, and the "
                "network",
            )
        ]
    if refused:
        return [Probe(target, True, f"{who} logged in"), *refused]
    return [
        Probe(
            target,
            True,
            f"{who} logged in; {len(wanted)} subscriptions granted: {', '.join(wanted)}",
        )
    ]


# --------------------------------------------------------------------------- serial ports


def probe_serial(sc: SerialSourceConfig | ModbusSourceConfig) -> Probe:
    """The port exists, is a serial device, and this user may open it (opened and closed at
    once: a board that resets when its port is opened, as some Arduinos do, restarts)."""
    assert sc.port is not None
    target = f"{'serial' if sc.type == 'serial' else 'modbus'} {sc.name} {sc.port}"
    user = _user()
    port = Path(sc.port)
    try:
        port.stat()
    except PermissionError:
        return Probe(
            target,
            False,
            f"user {user} may not reach it (a directory on the way is "
            "closed to it): fix sources[].port or the permissions",
        )
    except OSError:
        present = sorted(str(p) for p in BY_ID.iterdir()) if BY_ID.is_dir() else []
        seen = f"present: {', '.join(present)}" if present else f"{BY_ID} lists none"
        return Probe(
            target,
            False,
            f"no such device: unplugged, or the path is wrong ({seen}); fix sources[].port",
        )
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except PermissionError:
        info = port.stat()
        group = _group(info.st_gid)
        return Probe(
            target,
            False,
            f"user {user} may not open it ({stat.filemode(info.st_mode)} "
            f"{_owner(info.st_uid)}:{group}): sudo usermod -aG {group} "
            f"{user}, then restart the service",
        )
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return Probe(
                target,
                False,
                "busy: another program holds the port (a terminal program, ModemManager); stop it",
            )
        return Probe(target, False, f"cannot open it: {exc.strerror or exc}")
    try:
        if not os.isatty(fd):
            return Probe(target, False, "not a serial device: fix sources[].port")
    finally:
        os.close(fd)
    return Probe(target, True, f"user {user} may open it")


async def probe_modbus_tcp(sc: ModbusSourceConfig) -> Probe:
    """A Modbus TCP device or gateway takes a connection (closed at once, nothing asked)."""
    target = f"modbus {sc.name} {sc.host}:{sc.tcp_port}"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(sc.host, sc.tcp_port), TIMEOUT_S)
    except TimeoutError:
        return Probe(
            target, False, f"no answer in {TIMEOUT_S:g} s: a firewall, or the wrong host; fix "
            "sources[].host"
        )  # fmt: skip
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        return Probe(
            target, False, f"cannot connect ({why}): is the device on, and sources[].host "
            "and tcp_port right?"
        )  # fmt: skip
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Probe(target, True, "takes a connection")


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# --------------------------------------------------------------------------- all of them


async def probe_all(cfg: AgentConfig, plans: Sequence[SourcePlan]) -> list[Probe]:
    """Every probe the config calls for, side by side; listed InfluxDB, broker, then ports."""

    async def influx() -> list[Probe]:
        return [await probe_influx(cfg.influx)] if cfg.influx is not None else []

    async def broker() -> list[Probe]:
        return await probe_broker(cfg, plans) if cfg.mqtt is not None else []

    async def ports() -> list[Probe]:
        found: list[Probe] = []
        for sc in cfg.sources:
            if isinstance(sc, ModbusSourceConfig) and sc.port is None:
                found.append(await probe_modbus_tcp(sc))
            elif isinstance(sc, (SerialSourceConfig, ModbusSourceConfig)):
                found.append(await asyncio.to_thread(probe_serial, sc))
        return found

    found = await asyncio.gather(influx(), broker(), ports())
    return [probe for group in found for probe in group]
