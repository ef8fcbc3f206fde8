"""The shipped example configuration, as the tests read it."""

from __future__ import annotations

from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "agent.example.yaml"


def uncomment_notify(text: str) -> str:
    """The example with its commented ``# notify:`` section turned on, as a user would."""
    return uncomment_section(text, "notify")


def uncomment_section(text: str, section: str) -> str:
    """The example with a commented top-level section (``# mqtt:``) turned on."""
    lines = text.splitlines()
    start = lines.index(f"# {section}:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:])
    assert len(block) > 5, block
    return "\n".join(lines[:start] + block + lines[start + len(block) :]) + "\n"


def uncomment_worked_examples(text: str) -> str:
    """The example as on a floor with every device of its worked examples: their sources and
    channels (the ``  # - `` items and their ``  #   `` lines) and ``mqtt:`` turned on, the
    simulated workshop removed."""
    lines = []
    section = ""
    in_simulated = False
    for line in text.splitlines():
        if line[:1].isalpha():
            section = line.split(":", 1)[0]
        if line == "  - type: simulated":
            in_simulated = True
            continue
        if in_simulated and line.startswith("    "):
            continue
        in_simulated = False
        item = line.startswith(("  # - ", "  #   ")) and section in ("sources", "channels")
        lines.append("  " + line[4:] if item else line)
    return uncomment_section("\n".join(lines) + "\n", "mqtt")


SMTP_PASSWORD = "smtp-secret"


def with_local_files(text: str, tmp_path: Path) -> str:
    """The example's secret and URL files, as files in tmp_path."""
    (tmp_path / "smtp-password").write_text(SMTP_PASSWORD)
    (tmp_path / "smtp-password").chmod(0o600)
    (tmp_path / "chat-urls").write_text("ntfys://ntfy.atelier.example/edge-paint\n")
    (tmp_path / "chat-urls").chmod(0o600)
    return (text.replace("/etc/driftgate/smtp-password", str(tmp_path / "smtp-password"))
                .replace("/etc/driftgate/chat-urls", str(tmp_path / "chat-urls")))  # fmt: skip
