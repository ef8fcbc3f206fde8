"""Talking to systemd: the notify protocol (READY, STATUS, WATCHDOG, RELOADING, STOPPING) over
``$NOTIFY_SOCKET``, in a few lines instead of a libsystemd dependency.

The protocol is one datagram per message on a Unix socket whose path systemd puts in
``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket); the message is newline-separated
``KEY=value`` pairs. Outside systemd (a terminal, the tests, the demo) the variable is unset and
every call does nothing.

The watchdog pings come from a task on the event loop itself: a loop wedged by a blocking call
stops them, and systemd kills and restarts the agent after ``WatchdogSec=``. A thread pinging
on its own would keep a dead agent looking alive.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping

from agent.logs import get_logger

log = get_logger("driftgate.systemd")

STATUS_INTERVAL_S = 5.0
"""Seconds between STATUS= lines (what ``systemctl status`` shows under the unit)."""

WEDGE_HOOK_ENV = "DRIFTGATE_DEBUG_WEDGE_FILE"
"""Test hook, off unless this environment variable names a file: when that file appears, the
maintenance tick deletes it and blocks the event loop for good (a wedged loop, which the
watchdog must catch). Never set it on a gateway."""


class Notifier:
    """Sends notify messages to systemd; does nothing where ``$NOTIFY_SOCKET`` is unset."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = _watchdog_seconds(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens (``$NOTIFY_SOCKET`` is set)."""
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """Send one message (``READY=1``, ``STATUS=…``); False if it could not be sent.

        The socket is non-blocking: a datagram to a local socket either goes at once or not
        at all, so this is safe to call on the event loop. A lost message is not an error
        worth more than a debug line: the next one follows within seconds.
        """
        if self.address is None:
            return False
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(text.encode(), self.address)
        except OSError as exc:
            log.debug("cannot notify systemd", error=str(exc), message=text[:80])
            return False
        return True

    def ready(self, status: str) -> None:
        """Startup is complete: systemd's start job ends, ``systemctl start`` returns."""
        self.send(READY=1, STATUS=status)

    def status(self, status: str) -> None:
        """One line for ``systemctl status``."""
        self.send(STATUS=status)

    def ping(self) -> None:
        """Keep the watchdog from firing."""
        self.send(WATCHDOG=1)

    def reloading(self) -> None:
        """A reload of the configuration began (ends with ``ready``). MONOTONIC_USEC tells
        systemd ≥ 253 which reload request this answers; older ones ignore it."""
        self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str) -> None:
        """The agent is shutting down: systemd stops expecting watchdog pings."""
        self.send(STOPPING=1, STATUS=status)

    def close(self) -> None:
        """Close the socket (a new one is opened if the notifier is used again)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # an abstract socket: no file, a name in the kernel
    if value.startswith("/"):
        return value
    return None  # vsock (vsock:CID:PORT) and others: not for a service on a gateway


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """``WatchdogSec=`` as systemd passes it (``$WATCHDOG_USEC``), if it is meant for us."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # set for another process (we were started by a wrapper)
    return int(usec) / 1e6


_early_hup = threading.Event()


def hold_sighup() -> None:
    """From now until the agent runs, a SIGHUP is kept, not fatal (its default action ends the
    process). ``driftgate run`` calls it first thing: imports and building take seconds on a
    Pi, and a reload asked meanwhile is then applied once the agent runs."""
    signal.signal(signal.SIGHUP, lambda _signum, _frame: _early_hup.set())


def sighup_held() -> bool:
    """Whether a SIGHUP arrived before the agent took the signal over (and forget it)."""
    held = _early_hup.is_set()
    _early_hup.clear()
    return held


def wedge_requested(env: Mapping[str, str] | None = None) -> bool:
    """The test hook (``WEDGE_HOOK_ENV``): True once if its file exists, which is removed."""
    path = (os.environ if env is None else env).get(WEDGE_HOOK_ENV)
    if not path:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError:
        return False
    return True


def wedge_forever(sleep: Callable[[float], None] = time.sleep) -> None:
    """Block the calling thread (the event loop's, for the hook) until the process is killed."""
    log.critical("test hook: blocking the event loop until the watchdog kills the agent")
    while True:
        sleep(3600)
