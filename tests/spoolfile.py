"""Reading what the agent committed to its spool, straight from the SQLite file (for tests)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.store.spool import split_body, spool_path


def committed_lines(state_dir: Path, measurement: str | None = None) -> list[str]:
    """Every line committed in ``state_dir``'s spool, oldest first (optionally one measurement)."""
    path = spool_path(state_dir)
    assert path.exists(), f"no spool at {path}"
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT n_lines, body FROM chunks ORDER BY id").fetchall()
    finally:
        conn.close()
    out: list[str] = []
    for n_lines, body in rows:
        part = split_body(bytes(body).decode(), n_lines)
        assert len(part) == n_lines
        out += part
    if measurement is not None:
        out = [line for line in out if line.startswith(measurement + ",")]
    return out


class LineSink:
    """In-process stand-in for the spool's append side (unit tests; the end-to-end tests use
    the real SQLite spool): keeps the lines the pipeline would commit."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def append(self, line: str) -> None:
        self.lines.append(line)

    def extend(self, lines: list[str]) -> None:
        self.lines.extend(lines)
