"""Drains the spool into InfluxDB, oldest first, deleting a batch only once the server took it.

Delivery is at-least-once: InfluxDB overwrites a point with the same series and timestamp, so
re-sending a batch after a crash or a cancellation does not duplicate data. What each HTTP
status means is data (`STATUS_ACTIONS`, `LINE_ERROR_MARKERS`, ``agent.backoff.FORWARDER``), read
by one loop: transient failures are retried with exponential backoff and full jitter (never
below the server's ``Retry-After``), a 413 splits the batch, and a 400 that names bad lines bisects
the batch until those lines are isolated and moved to the spool's dead-letter table; the
rest goes on. Anything else keeps the data and retries, with one actionable log line per
outage rather than one per retry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import gzip
import json
import math
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp

from agent.backoff import FORWARDER, SPOOL_WRITE, Retries
from agent.errors import ForwardError, SpoolError
from agent.logs import get_logger
from agent.metrics import AgentMetrics
from agent.store.spool import DeadLetter, Spool, SpoolBatch

_log = get_logger("driftgate.forwarder")


class Action(Enum):
    """What the forwarder does with a batch after a server answer."""

    ACCEPTED = "accepted"
    RETRY = "retry"
    SPLIT = "split"
    REJECTED_LINES = "rejected_lines"
    HOLD = "hold"


NO_ANSWER = 0
"""The status of a write that got no HTTP answer (connection refused, reset, timeout)."""

STATUS_ACTIONS: dict[int, Action] = {
    200: Action.ACCEPTED,
    201: Action.ACCEPTED,
    204: Action.ACCEPTED,
    NO_ANSWER: Action.RETRY,
    408: Action.RETRY,
    429: Action.RETRY,
    500: Action.RETRY,
    502: Action.RETRY,
    503: Action.RETRY,
    504: Action.RETRY,
    413: Action.SPLIT,
    400: Action.REJECTED_LINES,
    422: Action.REJECTED_LINES,
    401: Action.HOLD,
    403: Action.HOLD,
    404: Action.HOLD,
}
"""HTTP status → action; REJECTED_LINES applies only when the body has a line-level marker."""

UNLISTED_ACTION = Action.HOLD

LINE_ERROR_MARKERS: tuple[str, ...] = (
    "partial write",  # InfluxDB 1.x and 2.x ("partial write has occurred")
    "unable to parse",  # InfluxDB 1.x
    "field type conflict",  # InfluxDB 1.x
    "failed to parse",  # InfluxDB 2.x / 3.x
    "cannot parse",  # VictoriaMetrics
    "invalid field format",  # InfluxDB 1.x
    "bad timestamp",  # InfluxDB 1.x
    "points beyond retention policy",  # InfluxDB 1.x
    "max-values-per-tag limit exceeded",  # InfluxDB 1.x
    "schema conflict",  # InfluxDB 3.x
)
"""Lower-case phrases of a 400/422 body that blame particular lines rather than the request."""

_HINTS_V1: dict[int, str] = {
    401: "InfluxDB refused the credentials for user {user!r}: check password_file / token",
    403: "InfluxDB user {user!r} may not write to database {db!r}: "
    "GRANT WRITE ON {db} TO {user}, or check password_file / token",
    404: "database {db!r} not found: create it with CREATE DATABASE {db}",
    400: "InfluxDB rejected the write request itself (not a line): check influx.url, "
    "database and retention_policy",
}
_HINTS_V2: dict[int, str] = {
    401: "InfluxDB refused the token: check token_file / token",
    403: "the token may not write to bucket {bucket!r} in org {org!r}: "
    "give it write permission on the bucket",
    404: "bucket {bucket!r} or org {org!r} not found: create the bucket or fix influx.org / "
    "influx.bucket",
    400: "InfluxDB rejected the write request itself (not a line): check influx.url, org "
    "and bucket",
}
_HINT_NO_ANSWER = "cannot reach InfluxDB at {url}: readings stay in the spool and are retried"
_HINT_RETRY = "InfluxDB at {url} is busy or failing (HTTP {status}): retrying with backoff"
_HINT_OTHER = "InfluxDB at {url} answered HTTP {status}: data is kept and retried"

STATUS_INTERVAL_S = 60.0
"""While InfluxDB is unreachable, a status line this often (backlog, oldest line's age, retries
so far), counted from the start of the outage."""
PROGRESS_INTERVAL_S = 15.0
"""While the backlog of an outage drains, a progress line this often (lines/s, time to empty):
shorter than the status interval, since a drain often takes less than a minute."""


@dataclass(frozen=True, slots=True)
class ForwarderSettings:
    """Where and how to write (mapped from InfluxConfig; secrets as plain strings)."""

    url: str
    api: Literal["v1", "v2"] = "v1"
    database: str = ""
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    org: str = ""
    bucket: str = ""
    token: str | None = field(default=None, repr=False)
    gzip: bool = True
    batch_size: int = 5000
    flush_interval: float = 1.0
    timeout: float = 10.0
    verify_tls: bool = True
    ca_file: Path | None = None
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        if self.api == "v1" and not self.database:
            raise ForwardError("influx api v1 needs a database")
        if self.api == "v2" and not self.bucket:
            raise ForwardError("influx api v2 needs a bucket")
        if self.api not in ("v1", "v2"):
            raise ForwardError(f"influx api must be 'v1' or 'v2', not {self.api!r}")
        if self.batch_size < 1:
            raise ForwardError("influx batch_size must be at least 1")


@dataclass(frozen=True, slots=True)
class WriteResult:
    """One write's outcome: HTTP status (0 = no answer), the server's message, Retry-After."""

    status: int
    message: str = ""
    retry_after: float | None = None


class Writer(Protocol):
    """Sends one line-protocol body to InfluxDB and reports the answer; never raises for it."""

    async def write(self, body: bytes, gzipped: bytes | None = None) -> WriteResult:
        """POST the lines; network errors become status NO_ANSWER."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def classify(result: WriteResult) -> Action:
    """The action for a server answer (see STATUS_ACTIONS and LINE_ERROR_MARKERS)."""
    action = STATUS_ACTIONS.get(result.status, UNLISTED_ACTION)
    if action is Action.REJECTED_LINES:
        text = result.message.lower()
        if not any(marker in text for marker in LINE_ERROR_MARKERS):
            return Action.HOLD
    return action


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now (it may be a number of seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # float() also takes "inf" and "nan", which are no delay: "inf" would hold the
        # forwarder for the whole hour a server may ask for, on a garbled header.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def server_message(body: str | bytes | None) -> str:
    """The error text of a response body (InfluxDB's JSON ``error``/``message``, or raw)."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    text = text.strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        for key in ("error", "message"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return text


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _ssl_context(settings: ForwarderSettings) -> ssl.SSLContext | None:
    if not settings.url.lower().startswith("https:"):
        return None
    context = ssl.create_default_context(
        cafile=str(settings.ca_file) if settings.ca_file is not None else None
    )
    if not settings.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


_NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
_GZIP_IN_THREAD_BYTES = 256 * 1024
GZIP_LEVEL = 1
"""Level 1 compresses line protocol ~14x at a third of level 5's CPU (bench/forward.py)."""


class V1Writer:
    """``POST {url}/write?db=&rp=&precision=ns`` with aiohttp (InfluxDB 1.x and v1-compat APIs)."""

    def __init__(self, settings: ForwarderSettings) -> None:
        self._settings = settings
        self._url = settings.url.rstrip("/") + "/write"
        params = {"db": settings.database, "precision": "ns"}
        if settings.retention_policy:
            params["rp"] = settings.retention_policy
        self._params = params
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if settings.username:
            credentials = f"{settings.username}:{settings.password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            context = _ssl_context(self._settings)
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout),
                connector=aiohttp.TCPConnector(ssl=context if context is not None else True),
            )
        return self._session

    async def write(self, body: bytes, gzipped: bytes | None = None) -> WriteResult:
        """POST the lines; network errors become status NO_ANSWER."""
        headers = dict(self._headers)
        data = body
        if self._settings.gzip:
            if gzipped is not None:
                data = gzipped
            elif len(body) > _GZIP_IN_THREAD_BYTES:
                data = await asyncio.to_thread(gzip.compress, body, GZIP_LEVEL)
            else:
                data = gzip.compress(body, GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        try:
            async with self._open().post(
                self._url, params=self._params, data=data, headers=headers
            ) as resp:
                text = await resp.text(errors="replace")
                return WriteResult(
                    resp.status,
                    server_message(text),
                    parse_retry_after(resp.headers.get("Retry-After")),
                )
        except _NETWORK_ERRORS as exc:
            return WriteResult(NO_ANSWER, _describe(exc, self._settings.timeout))

    async def close(self) -> None:
        """Release connections."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class V2Writer:
    """Writes through influxdb-client's async API (token, org, bucket) to ``/api/v2/write``."""

    # influxdb-client's async client does not retry by itself (only its sync client has a
    # retry strategy), so each write here is one request and the forwarder owns retries.
    def __init__(self, settings: ForwarderSettings) -> None:
        self._settings = settings
        self._client: Any = None
        self._api: Any = None

    def _open(self) -> Any:
        if self._api is None:
            from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

            s = self._settings
            self._client = InfluxDBClientAsync(
                url=s.url,
                token=s.token or "",
                org=s.org,
                timeout=int(s.timeout * 1000),
                enable_gzip=s.gzip,
                verify_ssl=s.verify_tls,
                ssl_ca_cert=str(s.ca_file) if s.ca_file is not None else None,
            )
            self._api = self._client.write_api()
        return self._api

    async def write(self, body: bytes, gzipped: bytes | None = None) -> WriteResult:
        """POST the lines; network errors become status NO_ANSWER."""
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        s = self._settings
        try:
            await self._open().write(
                bucket=s.bucket, org=s.org, record=body, write_precision=WritePrecision.NS
            )
        except ApiException as exc:
            headers: Any = exc.headers or {}
            message = server_message(exc.body) or str(exc.reason or "")
            return WriteResult(
                int(exc.status or NO_ANSWER),
                message,
                parse_retry_after(headers.get("Retry-After")),
            )
        except _NETWORK_ERRORS as exc:
            return WriteResult(NO_ANSWER, _describe(exc, s.timeout))
        return WriteResult(204)

    async def close(self) -> None:
        """Release connections."""
        if self._client is not None:
            client, self._client, self._api = self._client, None, None
            await client.close()


def make_writer(settings: ForwarderSettings) -> Writer:
    """The writer for ``settings.api``."""
    return V1Writer(settings) if settings.api == "v1" else V2Writer(settings)


Prepared = tuple[bytes, bytes | None]
"""A batch's body, and its gzipped form when gzip is on."""


def _encode(lines: list[str], compress: bool) -> Prepared:
    body = "\n".join(lines).encode()
    return body, gzip.compress(body, GZIP_LEVEL) if compress else None


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of several waits completes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(slots=True)
class _Backlog:
    """The backlog left by an outage, watched while it drains: for the progress lines."""

    started: float  # monotonic, when InfluxDB took writes again
    lines: int  # waiting then
    forwarded: int  # metrics.forwarded then
    at: float  # the last progress line: when, ...
    at_lines: int  # ... the backlog then ...
    at_forwarded: int  # ... and metrics.forwarded then


class Forwarder:
    """Moves spooled lines to InfluxDB in batches; at-least-once, oldest first."""

    def __init__(
        self,
        spool: Spool,
        settings: ForwarderSettings,
        metrics: AgentMetrics | None = None,
        *,
        writer_factory: Callable[[ForwarderSettings], Writer] = make_writer,
        status_interval: float = STATUS_INTERVAL_S,
        progress_interval: float = PROGRESS_INTERVAL_S,
    ) -> None:
        self._spool = spool
        self.status_interval = status_interval
        """Seconds between status lines while InfluxDB does not take writes."""
        self.progress_interval = progress_interval
        """Seconds between progress lines while the backlog of an outage drains."""
        self._settings = settings
        self.metrics = metrics if metrics is not None else spool.metrics
        self._stopping = asyncio.Event()
        self._writer_factory = writer_factory
        self._target = (
            f"{settings.url} db={settings.database}"
            if settings.api == "v1"
            else f"{settings.url} bucket={settings.bucket}"
        )
        self._down_since: float | None = None
        self._down_retries = 0
        self._problem: tuple[int, Action] | None = None
        self._backlog: _Backlog | None = None
        self._told_down = 0.0  # monotonic time of the last status line of this outage
        self._ack_failing = False
        self.backoff = FORWARDER.with_cap(settings.max_backoff)
        self.last_write_ns = 0
        """Wall time InfluxDB last took a write (0: not yet this run), for the status page."""

    async def run(self) -> None:
        """Forward until cancelled or stop(); when empty, wait for commits or flush_interval.

        Pipelined: while one batch is on the wire (and being acked), the next is read from the
        spool and encoded and gzipped in a thread, so SQLite and zlib stay off the critical
        path. At most one batch is in flight, so a failing batch holds the ones behind it.
        """
        self._stopping.clear()
        status = asyncio.create_task(self._status_loop(), name="forwarder-status")
        try:
            async with self._writer() as writer:
                await self._pump(writer, until_empty=False)
        finally:
            status.cancel()
            await asyncio.gather(status, return_exceptions=True)

    async def _pump(self, writer: Writer, *, until_empty: bool) -> None:
        size = self._settings.batch_size
        inflight: asyncio.Task[None] | None = None
        after = 0
        try:
            while not self._stopping.is_set():
                self._spool.committed.clear()
                batch = await self._spool.read_batch(size, after=after)
                if batch is None:
                    after = 0
                    if inflight is not None:
                        await inflight
                        inflight = None
                        continue
                    if until_empty:
                        return
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._settings.flush_interval):
                            await _first(self._spool.committed.wait(), self._stopping.wait())
                    continue
                after = batch.chunk_ids[-1]
                prepared = await self._prepare(batch)
                if inflight is not None:
                    await inflight
                inflight = asyncio.create_task(self._forward(writer, batch, prepared))
            if inflight is not None:
                await inflight
                inflight = None
        finally:
            if inflight is not None and not inflight.done():
                inflight.cancel()
                await asyncio.gather(inflight, return_exceptions=True)

    async def _prepare(self, batch: SpoolBatch) -> Prepared | None:
        """Encode (and gzip) a whole batch ahead of its turn; None if it goes out in slices."""
        if len(batch.lines) > self._settings.batch_size:
            return None
        return await asyncio.to_thread(_encode, batch.lines, self._settings.gzip)

    def stop(self) -> None:
        """Ask run() to return after the batch in flight (no batch is sent twice at shutdown)."""
        self._stopping.set()

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 (a budget, not a wrapper)
        """Flush the spool and forward until it is empty; False if that took over timeout."""
        try:
            async with asyncio.timeout(timeout):
                # A spool that cannot write (disk full) has said so; what it holds still goes.
                with contextlib.suppress(SpoolError):
                    await self._spool.flush()
                self._stopping.clear()
                async with self._writer() as writer:
                    await self._pump(writer, until_empty=True)
                    return True
        except TimeoutError:
            stats = await self._spool.stats()
            _log.warning(
                "forwarder drain timed out",
                timeout_s=timeout,
                pending_lines=stats.pending_lines,
                target=self._target,
            )
            return False

    @contextlib.asynccontextmanager
    async def _writer(self) -> AsyncIterator[Writer]:
        writer = self._writer_factory(self._settings)
        try:
            yield writer
        finally:
            await writer.close()

    async def _forward(
        self, writer: Writer, batch: SpoolBatch, prepared: Prepared | None = None
    ) -> None:
        dead: list[DeadLetter] = []
        accepted = 0
        size = self._settings.batch_size  # a single chunk may hold more lines than one request
        if prepared is not None:
            accepted = await self._deliver(writer, batch.lines, dead, prepared)
        else:
            for start in range(0, len(batch.lines), size):
                accepted += await self._deliver(writer, batch.lines[start : start + size], dead)
        try:
            if not await self._ack(batch, dead):
                return
        except asyncio.CancelledError:
            # Spool.ack is shielded: the chunks are deleted even though this task was
            # cancelled (shutdown), so these lines must still count as forwarded.
            self.metrics.forwarded += accepted
            self.metrics.forward_batches += 1
            self.metrics.dead_letters += len(dead)
            raise
        self.metrics.forwarded += accepted
        self.metrics.forward_batches += 1
        if self._backlog is not None and self.metrics.spool_pending_lines <= size:
            self._backlog_done()
        if dead:
            self.metrics.dead_letters += len(dead)
            _log.warning(
                "InfluxDB rejected lines: moved to the spool's dead_letters table",
                lines=len(dead),
                status=dead[0].status,
                reason=dead[0].reason,
                first_line=dead[0].line[:200],
                target=self._target,
            )

    async def _ack(self, batch: SpoolBatch, dead: list[DeadLetter]) -> bool:
        """Delete a batch InfluxDB took; while the spool cannot write (disk full) try again on
        the SPOOL_WRITE backoff, without sending it again. False if stopped first: the chunks
        stay and go out again later (InfluxDB keeps one copy of a point)."""
        retries = Retries(SPOOL_WRITE)
        while True:
            try:
                await self._spool.ack(batch, dead)
            except SpoolError as exc:
                if not self._ack_failing:
                    self._ack_failing = True
                    _log.error(
                        "InfluxDB took a batch but the spool cannot delete it: trying again",
                        error=str(exc),
                        lines=len(batch.lines),
                        hint="nothing is lost; the forwarder waits for the spool before it "
                        "sends more, and a batch not deleted by shutdown is sent again later",
                    )
                if self._stopping.is_set():
                    return False
                await asyncio.sleep(retries.next_delay())
                continue
            if self._ack_failing:
                self._ack_failing = False
                _log.info("the spool deletes forwarded batches again", retries=retries.attempt)
            return True

    async def _deliver(
        self,
        writer: Writer,
        lines: list[str],
        dead: list[DeadLetter],
        prepared: Prepared | None = None,
    ) -> int:
        """Send lines until each is accepted or dead-lettered; return how many were accepted."""
        result = await self._send(writer, lines, prepared)
        action = classify(result)
        if action is Action.ACCEPTED:
            return len(lines)
        if len(lines) == 1:
            reason = result.message or f"HTTP {result.status}"
            if action is Action.SPLIT:
                reason = f"line too large for the server: {reason}"
            dead.append(DeadLetter(lines[0], result.status, reason))
            return 0
        mid = len(lines) // 2
        return await self._deliver(writer, lines[:mid], dead) + await self._deliver(
            writer, lines[mid:], dead
        )

    async def _send(
        self, writer: Writer, lines: list[str], prepared: Prepared | None = None
    ) -> WriteResult:
        """One request, repeated with backoff until the answer is not a retry/hold."""
        body, gzipped = prepared if prepared is not None else ("\n".join(lines).encode(), None)
        # Each request starts at the base wait: an answer ends the previous one's outage.
        retries = Retries(self.backoff)
        while True:
            started = time.monotonic()
            result = await writer.write(body, gzipped)
            if result.status != NO_ANSWER:
                self.metrics.forward_latency_ms = (time.monotonic() - started) * 1000.0
            action = classify(result)
            if action in (Action.ACCEPTED, Action.SPLIT, Action.REJECTED_LINES):
                self.metrics.influx_reachable = True
                if action is Action.ACCEPTED:
                    self.last_write_ns = time.time_ns()
                self._note_answer()
                if action is not Action.ACCEPTED:
                    self.metrics.forward_errors += 1
                return result
            self.metrics.influx_reachable = False
            self.metrics.forward_errors += 1
            self._note_failure(result, action)
            delay = retries.next_delay(server_min=result.retry_after)
            self._down_retries += 1
            self.metrics.forward_retries += 1
            await asyncio.sleep(delay)

    def _hint(self, result: WriteResult, action: Action) -> str:
        s = self._settings
        hints = _HINTS_V1 if s.api == "v1" else _HINTS_V2
        if result.status == NO_ANSWER:
            template = _HINT_NO_ANSWER
        elif action is Action.RETRY:
            template = _HINT_RETRY
        else:
            template = hints.get(result.status, _HINT_OTHER)
        return template.format(
            url=s.url,
            status=result.status,
            user=s.username or "",
            db=s.database,
            org=s.org,
            bucket=s.bucket,
        )

    def _note_failure(self, result: WriteResult, action: Action) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._down_retries = 0
            self._backlog = None
        problem = (result.status, action)
        if problem == self._problem:
            return
        self._problem = problem
        _log.error(
            self._hint(result, action),
            status=result.status,
            server_message=result.message[:500],
            target=self._target,
        )

    def _note_answer(self) -> None:
        if self._down_since is None:
            return
        now = time.monotonic()
        backlog = self.metrics.spool_pending_lines
        _log.info(
            "InfluxDB is taking writes again",
            down_s=round(now - self._down_since, 1),
            retries=self._down_retries,
            backlog_lines=backlog,
            target=self._target,
        )
        self._down_since = None
        self._down_retries = 0
        self._problem = None
        if backlog > self._settings.batch_size:
            forwarded = self.metrics.forwarded
            self._backlog = _Backlog(now, backlog, forwarded, now, backlog, forwarded)

    # -- status lines during an outage and while its backlog drains -----------------------------
    async def _status_loop(self) -> None:
        while True:
            # Wake often enough to keep both intervals within a quarter of their length.
            await asyncio.sleep(min(self.status_interval, self.progress_interval) / 4)
            self.status()

    def status(self) -> None:
        """Log where an outage or the drain of its backlog stands, when a line is due."""
        now = time.monotonic()
        if self._down_since is not None:
            if now - max(self._down_since, self._told_down) < self.status_interval:
                return
            self._told_down = now
            oldest = self._spool.oldest_ns
            _log.info(
                "InfluxDB still not taking writes: readings wait in the spool",
                down_s=round(now - self._down_since, 1),
                status=self._problem[0] if self._problem is not None else None,
                backlog_lines=self.metrics.spool_pending_lines + self._spool.buffered,
                oldest_age_s=round(max(time.time_ns() - oldest, 0) / 1e9, 1) if oldest else 0.0,
                retries=self._down_retries,
                spool_disk_bytes=self.metrics.spool_disk_bytes,
                max_bytes=self._spool.max_bytes,
                target=self._target,
            )
            return
        b = self._backlog
        if b is None or now - b.at < self.progress_interval:
            return
        lines = self.metrics.spool_pending_lines
        forwarded = self.metrics.forwarded
        dt = max(now - b.at, 1e-9)
        sent_per_s = (forwarded - b.at_forwarded) / dt
        shrink_per_s = (b.at_lines - lines) / dt  # new lines keep arriving meanwhile
        _log.info(
            "forwarding the backlog",
            backlog_lines=lines,
            lines_per_s=round(sent_per_s),
            eta_s=round(lines / shrink_per_s) if shrink_per_s > 0 else None,
            forwarded_since_back=forwarded - b.forwarded,
            target=self._target,
        )
        b.at, b.at_lines, b.at_forwarded = now, lines, forwarded

    def _backlog_done(self) -> None:
        b = self._backlog
        if b is None:
            return
        self._backlog = None
        took = time.monotonic() - b.started
        forwarded = self.metrics.forwarded - b.forwarded
        _log.info(
            "backlog forwarded",
            lines=forwarded,
            took_s=round(took, 1),
            lines_per_s=round(forwarded / took) if took > 0 else None,
            target=self._target,
        )
