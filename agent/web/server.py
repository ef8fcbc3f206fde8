"""The status page's web server, inside the agent: aiohttp on the agent's event loop, started by
the supervisor like every other task.

Routes: ``/`` the floor (``/kiosk`` for a wall screen), ``/channels/<name>``, ``/login``,
``/events`` (server-sent events: incidents within a moment, values every 2 s, the gateway's
health every 5 s), ``/api/status`` (the JSON ``driftgate status`` reads), ``/healthz`` and
``/metrics``. Reading is open; acknowledging and capturing a baseline need a login, a CSRF
token and a same-site ``Origin``, and each attempt is audited.

Nothing here blocks the loop: the snapshot is built from memory at most once a second however
many screens ask; history reads run on the history's own thread; scrypt and the audit file run
in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import json
import math
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from agent.backoff import STATUS_LISTEN, Retries
from agent.config.bounds import seconds_words
from agent.config.status import is_loopback
from agent.drift.capture import CaptureError, span_words
from agent.drift.detectors import Limit, Stale
from agent.errors import DriftgateError
from agent.incidents.model import Notice
from agent.logs import get_logger
from agent.store.history import Bucket, HistoryError
from agent.web import pages
from agent.web.audit import AuditLog, audit_path
from agent.web.auth import Lockout, Session, Sessions, UsersError, UsersFile, authenticate
from agent.web.capture import preview, preview_words, run_capture, span_from_form
from agent.web.charts import chart, sparkline
from agent.web.floor import Floor, Latest, Watch
from agent.web.prometheus import CONTENT_TYPE, exposition
from agent.web.view import AgentView

log = get_logger("driftgate.status")

COOKIE = "driftgate_session"
SPARK_SPAN_S = 86400.0
SPARK_BUCKET_S = 900.0
SPARK_REFRESH_S = 60.0
SPARK_WANTED_S = 600.0  # sparklines are refreshed while a page was served this recently
SPARK_FIRST_WAIT_S = 0.5  # the first page waits this long for them, then goes without
CHART_BUCKETS = {"1": 300.0, "7": 3600.0, "30": 3 * 3600.0}
CHART_CACHE_S = 30.0
VALUES_EVERY_S = 2.0
HEALTH_EVERY_S = 5.0
KEEPALIVE_S = 15.0
MAX_STREAMS = 200
STREAM_BACKLOG = 100  # events queued for one stream; a screen that falls further behind is cut
MAX_BODY = 64 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
STATIC = ("status.css", "status.js")
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}


# -- server-sent events ------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Stream:
    """One screen listening: what it is sent, and whether it fell too far behind."""

    kiosk: bool
    events: deque[tuple[str, str]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    cut: bool = False


class Hub:
    """Every open event stream; ``publish`` never waits (a slow screen is cut and reconnects)."""

    def __init__(self) -> None:
        self.streams: set[Stream] = set()
        self.closed = False

    def publish(self, event: str, full: str, kiosk: str | None = None) -> None:
        """Queue an event for every stream (``kiosk``: what wall screens get instead)."""
        for stream in self.streams:
            if stream.cut:
                continue
            if len(stream.events) >= STREAM_BACKLOG:
                stream.cut = True
            else:
                stream.events.append((event, kiosk if stream.kiosk and kiosk is not None else full))
            stream.wake.set()

    def close(self) -> None:
        """End every stream (shutdown)."""
        self.closed = True
        for stream in self.streams:
            stream.cut = True
            stream.wake.set()


def sse(event: str, data: str) -> bytes:
    """One server-sent event."""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {event}\n{lines}\n".encode()


def _finite(value: Any) -> Any:
    """JSON that every parser reads: NaN and infinity become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Strict JSON (no NaN) for the API and the event streams. The snapshot holds finite
    numbers or None already; the slower cleaning pass is only for what slipped through."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"))


