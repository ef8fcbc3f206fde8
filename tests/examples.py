"""The shipped example configuration, as the tests read it."""

from __future__ import annotations

from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "agent.example.yaml"


def uncomment_notify(text: str) -> str:
    """The example with its commented ``# notify:`` section turned on, as a user would."""
    lines = text.splitlines()
    start = lines.index("# notify:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:])
    assert len(block) > 15, block
    return "\n".join(lines[:start] + block + lines[start + len(block) :]) + "\n"


SMTP_PASSWORD = "smtp-secret"


def with_local_files(text: str, tmp_path: Path) -> str:
    """The example's secret and URL files, as files in tmp_path."""
    (tmp_path / "smtp-password").write_text(SMTP_PASSWORD)
    (tmp_path / "smtp-password").chmod(0o600)
    (tmp_path / "chat-urls").write_text("ntfys://ntfy.atelier.example/edge-paint\n")
    (tmp_path / "chat-urls").chmod(0o600)
    return (text.replace("/etc/driftgate/smtp-password", str(tmp_path / "smtp-password"))
                .replace("/etc/driftgate/chat-urls", str(tmp_path / "chat-urls")))  # fmt: skip
