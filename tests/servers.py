"""Real servers for the test suite, started as private processes on free loopback ports.

Every server here is the real program from Debian's packages (see DESIGN.md, "Test
infrastructure"), run in a temporary directory, listening on 127.0.0.1 only, and stopped
after. Plain classes: no pytest needed, so a bench or a REPL can use them too::

    with InfluxDB1Server(Path("/tmp/x")) as influx:
        influx.create_database("db")
        influx.write("m f=1 1", db="db")
        influx.points("m", db="db")

Each process writes stdout and stderr to ``<workdir>/<name>.log``; a failed start raises
:class:`ServerError` with the tail of that log.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Self

LOOPBACK = "127.0.0.1"


class ServerError(RuntimeError):
    """A server could not be started, or answered an API call with an error."""


class MissingBinaryError(ServerError):
    """The server's program is not installed; the message names the Debian package."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def require_binary(path: str, package: str) -> str:
    """Return ``path`` if it is an executable file, else raise naming the Debian package."""
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    found = shutil.which(os.path.basename(path))
    if found:
        return found
    raise MissingBinaryError(
        f"{path} not found: the Debian package {package!r} is not installed.\n"
        f"Install it with:\n    apt-get install -y {package}"
    )


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# Loopback servers only: never let an http_proxy in the environment route our requests.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_request(
    url: str,
    *,
    method: str = "GET",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One HTTP request with the standard library; returns ``(status, body)``, never raises
    for an HTTP error status (connection errors do raise ``OSError``)."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _NO_PROXY_OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes in LISTEN state on 127.0.0.1:``port`` (Linux /proc/net/tcp)."""
    inodes = set()
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def owns_listening_port(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the listening socket on 127.0.0.1:``port``.

    Guards against a foreign process on a port that was free when we picked it: a health
    check alone would then be answered by the wrong server. True where /proc is missing."""
    if not os.path.exists("/proc/net/tcp"):
        return True
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


_LIVE: weakref.WeakSet[_ManagedProcess] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """Safety net for an interrupted run: no server outlives the Python that started it."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.kill()


class _ManagedProcess:
    """A child process with a log file in ``workdir``; start, stop, restart, context manager.

    Subclasses set ``name`` and implement ``_command()`` and ``_wait_ready(deadline)``.
    """

    name = "server"
    start_timeout = 20.0
    stop_timeout = 10.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None  # wall time the last start() took
        self._log_offset = 0  # where the current run's output starts in the log

    # -- to override -------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files etc. Called before every start."""

    def _wait_ready(self, deadline: float) -> None:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        self._prepare()
        t0 = time.monotonic()
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._env(),
                start_new_session=True,  # a Ctrl-C in the terminal does not reach it
            )
        _LIVE.add(self)
        try:
            self._wait_ready(t0 + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL fallback. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL without a clean shutdown (a crash / power loss). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers -------------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def current_log(self) -> bytes:
        """What the process wrote to its log since the last start()."""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            return f.read()

    def _check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise ServerError(
                f"{self.name} exited with code {code} while starting; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def _timeout(self, what: str) -> ServerError:
        return ServerError(
            f"{self.name} did not become ready ({what}) within {self.start_timeout:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _owns(self, port: int) -> bool:
        return self.proc is not None and owns_listening_port(self.proc.pid, port)

    def _wait_http(self, url: str, port: int, deadline: float, ok: Any) -> None:
        while True:
            self._check_alive()
            try:
                status, body = http_request(url, timeout=1.0)
                if ok(status, body) and self._owns(port):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise self._timeout(f"GET {url}")
            time.sleep(0.05)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.workdir} running={self.running}>"


# ------------------------------------------------------------------------------------------
# InfluxDB 1.6
# ------------------------------------------------------------------------------------------


class InfluxDB1Server(_ManagedProcess):
    """``influxd`` 1.6 (Debian package ``influxdb``) with only its HTTP API on 127.0.0.1.

    ``restart()`` keeps the port and the data directories. ``admin=(user, password)`` turns
    authentication on, with that admin user (the helpers below log in as it).
    """

    name = "influxd"
    binary = "/usr/bin/influxd"
    package = "influxdb"

    def __init__(self, workdir: Path, admin: tuple[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.admin = admin
        self._binary = require_binary(self.binary, self.package)
        self.port = free_port()
        self.rpc_port = free_port()
        while self.rpc_port == self.port:
            self.rpc_port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.config_path = self.workdir / "influxdb.conf"

    def _prepare(self) -> None:
        w = self.workdir
        for sub in ("meta", "data", "wal"):
            (w / sub).mkdir(exist_ok=True)
        self.config_path.write_text(
            f"""\
reporting-disabled = true
bind-address = "{LOOPBACK}:{self.rpc_port}"

[meta]
  dir = "{w / "meta"}"
  logging-enabled = false

[data]
  dir = "{w / "data"}"
  wal-dir = "{w / "wal"}"
  wal-fsync-delay = "0s"
  query-log-enabled = false
  trace-logging-enabled = false

[coordinator]
  log-queries-after = "0s"

[retention]
  enabled = false

[shard-precreation]
  enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "{LOOPBACK}:{self.port}"
  auth-enabled = {"true" if self.admin else "false"}
  log-enabled = false
  suppress-write-log = true
  write-tracing = false
  pprof-enabled = false
  https-enabled = false
  unix-socket-enabled = false
  max-body-size = 25000000

[ifql]
  enabled = false

[logging]
  format = "logfmt"
  level = "warn"
  suppress-logo = true

[continuous_queries]
  enabled = false
  log-enabled = false

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false
"""
        )

    def _env(self) -> dict[str, str]:
        # influxd lets INFLUXDB_* environment variables override the config file: drop them
        # so a developer's environment cannot move the data dirs or the bind address.
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
        env["HOME"] = str(self.workdir)
        return env

    def _command(self) -> list[str]:
        return [self._binary, "run", "-config", str(self.config_path)]

    def _wait_ready(self, deadline: float) -> None:
        self._wait_http(
            f"{self.url}/ping", self.port, deadline, lambda status, _body: status == 204
        )
        if self.admin is not None:
            # The first user may be made without a login (it must be an admin); after a
            # restart it exists and this is refused, which is fine.
            user, password = self.admin
            q = f"CREATE USER \"{_ident(user)}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES"
            http_request(
                f"{self.url}/query",
                method="POST",
                data=urllib.parse.urlencode({"q": q}).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )

    def _auth(self) -> dict[str, str]:
        if self.admin is None:
            return {}
        token = base64.b64encode(":".join(self.admin).encode()).decode()
        return {"Authorization": f"Basic {token}"}

    # -- API helpers ---------------------------------------------------------------------
    def write(
        self,
        lines: str | bytes,
        db: str,
        *,
        precision: str = "ns",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """POST line protocol to ``/write``; returns ``(status, body)`` without raising."""
        data = lines.encode() if isinstance(lines, str) else lines
        qs = urllib.parse.urlencode({"db": db, "precision": precision})
        return http_request(
            f"{self.url}/write?{qs}",
            method="POST",
            data=data,
            headers={**self._auth(), **(headers or {})},
        )

    def query(
        self,
        q: str,
        db: str | None = None,
        *,
        epoch: str | None = None,
        method: str | None = None,
    ) -> dict[str, Any]:
        """Run InfluxQL through ``/query`` and return the parsed JSON.

        SELECT/SHOW go as GET, anything else (CREATE, DROP, ...) as POST, which 1.6 requires.
        ``epoch="ns"`` makes times integers in nanoseconds. Raises :class:`ServerError` on an
        HTTP error or on an ``"error"`` in the answer or in any statement result.
        """
        params = {"q": q}
        if db is not None:
            params["db"] = db
        if epoch is not None:
            params["epoch"] = epoch
        if method is None:
            method = "GET" if q.lstrip().upper().startswith(("SELECT", "SHOW")) else "POST"
        qs = urllib.parse.urlencode(params)
        if method == "GET":
            status, body = http_request(f"{self.url}/query?{qs}", headers=self._auth())
        else:
            status, body = http_request(
                f"{self.url}/query",
                method="POST",
                data=qs.encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded", **self._auth()},
            )
        try:
            answer: dict[str, Any] = json.loads(body)
        except ValueError:
            raise ServerError(f"query {q!r}: HTTP {status}, not JSON: {body[:500]!r}") from None
        if status != 200 or "error" in answer:
            raise ServerError(f"query {q!r}: HTTP {status}: {answer}")
        for result in answer.get("results", []):
            if "error" in result:
                raise ServerError(f"query {q!r}: {result['error']}")
        return answer

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        self.query(f'DROP DATABASE "{name}"')

    def databases(self) -> list[str]:
        rows = self.rows("SHOW DATABASES")
        return [r["name"] for r in rows]

    def rows(self, q: str, db: str | None = None, *, epoch: str | None = None) -> list[dict]:
        """Every row of every series of the first statement, as ``{column: value}`` dicts.

        Tags of a GROUP BY are merged into each row."""
        answer = self.query(q, db, epoch=epoch)
        out: list[dict] = []
        for result in answer.get("results", [])[:1]:
            for series in result.get("series", []):
                cols = series["columns"]
                tags = series.get("tags") or {}
                for values in series.get("values", []):
                    row = dict(zip(cols, values, strict=True))
                    row.update(tags)
                    out.append(row)
        return out

    def points(
        self, measurement: str, db: str, *, epoch: str | None = "ns", where: str = ""
    ) -> list[dict]:
        """``SELECT * FROM measurement`` as dicts, oldest first, ``time`` in ns by default
        (``epoch=None`` gives RFC3339 strings). Tags are columns too."""
        q = f'SELECT * FROM "{_ident(measurement)}"'
        if where:
            q += f" WHERE {where}"
        return self.rows(q + " ORDER BY time ASC", db, epoch=epoch)

    def count(self, measurement: str, db: str) -> int:
        """Number of points (rows) stored in ``measurement``."""
        return len(self.points(measurement, db))


def _ident(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


# ------------------------------------------------------------------------------------------
# VictoriaMetrics 1.79
# ------------------------------------------------------------------------------------------


class VictoriaMetricsServer(_ManagedProcess):
    """Single-node ``victoria-metrics`` (Debian package ``victoria-metrics``) on 127.0.0.1.

    It implements InfluxDB's ``/api/v2/write`` (``bucket``/``org`` are ignored) and stores
    measurement ``m`` field ``f`` as metric ``m_f`` with millisecond timestamps.
    """

    name = "victoria-metrics"
    binary = "/usr/bin/victoria-metrics"
    package = "victoria-metrics"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._binary = require_binary(self.binary, self.package)
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.data_path = self.workdir / "vmdata"

    def _command(self) -> list[str]:
        return [
            self._binary,
            f"-httpListenAddr={LOOPBACK}:{self.port}",
            f"-storageDataPath={self.data_path}",
            "-retentionPeriod=100y",  # the default (1 month) silently drops old points
            "-search.latencyOffset=0s",  # make fresh points visible to queries at once
            "-search.disableCache",
            "-search.disableAutoCacheReset",
            "-selfScrapeInterval=0",
            "-loggerLevel=ERROR",
            "-memory.allowedPercent=20",
            "-fs.disableMmap",
        ]

    def _wait_ready(self, deadline: float) -> None:
        self._wait_http(
            f"{self.url}/health",
            self.port,
            deadline,
            lambda s, b: s == 200 and b.strip() == b"OK",
        )

    def write_v2(
        self,
        lines: str | bytes,
        *,
        precision: str = "ns",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """POST line protocol to ``/api/v2/write``; returns ``(status, body)``."""
        data = lines.encode() if isinstance(lines, str) else lines
        qs = urllib.parse.urlencode({"bucket": "b", "org": "o", "precision": precision})
        return http_request(
            f"{self.url}/api/v2/write?{qs}", method="POST", data=data, headers=headers or {}
        )

    def force_flush(self) -> None:
        """Make everything written so far searchable (``/internal/force_flush``)."""
        status, body = http_request(f"{self.url}/internal/force_flush")
        if status != 200:
            raise ServerError(f"force_flush: HTTP {status}: {body[:300]!r}")

    def export(self, match: str = '{__name__!=""}', *, flush: bool = True) -> list[dict]:
        """``/api/v1/export`` as a list of ``{"metric": {...}, "values": [...],
        "timestamps": [ms, ...]}``, after a force flush unless ``flush=False``."""
        if flush:
            self.force_flush()
        qs = urllib.parse.urlencode({"match[]": match})
        status, body = http_request(f"{self.url}/api/v1/export?{qs}")
        if status != 200:
            raise ServerError(f"export {match!r}: HTTP {status}: {body[:500]!r}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def samples(self, match: str = '{__name__!=""}') -> list[tuple[str, int, float]]:
        """Flattened export: sorted ``(metric_name, timestamp_ms, value)`` tuples."""
        out = []
        for series in self.export(match):
            name = series["metric"].get("__name__", "")
            out.extend(
                (name, ts, val)
                for ts, val in zip(series["timestamps"], series["values"], strict=True)
            )
        return sorted(out)


# ------------------------------------------------------------------------------------------
# Mosquitto 2.0
# ------------------------------------------------------------------------------------------


class MosquittoServer(_ManagedProcess):
    """``mosquitto`` 2.0 (Debian package ``mosquitto``) with one anonymous listener on
    127.0.0.1 and persistence in ``workdir``; ``restart()`` keeps port and persistence."""

    name = "mosquitto"
    binary = "/usr/sbin/mosquitto"
    package = "mosquitto"

    def __init__(self, workdir: Path, extra_config: str = "") -> None:
        super().__init__(workdir)
        self._binary = require_binary(self.binary, self.package)
        self.host = LOOPBACK
        self.port = free_port()
        self.extra_config = extra_config
        self.config_path = self.workdir / "mosquitto.conf"
        self.persistence_dir = self.workdir / "persistence"

    def _prepare(self) -> None:
        self.persistence_dir.mkdir(exist_ok=True)
        # As root mosquitto switches to user "mosquitto", which cannot write into a private
        # temp dir; "user <self>" keeps the current user (the option is ignored for non-root).
        me = pwd.getpwuid(os.geteuid()).pw_name
        self.config_path.write_text(
            f"""\
user {me}
listener {self.port} {LOOPBACK}
allow_anonymous true
persistence true
persistence_location {self.persistence_dir}/
max_queued_messages 100000
log_dest stderr
log_type error
log_type warning
log_type notice
{self.extra_config}
"""
        )

    def _command(self) -> list[str]:
        return [self._binary, "-c", str(self.config_path)]

    def _wait_ready(self, deadline: float) -> None:
        while True:
            self._check_alive()
            if port_open(self.host, self.port) and self._owns(self.port):
                return
            if time.monotonic() > deadline:
                raise self._timeout(f"TCP connect {self.host}:{self.port}")
            time.sleep(0.02)


def mosquitto_logins(workdir: Path, users: dict[str, tuple[str, list[str]]]) -> str:
    """Mosquitto config lines for logins and subscribe ACLs through its dynamic-security
    plugin (which refuses a subscription in the SUBACK; an ``acl_file`` never does):
    ``users`` is user → (password, topic filters it may subscribe to); no anonymous login."""
    clients, roles = [], []
    for user, (password, filters) in users.items():
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
        clients.append({
            "username": user, "salt": base64.b64encode(salt).decode(),
            "password": base64.b64encode(digest).decode(), "iterations": 101,
            "roles": [{"rolename": f"role-{user}"}],
        })  # fmt: skip
        roles.append({
            "rolename": f"role-{user}",
            "acls": [{"acltype": "subscribePattern", "topic": f, "allow": True} for f in filters],
        })  # fmt: skip
    config = workdir / "dynamic-security.json"
    config.write_text(json.dumps({
        "clients": clients, "roles": roles,
        "defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True,
                             "subscribe": False, "unsubscribe": True},
    }))  # fmt: skip
    found = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))
    if not found:
        raise MissingBinaryError(
            "mosquitto_dynamic_security.so not found: the Debian package 'mosquitto' is not "
            "installed.\nInstall it with:\n    apt-get install -y mosquitto"
        )
    plugin = found[0]
    return f"allow_anonymous false\nplugin {plugin}\nplugin_opt_config_file {config}\n"


# ------------------------------------------------------------------------------------------
# socat pty pair
# ------------------------------------------------------------------------------------------


class SerialPair(_ManagedProcess):
    """Two linked ptys from ``socat`` (Debian package ``socat``): the agent opens
    ``device`` like a USB serial port, a test writes the firmware's frames to ``emulator``.

    ``stop()`` is an unplug (socat exits, both links disappear); ``start()`` again is a
    replug at the same paths (the pts numbers behind them may change).
    """

    name = "socat"
    binary = "/usr/bin/socat"
    package = "socat"
    start_timeout = 10.0

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._binary = require_binary(self.binary, self.package)
        self.device = str(self.workdir / "dev")
        self.emulator = str(self.workdir / "emu")

    def _prepare(self) -> None:
        # A SIGKILLed socat leaves its symlinks behind; remove them so that waiting for
        # the links waits for the new socat.
        for link in (self.device, self.emulator):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)

    def _command(self) -> list[str]:
        return [
            self._binary,
            "-d",
            "-d",
            f"pty,raw,echo=0,link={self.device}",
            f"pty,raw,echo=0,link={self.emulator}",
        ]

    def _wait_ready(self, deadline: float) -> None:
        while True:
            self._check_alive()
            if (
                os.path.exists(self.device)
                and os.path.exists(self.emulator)
                and b"starting data transfer loop" in self.current_log()
            ):
                return
            if time.monotonic() > deadline:
                raise self._timeout("pty links")
            time.sleep(0.01)

    def unplug(self) -> None:
        self.stop()

    def replug(self) -> Self:
        return self.start()
