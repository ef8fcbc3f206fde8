"""Who may act on the status page: logins with a password, a shared PIN per line, sessions,
and the lockout that keeps a 4-digit PIN from being guessed.

The users file (``status.users_file``, default ``<state_dir>/status-users``) holds one login a
line, written by ``driftgate users``::

    marie:scrypt$16384$8$1$<salt>$<hash>      a person, who may act on every channel
    @L2:scrypt$16384$8$1$<salt>$<hash>        the shared PIN of line L2: that line's channels

Passwords and PINs are kept as scrypt hashes (the standard library's ``hashlib.scrypt``, 16 MiB
and about 50 ms a try on a laptop, a few hundred on a Pi, run off the event loop): a copy of
the file does not give the passwords away. Reading the page needs no login; every action does.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.backoff import LOGIN_LOCKOUT
from agent.errors import DriftgateError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRYPT_MAXMEM = 64 * 1024**2
HASH_BYTES = 32
SALT_BYTES = 16

MIN_PASSWORD = 8
PIN_DIGITS = (4, 12)
NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
LINE = re.compile(r"^[^\s:@#][^\s:#]{0,127}$")

LOGIN_FAILURES = 5
"""Failed logins from one address, or for one account, before LOGIN_LOCKOUT applies."""
FAILURE_WINDOW_S = 900.0
"""Failures older than this are forgotten."""
MAX_TRACKED = 10_000
"""Addresses and accounts remembered by the lockout (the oldest are forgotten beyond)."""
MAX_SESSIONS = 1000
"""Logins kept at once (the oldest are ended beyond): a flood of logins cannot grow memory."""


class UsersError(DriftgateError):
    """The users file cannot be read or changed, or a name, password or PIN is refused."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_secret(secret: str, *, salt: bytes | None = None) -> str:
    """A password or PIN as stored: ``scrypt$N$r$p$salt$hash`` (base64)."""
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.scrypt(
        secret.encode("utf-8"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=SCRYPT_MAXMEM,
        dklen=HASH_BYTES,
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


_DUMMY = hash_secret("not a password", salt=b"\0" * SALT_BYTES)
"""Checked against when the account does not exist: a wrong name takes as long as a wrong
password, so the time of an answer does not tell which names exist."""


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches a stored hash (constant-time comparison)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(
            secret.encode("utf-8"),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=SCRYPT_MAXMEM,
            dklen=len(want),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


@dataclass(frozen=True, slots=True)
class Login:
    """One line of the users file: a person, or a line's shared PIN (``line`` set)."""

    account: str  # "marie", or "@L2" for line L2's PIN
    stored: str

    @property
    def line(self) -> str | None:
        """The line a PIN login may act on; None for a person (every channel)."""
        return self.account[1:] if self.account.startswith("@") else None


def check_password(password: str) -> None:
    """Refuse a password too short to hold against guessing."""
    if len(password) < MIN_PASSWORD:
        raise UsersError(f"a password needs at least {MIN_PASSWORD} characters")


def check_pin(pin: str) -> None:
    """Refuse a PIN that is not 4 to 12 digits."""
    low, high = PIN_DIGITS
    if not (pin.isdigit() and pin.isascii() and low <= len(pin) <= high):
        raise UsersError(f"a PIN is {low} to {high} digits")


def check_account(account: str) -> None:
    """Refuse a name the file cannot hold: a person's login, or ``@LINE``."""
    if account.startswith("@"):
        if not LINE.match(account[1:]):
            raise UsersError(f"{account!r}: a line name has no spaces, ':' or '#'")
    elif not NAME.match(account):
        raise UsersError(f"{account!r}: a login is 1 to 64 letters, digits, '.', '_' or '-'")


class UsersFile:
    """The users file: read when it changed (from a thread), written atomically by the CLI."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._logins: dict[str, Login] = {}
        self.problems: list[str] = []  # lines that were skipped, for the log

    def logins(self) -> dict[str, Login]:
        """Every login by account, re-read if the file changed (touches the disk)."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._mtime, self._logins = None, {}
            return {}
        except OSError as exc:
            raise UsersError(f"cannot read the users file {self.path}: {exc.strerror}") from None
        if mtime != self._mtime:
            self._logins = self._read()
            self._mtime = mtime
        return self._logins

    def _read(self) -> dict[str, Login]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsersError(f"cannot read the users file {self.path}: {exc}") from None
        out: dict[str, Login] = {}
        self.problems = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            account, sep, stored = line.partition(":")
            try:
                if not sep or not stored.startswith("scrypt$"):
                    raise UsersError("not NAME:scrypt$… (write it with driftgate users add)")
                check_account(account)
            except UsersError as exc:
                self.problems.append(f"{self.path}:{number}: {exc}")
                continue
            out[account] = Login(account, stored)
        return out

    def put(self, account: str, secret: str) -> bool:
        """Add or replace a login (a password, or ``@LINE`` with its PIN); True if it is new."""
        check_account(account)
        if account.startswith("@"):
            check_pin(secret)
        else:
            check_password(secret)
        lines, found = self._lines(), False
        entry = f"{account}:{hash_secret(secret)}"
        for i, line in enumerate(lines):
            if line.partition(":")[0].strip() == account:
                lines[i], found = entry, True
        if not found:
            lines.append(entry)
        self._write(lines)
        return not found

    def remove(self, account: str) -> bool:
        """Delete a login; True if there was one."""
        lines = self._lines()
        kept = [line for line in lines if line.partition(":")[0].strip() != account]
        if len(kept) == len(lines):
            return False
        self._write(kept)
        return True

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return [
                "# driftgate status page logins: NAME:hash, or @LINE:hash for a line's PIN.",
                "# Written by `driftgate users`; the hashes are scrypt, never the passwords.",
            ]
        except (OSError, UnicodeDecodeError) as exc:
            raise UsersError(f"cannot read the users file {self.path}: {exc}") from None

    def _write(self, lines: list[str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Keep the file's owner, group and mode; a new one is 0640 in its directory's group
            # (/etc/driftgate is root:driftgate): the agent reads it, other accounts do not.
            held = self.path.stat() if self.path.exists() else None
            mode = held.st_mode & 0o777 if held is not None else 0o640
            owner = (held.st_uid, held.st_gid) if held else (-1, self.path.parent.stat().st_gid)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            with contextlib.suppress(PermissionError):  # not root: the file stays ours
                os.chown(tmp, *owner)
            os.chmod(tmp, mode)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise UsersError(f"cannot write the users file {self.path}: {exc.strerror}") from None


def authenticate(users: UsersFile, account: str, secret: str) -> Login | None:
    """The login if ``secret`` is its password or PIN (slow on purpose: call from a thread)."""
    found = users.logins().get(account)
    if found is None:
        verify_secret(secret, _DUMMY)
        return None
    return found if verify_secret(secret, found.stored) else None


@dataclass(slots=True)
class Session:
    """A logged-in browser: who, what they may act on, and its CSRF token."""

    token: str
    who: str  # as the audit log and acknowledgements name them
    account: str
    line: str | None  # a PIN session acts on this line's channels only
    csrf: str
    expires: float  # monotonic

    def may_act_on(self, line: str | None) -> bool:
        """Whether this login may act on a channel of ``line`` (None: a channel of no line)."""
        return self.line is None or self.line == line


class Sessions:
    """The logins in memory (a restart logs everyone out), each ending after ``lifetime``."""

    def __init__(self, lifetime: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    def start(self, who: str, login: Login) -> Session:
        """A new session for a login that was just checked."""
        session = Session(
            token=secrets.token_urlsafe(32),
            who=who,
            account=login.account,
            line=login.line,
            csrf=secrets.token_urlsafe(32),
            expires=self.clock() + self.lifetime,
        )
        self._by_token[session.token] = session
        while len(self._by_token) > MAX_SESSIONS:
            self._by_token.popitem(last=False)
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie's token, if any."""
        if not token:
            return None
        session = self._by_token.get(token)
        if session is None:
            return None
        if self.clock() >= session.expires:
            del self._by_token[token]
            return None
        return session

    def end(self, token: str | None) -> None:
        """Log out."""
        if token:
            self._by_token.pop(token, None)


@dataclass(slots=True)
class _Failures:
    times: list[float] = field(default_factory=list)
    lockouts: int = 0
    locked_until: float = 0.0


class Lockout:
    """Failed logins per address and per account; past LOGIN_FAILURES, refused for a while."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._keys: OrderedDict[str, _Failures] = OrderedDict()

    def wait(self, *keys: str) -> float:
        """Seconds before a login for these keys (address, account) is tried again; 0: now."""
        now = self.clock()
        waits = [f.locked_until - now for k in keys if (f := self._keys.get(k)) is not None]
        return max([0.0, *waits])

    def failed(self, *keys: str) -> None:
        """Count a failed login against each key."""
        now = self.clock()
        for key in keys:
            record = self._keys.pop(key, None) or _Failures()
            record.times = [t for t in record.times if now - t < FAILURE_WINDOW_S]
            record.times.append(now)
            if len(record.times) >= LOGIN_FAILURES:
                record.locked_until = now + LOGIN_LOCKOUT.nominal(record.lockouts)
                record.lockouts += 1
                record.times = []
            self._keys[key] = record
            while len(self._keys) > MAX_TRACKED:
                self._keys.popitem(last=False)

    def succeeded(self, *keys: str) -> None:
        """A good login forgets the failures of its keys."""
        for key in keys:
            self._keys.pop(key, None)