def _draw_sparks(
    channels: list[dict[str, Any]], series: Mapping[str, list[Bucket]], start: int, end: int
) -> dict[str, str]:
    """Every channel's 24 h sparkline, its band shaded."""
    step = int(SPARK_BUCKET_S * 1e9)
    out = {}
    for ch in channels:
        band = ch["band"]
        out[ch["name"]] = sparkline(
            series.get(ch["name"], []), start, end, step,
            band=(band["low"], band["high"]) if band else (None, None),
            label=f"{ch['label']}, last 24 h",
        )  # fmt: skip
    return out


def redirect(location: str) -> web.Response:
    """303 See Other: after a POST, the browser GETs ``location``."""
    return web.Response(status=303, headers={"Location": location})


def safe_next(path: str | None) -> str:
    """A path on this site to go back to after a login or an action ('/' otherwise)."""
    if (
        not path
        or not path.startswith("/")
        or path.startswith("//")
        or "\\" in path
        or any(ord(c) < 0x20 for c in path)
    ):
        return "/"
    return path[:300]


class StatusServer:
    """The status page of one agent: its routes, its live updates, its logins."""

    def __init__(self, view: AgentView, *, fallback_port: bool = False) -> None:
        cfg = view.cfg.status
        self.view = view
        self.cfg = cfg
        self.fallback_port = fallback_port
        self.latest = Latest()
        self.watch = Watch(view)
        self.floor = Floor(view, self.latest, self.watch, grace=cfg.health_grace)
        self.hub = Hub()
        self.sessions = Sessions(cfg.session)
        self.lockout = Lockout()
        users = cfg.users_file or (view.cfg.state_dir / "status-users")
        self.users = UsersFile(Path(users))
        self.audit = AuditLog(audit_path(view.cfg.state_dir))
        self.bound = asyncio.Event()
        self.url = ""
        self.port = 0
        self._assets = {
            name: resources.files("agent.web").joinpath("static", name).read_bytes()
            for name in STATIC
        }
        self.asset_version = hashlib.sha256(b"".join(self._assets.values())).hexdigest()[:10]
        self._changed = asyncio.Event()
        self._sparks_wanted = asyncio.Event()
        self._sparks_ready = asyncio.Event()
        self._sparks: dict[str, str] = {}
        self._sparks_at = -math.inf
        self._sparks_lock = asyncio.Lock()
        self._wanted = -math.inf
        self._charts: dict[tuple[str, str], tuple[float, list[Bucket]]] = {}
        self._floor_cache: tuple[tuple[bool, frozenset[str], int, float], str] | None = None
        self._api_cache: tuple[int, bytes] = (-1, b"")
        self._published: dict[str, list[str]] = {}
        self._health_shown = ""
        self._shape = (-1, -1)
        view.incidents.manager.listeners.append(self.notice)

    # -- the agent's side ----------------------------------------------------------------------

    def notice(self, notice: Notice) -> None:
        """A notice listener: an incident changed, screens are told at once (never blocks)."""
        self.floor.invalidate()
        self._changed.set()

    async def run(self) -> None:
        """Listen and serve until cancelled; a taken address is retried, never a crash."""
        app = self.app()
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        self.hub = Hub()
        try:
            await self._listen(runner)
            async with asyncio.TaskGroup() as group:  # one fails: both end, the task restarts
                group.create_task(self._tick(), name="status-tick")
                group.create_task(self._sparks_loop(), name="status-sparks")
        finally:
            self.hub.close()
            self.bound.clear()
            await runner.cleanup()

    async def _listen(self, runner: web.AppRunner) -> None:
        host, port = self.cfg.address
        tls = self._tls()
        retries = Retries(STATUS_LISTEN)
        told: int | None = None
        while True:
            site = web.TCPSite(runner, host, port, ssl_context=tls, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and self.fallback_port and port != 0:
                    log.info("status page port taken: using a free one", port=port)
                    port = 0
                    continue
                delay = retries.next_delay()
                # A warning once (the data path is not affected), then quietly until it listens.
                level = log.warning if exc.errno != told else log.debug
                told = exc.errno
                level(
                    "status page cannot listen",
                    listen=self.cfg.listen,
                    error=exc.strerror or str(exc),
                    retry_in_s=round(delay, 1),
                    hint="another program holds the port (set status.listen to another), or "
                    "the address is not one of this gateway's; readings and alerts go on",
                )
                await asyncio.sleep(delay)
                continue
            break
        bound = [a for a in runner.addresses if isinstance(a, tuple) and len(a) >= 2]
        self.port = int(bound[-1][1]) if bound else port
        shown = "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
        shown = f"[{shown}]" if ":" in shown else shown
        if host == "::":
            shown = "[::1]"
        self.url = f"{self.cfg.scheme}://{shown}:{self.port}/"
        log.info(
            "status page listening",
            url=self.url,
            listen=f"{host}:{self.port}",
            lan=not is_loopback(host),
        )
        self.bound.set()

    def _tls(self) -> ssl.SSLContext | None:
        if self.cfg.tls_cert_file is None or self.cfg.tls_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cfg.tls_cert_file, self.cfg.tls_key_file)
        return context

    async def _tick(self) -> None:
        """Once a second: sample the health figures, send values and health to the screens,
        refresh the sparklines; at once when an incident changed."""
        next_tick = time.monotonic()
        ticks = 0
        while True:
            wait = max(next_tick - time.monotonic(), 0.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            if self._changed.is_set():
                await asyncio.sleep(0.05)  # a burst of notices is told as one
                self._changed.clear()
                self._publish_incidents()
            if time.monotonic() < next_tick:
                continue
            next_tick += 1.0
            ticks += 1
            self.watch.sample()
            if not self.hub.streams and time.monotonic() - self._wanted > SPARK_WANTED_S:
                continue
            if ticks % int(VALUES_EVERY_S) == 0:
                self._publish_values()
            if ticks % int(HEALTH_EVERY_S) == 0:
                self._publish_health()
            if time.monotonic() - self._sparks_at >= SPARK_REFRESH_S:
                self._sparks_wanted.set()

    async def _sparks_loop(self) -> None:
        """Draw the sparklines when asked (a first page, then every minute while watched), apart
        from the tick: a slow history read must not hold up an incident's update."""
        while True:
            await self._sparks_wanted.wait()
            self._sparks_wanted.clear()
            if await self._refresh_sparks():
                self._sparks_ready.set()
                self.hub.publish("sparks", dumps(self._sparks))

    def _publish_incidents(self) -> None:
        snap = self.floor.snapshot()
        incidents = snap["incidents"]
        self.hub.publish(
            "incidents",
            pages.incidents_html(incidents, kiosk=False),
            pages.incidents_html(incidents, kiosk=True),
        )
        channels = sorted({name for inc in incidents for name in inc["channels"]})
        self.hub.publish("notice", dumps(channels))
        self._publish_values()

    def _publish_values(self) -> None:
        snap = self.floor.snapshot()
        shape = (len(snap["channels"]), self.view.context.version)
        if self._shape != shape:
            if self._shape != (-1, -1):
                self.hub.publish("reload", "")  # new channels or a new context: a fresh page
            self._shape = shape
        values = self.values(snap)
        changed = {k: v for k, v in values.items() if self._published.get(k) != v}
        self._published = values
        if changed:
            self.hub.publish("values", dumps(changed))

    def _publish_health(self) -> None:
        snap = self.floor.snapshot()
        summary = pages.summary_html(snap["health"])
        full = pages.health_html(snap["health"])
        if full + summary != self._health_shown:
            self._health_shown = full + summary
            self.hub.publish(
                "health", dumps({"summary": summary, "health": full}), dumps({"summary": summary})
            )

    @staticmethod
    def values(snap: Mapping[str, Any]) -> dict[str, list[str]]:
        """What a screen updates per channel: value, state, its word, and the reading's age."""
        return {
            ch["name"]: [ch["value_text"], ch["state"], ch["word"], ch["age"]]
            for ch in snap["channels"]
        }

    async def _refresh_sparks(self) -> bool:
        history = self.view.history
        if history is None:
            return False
        async with self._sparks_lock:
            if time.monotonic() - self._sparks_at < SPARK_REFRESH_S:
                return False
            end = self.view.incident_clock()
            start = end - int(SPARK_SPAN_S * 1e9)
            snap = self.floor.snapshot()
            try:
                series = await history.series(
                    [ch["name"] for ch in snap["channels"]], start, end, SPARK_BUCKET_S
                )
            except HistoryError as exc:
                log.warning("status page: cannot read the local history", error=str(exc))
                series = {}
            # Drawn in a thread: 200 sparklines are ~100 ms of Python that the loop (and the
            # readings it takes) would otherwise wait for at once.
            self._sparks = await asyncio.to_thread(_draw_sparks, snap["channels"], series, start,
                                                   end)  # fmt: skip
            self._sparks_at = time.monotonic()
            return True

    # -- the web app ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application (its routes and the security headers)."""
        app = web.Application(middlewares=[self._headers], client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/", self.floor_page)
        r.add_get("/kiosk", self.kiosk_page)
        r.add_get("/channels/{name}", self.channel_page)
        r.add_post("/channels/{name}/capture", self.capture)
        r.add_post("/incidents/{id}/ack", self.acknowledge)
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/events", self.events)
        r.add_get("/api/status", self.api_status)
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/static/{name}", self.static)
        return app

    @web.middleware
    async def _headers(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
            response.headers.setdefault("Cache-Control", "no-store")
            # The agent's own time for the answer (snapshot, render), as browsers show it.
            took = (time.perf_counter() - started) * 1000
            response.headers["Server-Timing"] = f"app;dur={took:.2f}"
        return response

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def _html(self, text: str, status: int = 200) -> web.Response:
        return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")

    def _message(self, request: web.Request) -> str:
        return pages.DONE.get(request.query.get("done", ""), "")

    @staticmethod
    def _zones(request: web.Request) -> frozenset[str]:
        """``?zone=sewing,cutting``: the zones a screen shows (all when not given)."""
        return frozenset(z for z in request.query.get("zone", "").split(",") if z)

    async def _floor(self, *, kiosk: bool, only: frozenset[str] = frozenset()) -> str:
        self._wanted = time.monotonic()
        if not self._sparks:
            # The first page asks for them and waits a moment; on a busy gateway it is served
            # without, and the sparklines follow by the event stream.
            self._sparks_wanted.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SPARK_FIRST_WAIT_S):
                    await self._sparks_ready.wait()
        snap = self.floor.snapshot()
        key = (kiosk, only, self.floor.version, self._sparks_at)
        cached = self._floor_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        html = pages.floor_html(snap, self._sparks, kiosk=kiosk, only=only)
        self._floor_cache = (key, html)
        return html

    async def floor_page(self, request: web.Request) -> web.Response:
        """The floor, full mode."""
        session = self._session(request)
        floor = await self._floor(kiosk=False, only=self._zones(request))
        return self._html(
            pages.floor_page(
                self.floor.snapshot(),
                floor,
                kiosk=False,
                csrf=session.csrf if session else "",
                who=session.who if session else "",
                asset=self.asset_version,
                message=self._message(request),
            )
        )

    async def kiosk_page(self, request: web.Request) -> web.Response:
        """The floor for a wall screen: large type, live, no controls, no login."""
        floor = await self._floor(kiosk=True, only=self._zones(request))
        return self._html(
            pages.floor_page(
                self.floor.snapshot(),
                floor,
                kiosk=True,
                csrf="",
                who="",
                asset=self.asset_version,
            )
        )

    def _channel_view(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.floor.snapshot()["channels"] if c["name"] == name), None)

    def _not_found(self, what: str) -> web.Response:
        return self._html(
            pages.error_page(self.floor.snapshot(), "Not found", what, asset=self.asset_version),
            404,
        )

    async def channel_page(
        self,
        request: web.Request,
        *,
        error: str = "",
        form: Mapping[str, str] | None = None,
        status: int = 200,
    ) -> web.Response:
        """One channel: chart, baseline, thresholds, incidents, the capture form."""
        name = request.match_info["name"]
        ch = self._channel_view(name)
        if ch is None:
            return self._not_found(f"No channel {name!r} on this gateway.")
        days = request.query.get("days", "7")
        days = days if days in CHART_BUCKETS else "7"
        snap = self.floor.snapshot()
        now = snap["now_ns"]
        start = now - int(days) * 86_400_000_000_000
        step = CHART_BUCKETS[days]
        buckets = await self._chart_series(name, days, start, now, step)
        manager = self.view.incidents.manager
        mine = [
            self.floor.incident(inc, now)
            for inc in manager.by_id.values()
            if (inc.channel == name or any(k.startswith(name + "/") for k in inc.members))
            and inc.seq
            and (inc.cleared_ns == 0 or inc.cleared_ns >= now - 30 * 86_400 * 10**9)
        ]
        mine.sort(key=lambda i: -i["opened_ns"])
        band = ch["band"]
        limits: list[tuple[str, float]] = []
        if band is not None and band["what"] == "spec":
            limits = [
                (lvl, band[k])
                for lvl, k in (
                    ("warn", "low"),
                    ("warn", "high"),
                    ("alarm", "low_alarm"),
                    ("alarm", "high_alarm"),
                )
                if band[k] is not None
            ]
        base = ch["baseline"]
        spans = [
            (
                i["level"] if i["state"] != "cleared" else "warn",
                i["opened_ns"],
                i["cleared_ns"] or now,
            )
            for i in mine
        ]
        svg = chart(
            buckets,
            start,
            now,
            int(step * 1e9),
            self.floor.zone,
            baseline=base["mean"] if base is not None else None,
            limits=limits,
            spans=spans,
            unit=ch["unit"],
            label=f"{ch['label']}, last {days} d",
        )
        session = self._session(request)
        return self._html(
            pages.channel_page(
                snap,
                ch,
                chart=svg,
                days=days,
                detectors=self._detectors(name),
                incidents=mine,
                zone=self.floor.zone,
                csrf=session.csrf if session else "",
                who=session.who if session else "",
                asset=self.asset_version,
                message=self._message(request),
                error=error,
                form=form,
            ),
            status,
        )

    async def _chart_series(
        self, name: str, days: str, start: int, end: int, step: float
    ) -> list[Bucket]:
        cached = self._charts.get((name, days))
        if cached is not None and time.monotonic() - cached[0] < CHART_CACHE_S:
            return cached[1]
        history = self.view.history
        buckets: list[Bucket] = []
        if history is not None:
            try:
                buckets = (await history.series([name], start, end, step)).get(name, [])
            except HistoryError as exc:
                log.warning("status page: cannot read the local history", error=str(exc))
        if len(self._charts) > 256:
            self._charts.clear()
        self._charts[(name, days)] = (time.monotonic(), buckets)
        return buckets

    def _detectors(self, name: str) -> list[dict[str, str]]:
        channel = self.view.registry.channels.get(name)
        drift = self.view.engine.drift(channel) if channel is not None else None
        out = []
        for d in drift.detectors if drift is not None else []:
            th = getattr(d, "thresholds", None)
            if isinstance(d, Limit):
                b = d.band
                warn = ", ".join(
                    f"{k} {v:g}"
                    for k, v in (("below", b.low_warn), ("above", b.high_warn))
                    if v is not None
                )
                alarm = ", ".join(
                    f"{k} {v:g}"
                    for k, v in (("below", b.low_alarm), ("above", b.high_alarm))
                    if v is not None
                )
                note = f"hold {seconds_words(th.hold)}" if th is not None else ""
            elif isinstance(d, Stale):
                warn, alarm, note = f"silent {seconds_words(d.max_gap)}", "", ""
            elif th is not None:
                unit = {"abs": "", "sigma": "σ"}.get(th.units, f" {th.units}")
                warn = f"{th.warn:g}{unit}"
                alarm = f"{th.alarm:g}{unit}" if th.alarm is not None else ""
                note = f"hold {seconds_words(th.hold)}" if th.hold else ""
            else:
                warn, alarm, note = "", "", ""
            out.append({"name": d.name, "warn": warn, "alarm": alarm, "note": note})
        return out

    # -- actions -------------------------------------------------------------------------------

    def _same_origin(self, request: web.Request) -> bool:
        """Whether a POST comes from a page of this site (Origin, else Referer)."""
        claimed = request.headers.get("Origin")
        if not claimed or claimed == "null":
            claimed = request.headers.get("Referer")
        if not claimed:
            return False
        # The host and port decide; the scheme may differ behind a proxy that ends TLS.
        return urlsplit(claimed).netloc.lower() == request.host.lower()

    async def _guard(
        self, request: web.Request, action: str, target: str, line: str | None
    ) -> tuple[Session, Mapping[str, str]] | web.Response:
        """The session allowed to do ``action``, with its form; else the refusal (audited)."""
        session = self._session(request)
        form = {k: str(v) for k, v in (await request.post()).items()}
        remote = request.remote or ""
        why = ""
        if session is None:
            why = "not logged in"
        elif not self._same_origin(request):
            why = f"request from another site (Origin {request.headers.get('Origin', 'missing')})"
        elif not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
            why = "missing or wrong CSRF token"
        elif not session.may_act_on(line):
            why = f"the PIN of line {session.line} does not act on line {line or '(none)'}"
        if not why:
            assert session is not None
            return session, form
        await self.audit.record(
            action,
            who=session.who if session else "",
            via=self._via(session),
            remote=remote,
            result=f"refused: {why}",
            target=target,
        )
        if session is None:
            ref = urlsplit(request.headers.get("Referer", ""))
            back = ref.path + (f"?{ref.query}" if ref.query else "")
            back = safe_next(back) if ref.netloc == request.host else "/"
            return redirect(f"/login?next={quote(back, safe='/')}&why=act")
        return self._html(
            pages.error_page(
                self.floor.snapshot(),
                "Refused",
                why[:1].upper() + why[1:] + ".",
                asset=self.asset_version,
            ),
            403,
        )

    @staticmethod
    def _via(session: Session | None) -> str:
        if session is None:
            return ""
        return f"pin:{session.line}" if session.line is not None else f"password:{session.account}"

    async def acknowledge(self, request: web.Request) -> web.Response:
        """POST /incidents/<id>/ack: acknowledge an open incident in the logged-in name."""
        incident_id = request.match_info["id"]
        inc = self.view.incidents.manager.by_id.get(incident_id)
        channel = self.view.registry.channels.get(inc.channel) if inc is not None else None
        line = channel.tags.get("line") if channel is not None else None
        guarded = await self._guard(request, "acknowledge", incident_id, line)
        if isinstance(guarded, web.Response):
            return guarded
        session, form = guarded
        if inc is None:
            return self._not_found(f"No incident {incident_id!r}.")
        note = form.get("note", "").strip()[:200]
        if inc.state != "open":  # a second click, or another screen was faster: told once
            already = f"already acknowledged by {inc.acked_by}" if inc.acked_by else inc.state
            await self.audit.record(
                "acknowledge", who=session.who, via=self._via(session),
                remote=request.remote or "", result=f"refused: {already}", target=incident_id,
            )  # fmt: skip
            return redirect("/?done=ack")
        self.view.acknowledge(incident_id, session.who, note)
        await self.audit.record(
            "acknowledge",
            who=session.who,
            via=self._via(session),
            remote=request.remote or "",
            result="done",
            target=incident_id,
            detail=note,
        )
        return redirect("/?done=ack")

    async def capture(self, request: web.Request) -> web.Response:
        """POST /channels/<name>/capture: show what would be locked; with confirm, lock it."""
        name = request.match_info["name"]
        channel = self.view.registry.channels.get(name)
        line = channel.tags.get("line") if channel is not None else None
        guarded = await self._guard(request, "baseline capture", name, line)
        if isinstance(guarded, web.Response):
            return guarded
        session, form = guarded
        ch = self._channel_view(name)
        if channel is None or ch is None:
            return self._not_found(f"No channel {name!r} on this gateway.")
        note = form.get("note", "").strip()[:200]
        state_dir = self.view.cfg.state_dir
        try:
            span = span_from_form(form, self.floor.zone)
            got = await asyncio.to_thread(preview, state_dir, name, span)
        except (CaptureError, HistoryError) as exc:
            return await self.channel_page(request, error=str(exc), form=form, status=400)
        if form.get("confirm") != "yes":
            return self._html(
                pages.confirm_page(
                    self.floor.snapshot(),
                    ch,
                    preview=preview_words(got, channel.unit),
                    fields={**span.fields(), "note": note},
                    csrf=session.csrf,
                    who=session.who,
                    asset=self.asset_version,
                )
            )
        try:
            baseline = await asyncio.to_thread(run_capture, state_dir, name, span, note)
        except (DriftgateError, OSError) as exc:
            await self.audit.record(
                "baseline capture",
                who=session.who,
                via=self._via(session),
                remote=request.remote or "",
                result=f"refused: {exc}",
                target=name,
            )
            return await self.channel_page(request, error=str(exc), form=form, status=400)
        await self.audit.record(
            "baseline capture",
            who=session.who,
            via=self._via(session),
            remote=request.remote or "",
            result="done",
            target=name,
            detail=f"mean {baseline.mean:.6g}, std {baseline.std:.4g}, {baseline.n} readings, "
            f"{span_words(baseline.start_ns, baseline.end_ns)}" + (f", {note}" if note else ""),
        )
        return redirect(pages.channel_href(name) + "?done=captured")

    # -- logins --------------------------------------------------------------------------------

    async def _logins(self) -> tuple[bool, list[str]]:
        try:
            logins = await asyncio.to_thread(self.users.logins)
        except UsersError as exc:
            log.error("status page: cannot read the users file", error=str(exc))
            return False, []
        lines = sorted(x.line for x in logins.values() if x.line is not None)
        return bool(logins), lines

    async def login_page(
        self, request: web.Request, *, error: str = "", status: int = 200
    ) -> web.Response:
        """The login form."""
        has, lines = await self._logins()
        why = "Log in to act on the floor." if request.query.get("why") == "act" else ""
        return self._html(
            pages.login_page(
                self.floor.snapshot(),
                lines=lines,
                has_logins=has,
                asset=self.asset_version,
                next_path=safe_next(request.query.get("next")),
                error=error,
                status=why,
            ),
            status,
        )

    async def login(self, request: web.Request) -> web.Response:
        """POST /login: a name and password, or a line, its PIN and one's name."""
        remote = request.remote or ""
        if not self._same_origin(request):
            await self.audit.record(
                "login", who="", via="", remote=remote, result="refused: request from another site"
            )
            return self._html(
                pages.error_page(
                    self.floor.snapshot(),
                    "Refused",
                    "A login must come from this site's own page.",
                    asset=self.asset_version,
                ),
                403,
            )
        form = {k: str(v) for k, v in (await request.post()).items()}
        secret = form.get("secret", "")
        name = form.get("name", "").strip()[:64]
        if form.get("kind") == "pin":
            line = form.get("line", "").strip()
            account, who, via = f"@{line}", f"{name} (line {line} PIN)", f"pin:{line}"
            if not name:
                return await self.login_page(
                    request,
                    error="Give your name with the PIN: acknowledgements say who took them on.",
                    status=400,
                )
        else:
            account, who, via = name, name, f"password:{name}"
        keys = (f"address:{remote}", f"account:{account}")
        wait = self.lockout.wait(*keys)
        if wait > 0:
            await self.audit.record(
                "login", who=who, via=via, remote=remote, result="refused: too many failed logins"
            )
            return await self.login_page(
                request,
                status=429,
                error=f"Too many failed logins: try again in {math.ceil(wait)} s.",
            )
        try:
            login = await asyncio.to_thread(authenticate, self.users, account, secret)
        except UsersError as exc:
            log.error("status page: cannot read the users file", error=str(exc))
            login = None
        if login is None:
            self.lockout.failed(*keys)
            await self.audit.record(
                "login",
                who=who,
                via=via,
                remote=remote,
                result="refused: wrong name, password or PIN",
            )
            return await self.login_page(request, error="Wrong name, password or PIN.", status=401)
        self.lockout.succeeded(*keys)
        session = self.sessions.start(who, login)
        await self.audit.record("login", who=who, via=via, remote=remote, result="done")
        response = redirect(safe_next(form.get("next")))
        response.set_cookie(
            COOKIE,
            session.token,
            httponly=True,
            samesite="Strict",
            path="/",
            secure=self.cfg.scheme == "https",
            max_age=int(self.cfg.session),
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """POST /logout."""
        session = self._session(request)
        form = {k: str(v) for k, v in (await request.post()).items()}
        if (
            session is not None
            and self._same_origin(request)
            and hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode())
        ):
            self.sessions.end(session.token)
            await self.audit.record(
                "logout",
                who=session.who,
                via=self._via(session),
                remote=request.remote or "",
                result="done",
            )
        response = redirect("/?done=logout")
        response.del_cookie(COOKIE, path="/")
        return response

    # -- live updates, the API, health and metrics ---------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        """GET /events: server-sent events for a screen (``?kiosk=1`` for a wall screen)."""
        if len(self.hub.streams) >= MAX_STREAMS or self.hub.closed:
            return web.Response(
                status=503, text="too many screens connected\n", headers={"Retry-After": "10"}
            )
        kiosk = request.query.get("kiosk") == "1"
        response = web.StreamResponse(
            headers={
                **SECURITY_HEADERS,
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        stream = Stream(kiosk)
        self.hub.streams.add(stream)
        self._wanted = time.monotonic()
        try:
            snap = self.floor.snapshot()
            first = (
                b"retry: 3000\n\n"
                + sse("values", dumps(self.values(snap)))
                + sse("incidents", pages.incidents_html(snap["incidents"], kiosk=kiosk))
            )
            await response.write(first)
            while not stream.cut:
                stream.wake.clear()
                if not stream.events:
                    try:
                        async with asyncio.timeout(KEEPALIVE_S):
                            await stream.wake.wait()
                    except TimeoutError:
                        await response.write(b": keep-alive\n\n")
                        continue
                batch = b"".join(sse(event, data) for event, data in stream.events)
                stream.events.clear()
                if batch:
                    await response.write(batch)
        except (ConnectionResetError, ConnectionError):
            pass  # the screen went away
        finally:
            self.hub.streams.discard(stream)
        return response

    def _api_body(self) -> bytes:
        snap = self.floor.snapshot()
        version, body = self._api_cache
        if version != self.floor.version:
            body = dumps({**snap, "url": self.url}).encode()
            self._api_cache = (self.floor.version, body)
        return body

    async def api_status(self, request: web.Request) -> web.Response:
        """GET /api/status: the whole picture as JSON (what ``driftgate status`` prints)."""
        return web.Response(body=self._api_body(), content_type="application/json")

    async def healthz(self, request: web.Request) -> web.Response:
        """GET /healthz: 200 while the sources and the forwarder are healthy, else 503 with why."""
        problems = self.floor.problems()
        if not problems:
            return web.Response(text="ok\n")
        return web.Response(status=503, text="unhealthy: " + "; ".join(problems) + "\n")

    async def metrics(self, request: web.Request) -> web.Response:
        """GET /metrics: the self-metrics in the Prometheus text format."""
        view = self.view
        snap = self.floor.snapshot()
        oldest = view.spool.oldest_ns
        live = {
            "channels": len(view.registry.channels),
            "spool_buffered": view.spool.buffered,
            "spool_oldest_age_s": round(max(time.time_ns() - oldest, 0) / 1e9, 1)
            if oldest
            else 0.0,
            "task_restarts": view.supervisor.restarts,
            "incidents_open": len(view.incidents.manager.open),
        }
        text = exposition(view, {**snap["health"], "ok": not self.floor.problems()}, live)
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def static(self, request: web.Request) -> web.Response:
        """The page's own stylesheet and script (shipped in the package, never fetched)."""
        name = request.match_info["name"]
        body = self._assets.get(name)
        if body is None:
            return web.Response(status=404, text="not found\n")
        suffix = name[name.rfind(".") :]
        return web.Response(
            body=body,
            headers={
                "Content-Type": f"{STATIC_TYPES[suffix]}; charset=utf-8",
                "Cache-Control": "public, max-age=86400",
            },
        )
