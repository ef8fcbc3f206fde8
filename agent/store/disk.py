"""SQLite write transactions and the disk beneath them, shared by the spool and the history.

SQLite may roll a transaction back by itself when a write fails (SQLITE_FULL, SQLITE_IOERR,
SQLITE_NOMEM, see "Response To Errors Within A Transaction" in its documentation). A ROLLBACK
issued after that fails with "cannot rollback - no transaction is active", and that error used
to replace the real one. ``transaction`` rolls back only a transaction that is still open, so
the error that ended it is the one raised; ``is_disk_full`` and ``disk_words`` name a full disk
as such, with its free space.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""OS errors that mean "no space": the disk is full, or the user's quota is."""

DISK_FULL_FREE_BYTES = 64 * 1024
"""An SQLite I/O error while the file system has less than this free is a full disk too (a
write can fail as SQLITE_IOERR rather than SQLITE_FULL, e.g. growing the WAL index)."""

_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL: the primary result code (the low byte)
_SQLITE_IOERR = 10  # sqlite3.SQLITE_IOERR


@contextlib.contextmanager
def transaction(
    conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE"
) -> Iterator[sqlite3.Connection]:
    """One write transaction: commit when the block ends, roll back on any error unless SQLite
    has rolled back already; the error that ended the transaction is the one that propagates."""
    conn.execute(begin)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # After SQLITE_FULL (and a failed COMMIT) SQLite may have rolled back on its own: a
        # second ROLLBACK would raise "no transaction is active" and hide the real error.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def free_bytes(path: Path) -> int | None:
    """Bytes free for an unprivileged writer on the file system holding ``path`` (None if
    that cannot be told)."""
    here = Path(path)
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        st = os.statvfs(here)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_disk_full(exc: BaseException, path: Path) -> bool:
    """Whether a failed write means the disk (or the quota) holding ``path`` is full."""
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:
            return "disk is full" in str(exc)
        primary = int(code) & 0xFF
        if primary == _SQLITE_FULL:
            return True
        if primary == _SQLITE_IOERR:
            free = free_bytes(path)
            return free is not None and free < DISK_FULL_FREE_BYTES
    return False


def error_name(exc: BaseException) -> str:
    """The error with its code: ``database or disk is full (SQLITE_FULL)``, ``... (ENOSPC)``."""
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None)
        return f"{exc} ({name})" if name else str(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return str(exc)


def disk_words(path: Path) -> str:
    """Where the file lives and how much room is left: for a disk-full message."""
    free = free_bytes(path)
    where = Path(path).parent
    if free is None:
        return f"on the disk holding {where}"
    return f"{_size(free)} free on the disk holding {where}"


def disk_full_hint(path: Path) -> str:
    """What to do about a full disk under ``path``."""
    where = Path(path).parent
    return (
        f"free space on the disk holding {where} (`df -h {where}`; e.g. "
        "`journalctl --vacuum-size=200M`, old files under /var/log or /tmp), or move state_dir "
        "to a larger disk; driftgate resumes by itself once writes succeed"
    )


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024**2:
        return f"{n / 1024:.0f} KiB"
    if n < 1024**3:
        return f"{n / 1024**2:.1f} MiB"
    return f"{n / 1024**3:.1f} GiB"
