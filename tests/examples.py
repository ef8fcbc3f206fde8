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
