"""The documents: generated ones match their sources, and no link leaves the repository.

docs/cli.md and docs/performance.md are made by scripts/gen_docs.py (from the argparse
definitions and from bench/results/*.json); these tests render them in memory and compare.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = ".venv/bin/python scripts/gen_docs.py"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gen_docs = _load("gen_docs", ROOT / "scripts" / "gen_docs.py")


# ------------------------------------------------------------------- generated documents


def test_cli_md_matches_the_argparse_definitions() -> None:
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    made_with = re.search(r"argparse of Python (\d+\.\d+)", committed)
    if made_with and made_with.group(1) != gen_docs.PYTHON:
        pytest.skip(
            f"docs/cli.md holds Python {made_with.group(1)}'s argparse layout; this is "
            f"Python {gen_docs.PYTHON}, whose help text is laid out differently"
        )
    assert committed == gen_docs.render_cli(), (
        f"docs/cli.md is stale (the CLI changed): run {REGENERATE} and commit docs/cli.md"
    )


def test_performance_md_matches_the_bench_results() -> None:
    committed = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    assert committed == gen_docs.render_performance(), (
        f"docs/performance.md differs from what bench/results/*.json render: run {REGENERATE} "
        "and commit docs/performance.md"
    )


def test_every_bench_script_has_a_table_spec() -> None:
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_")}
    assert scripts == set(gen_docs.BENCHES), "add or remove the entry in gen_docs.BENCHES"


def test_check_names_the_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "cli.md").write_text("old\n")
    (tmp_path / "docs" / "performance.md").write_text("same\n")
    monkeypatch.setattr(gen_docs, "ROOT", tmp_path)
    monkeypatch.setattr(
        gen_docs,
        "GENERATED",
        {"docs/cli.md": lambda: "new\n", "docs/performance.md": lambda: "same\n"},
    )
    assert gen_docs.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "docs/cli.md is stale" in err
    assert REGENERATE in err
    assert "performance.md" not in err

    assert gen_docs.main([]) == 0
    assert (tmp_path / "docs" / "cli.md").read_text() == "new\n"
    assert gen_docs.main(["--check"]) == 0


def test_emit_json_saves_the_line_it_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    common = _load("_common", ROOT / "bench" / "_common.py")
    monkeypatch.setenv(common.RESULTS_ENV, str(tmp_path))
    monkeypatch.setattr(sys, "argv", [str(ROOT / "bench" / "forward.py"), "--quick"])
    common.emit_json("forward", common.machine(), quick=True, points=10)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((tmp_path / "forward.json").read_text(encoding="utf-8"))
    assert saved == printed
    assert saved["command"] == "bench/forward.py --quick"
    assert saved["points"] == 10
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", saved["date"])
    assert "loadavg_at_end" in saved["machine"]


def test_a_bench_without_results_says_how_to_measure_it(tmp_path: Path) -> None:
    text = gen_docs.render_performance(tmp_path)
    for name in gen_docs.BENCHES:
        assert f"Not yet measured with the JSON output: run `.venv/bin/python bench/{name}.py" in (
            text
        )


def test_results_of_an_unknown_bench_are_refused(tmp_path: Path) -> None:
    (tmp_path / "mystery.json").write_text(json.dumps({"bench": "mystery"}))
    with pytest.raises(SystemExit, match="mystery"):
        gen_docs.render_performance(tmp_path)


# ----------------------------------------------------------------------------------- links

SKIP_DIRS = {".git", ".venv", "build", "dist", "node_modules"}

KNOWN_PROBLEMS: dict[str, set[str]] = {}
"""Link problems tolerated for now, per file (none): when one is fixed the test says so."""

FENCE = re.compile(r"^\s*(```|~~~)")
COMMENT = re.compile(r"<!--.*?-->", re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
AUTOLINK = re.compile(r"<((?:https?|ftp|file|mailto):[^>\s]+)>")
BARE_URL = re.compile(r"(?<![(<\w])(https?://[^\s)>\]]+)")
HTML_HREF = re.compile(r"""<(?:a|img)\s[^>]*?(?:href|src)=["']([^"']+)["']""", re.I)
HTML_ID = re.compile(r"""<a\s[^>]*?(?:id|name)=["']([^"']+)["']""", re.I)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_files() -> list[Path]:
    """README.md, docs/*.md and every other Markdown file of the repository."""
    seen: dict[Path, Path] = {}
    for path in sorted(ROOT.rglob("*.md")):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if any(part.startswith(".") for part in rel.parts[:-1]):
            continue
        seen.setdefault(path.resolve(), path)
    return sorted(seen.values())


def _prose_lines(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, line without code spans, the section heading it is under), outside
    fenced code blocks and HTML comments."""
    text = COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    fenced = False
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        heading = HEADING.match(line)
        if heading:
            section = heading.group(2)
        yield number, CODE_SPAN.sub("", line), section


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line number, target) of every link in a Markdown text."""
    for number, line, _section in _prose_lines(text):
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        targets += [m.group(1) for m in REF_DEF.finditer(line)]
        targets += [m.group(1) for m in AUTOLINK.finditer(line)]
        targets += [m.group(1) for m in HTML_HREF.finditer(line)]
        rest = AUTOLINK.sub("", INLINE_LINK.sub("", line))
        targets += [m.group(1) for m in BARE_URL.finditer(rest)]
        for target in targets:
            yield number, target


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub makes for a Markdown text's headings (and explicit <a id>)."""
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    fenced = False
    for line in COMMENT.sub("", text).splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        anchors.update(HTML_ID.findall(line))
        heading = HEADING.match(line)
        if not heading:
            continue
        title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(2))
        title = title.replace("`", "").replace("*", "")
        slug = "".join(c for c in title.lower() if c.isalnum() or c in " -_").replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def link_problems(path: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with the links of one Markdown file of the repository at root."""
    text = path.read_text(encoding="utf-8")
    problems = []
    for number, target in links(text):
        if re.match(r"^(https?|ftp):", target, re.I):
            problems.append(f"{target}: external link (a clone is all a user has)")
            continue
        if re.match(r"^(file|[a-z]:[\\/])", target, re.I) or target.startswith(("/", "\\")):
            problems.append(f"{target}: absolute path (line {number})")
            continue
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            problems.append(f"{target}: not a repository link (line {number})")
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not dest.is_relative_to(root.resolve()):
            problems.append(f"{target}: leaves the repository")
            continue
        if not dest.exists():
            problems.append(f"{target}: no such file (line {number})")
            continue
        anchors = github_anchors(dest.read_text(encoding="utf-8")) if dest.suffix == ".md" else None
        if fragment and anchors is not None and fragment not in anchors:
            problems.append(f"{target}: no heading with that anchor (line {number})")
    return problems


@pytest.mark.parametrize(
    "path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)).replace("/", "_")
)
def test_links_stay_in_the_repository_and_resolve(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    problems = set(link_problems(path))
    known = KNOWN_PROBLEMS.get(rel, set())
    new = sorted(problems - known)
    assert not new, f"{rel}: " + "; ".join(new)
    fixed = sorted(known - problems)
    assert not fixed, f"{rel} no longer has: {fixed}; remove it from KNOWN_PROBLEMS in {__file__}"


def test_docs_are_covered_by_the_link_check() -> None:
    files = {str(p.relative_to(ROOT)) for p in markdown_files()}
    assert "README.md" in files
    assert {"docs/cli.md", "docs/performance.md"} <= files


def test_the_link_checker_catches_what_it_should(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "cli.md").write_text("# CLI\n\n## driftgate run\n")
    doc = tmp_path / "docs" / "probe.md"
    doc.write_text(
        "# Probe\n\n"
        "[up](../../outside.md) [abs](/etc/passwd) [gone](missing.md) [web](https://x.org/) "
        "[ok](cli.md) [anchor](cli.md#driftgate-run) [bad anchor](cli.md#nope) [self](#probe)\n"
        "`[in code](../../nope.md)`\n\n```\n[fenced](../../nope.md)\n```\n"
        "<!-- [commented](../../nope.md) -->\n",
        encoding="utf-8",
    )
    problems = link_problems(doc, root=tmp_path)
    assert problems == [
        "../../outside.md: leaves the repository",
        "/etc/passwd: absolute path (line 3)",
        "missing.md: no such file (line 3)",
        "https://x.org/: external link (a clone is all a user has)",
        "cli.md#nope: no heading with that anchor (line 3)",
    ]


def test_schema_lists_every_self_metric_and_source_health_field() -> None:
    """docs/schema.md is the schema written once: a new counter must be documented there."""
    from agent.ingest.frames import SlaveHealth, SourceHealth
    from agent.metrics import AgentMetrics

    text = (ROOT / "docs" / "schema.md").read_text(encoding="utf-8")
    agent_part = text.split("### `driftgate_agent`", 1)[1].split("### ", 1)[0]
    source_part = text.split("### `driftgate_source`", 1)[1].split("### ", 1)[0]
    for name in AgentMetrics().fields():
        assert f"`{name}`" in agent_part, f"driftgate_agent field {name} is not in docs/schema.md"
    for name in SourceHealth().fields():
        assert f"`{name}`" in source_part, f"driftgate_source field {name} is not in docs/schema.md"
    for name in SlaveHealth(1, "s").fields():  # the per-device points of a Modbus bus
        assert f"`{name}`" in source_part, f"driftgate_source field {name} is not in docs/schema.md"
