"""The audit log of the status page: who did what, when, from where, and what came of it.

Every login (good or refused) and every action (acknowledge, baseline capture), allowed or
refused, is one JSON line in ``<state_dir>/audit.log`` and one line in the journal
(``driftgate.audit``). The file is appended from a thread, in order; a disk that refuses the
write is logged, and the journal still has the entry.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from agent.logs import get_logger

log = get_logger("driftgate.audit")

FILENAME = "audit.log"


def audit_path(state_dir: Path) -> Path:
    """Where the audit log lives under a state dir."""
    return Path(state_dir) / FILENAME


class AuditLog:
    """Appends audit entries to the file (from a thread) and to the journal."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    async def record(
        self,
        action: str,
        *,
        who: str,
        via: str,
        remote: str,
        result: str,
        target: str = "",
        detail: str = "",
    ) -> None:
        """One entry. ``result`` is ``done`` or ``refused: <why>``; never a password or PIN."""
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "who": who,
            "via": via,
            "action": action,
            "target": target,
            "result": result,
            "remote": remote,
        }
        if detail:
            entry["detail"] = detail
        level = log.info if result == "done" else log.warning
        level(f"status page: {action} {'done' if result == 'done' else 'refused'}", **entry)
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        async with self._lock:  # entries land in the order they happened
            try:
                await asyncio.to_thread(self._append, line)
            except OSError as exc:
                log.error("cannot write the audit log", path=str(self.path), error=str(exc))

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(line)
