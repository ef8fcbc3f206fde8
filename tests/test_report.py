"""`driftgate report`: two lots of demo data that differ in one channel only (the second leather
delivery is drier), built through a real agent (agent.sim.lots); the report must name that
channel and no other, stand alone (no outside assets), and render to PDF pages."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from agent.cli import main
from agent.sim.lots import LOT_A, LOT_B, LotDemo, make_two_lots

MOISTURE = "intake.moisture"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> LotDemo:
    """Lot A and lot B on the demo floor: one state dir, read by every test here."""
    return asyncio.run(make_two_lots(tmp_path_factory.mktemp("lots") / "state"))


class Page(HTMLParser):
    """What the tests read of the report: rows by channel and verdict, named channels, text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: dict[str, str] = {}  # channel → verdict (table rows)
        self.named: list[str] = []  # channel names in the answer at the top
        self.sections: list[str] = []
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self._named = False
        self._h2 = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "tr" and "data-channel" in a:
            self.rows[a["data-channel"]] = a["data-verdict"]
        self._named = tag == "span" and a.get("class") == "channel-name"
        self._h2 = tag == "h2"

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._named:
            self.named.append(data)
            self._named = False
        if self._h2:
            self.sections.append(data)
            self._h2 = False


def _report(demo: LotDemo, tmp: Path, *args: str) -> tuple[Page, str]:
    out = tmp / "report.html"
    argv = ["report", "--state-dir", str(demo.state_dir), "--lot", LOT_B, "-o", str(out)]
    assert main([*argv, *args]) == 0
    html = out.read_text(encoding="utf-8")
    return Page(html), html


def test_the_report_names_the_one_channel_that_differs(
    demo: LotDemo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page, html = _report(demo, tmp_path, "--against", LOT_A)
    # Every channel of the floor saw both lots: 13 readings channels and 6 colour ones.
    assert len(page.rows) == 19
    assert {c for c, v in page.rows.items() if v == "differs"} == {MOISTURE}
    assert page.named == ["Leather moisture at intake"]
    text = "".join(page.text)
    assert re.search(r"differs from lot LOT-2411-A in 1 of 19 channels", text)
    assert re.search(r"Leather moisture at intake \(1\.\d\d % lower\)", text)
    # The colour results per SKU and part under each light, against the approved reference.
    colour = {c for c in page.rows if ".de00_" in c}
    assert colour == {f"qc.4711.{part}.de00_{light}" for part in ("clasp", "body")
                      for light in ("d65", "f11", "led_b3")}  # fmt: skip
    assert "warehouse fluorescent light (F11)" in text
    assert page.sections == [
        "Channels", "Distributions", "Colour against the approved references", "Incidents",
    ]  # fmt: skip
    # The lot comparison's own finding is the incident while lot B was in production.
    incidents = text[text.index("While lot LOT-2411-B") : text.index("While lot LOT-2411-A")]
    assert "leather moisture at intake averages" in incidents
    # One distribution plot per channel, drawn inline.
    assert html.count("<svg ") == 13
    # Self-contained: no script, no stylesheet or image from anywhere else.
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "img", "iframe"), tag
        fetched = {k: v for k, v in attrs.items() if k != "xmlns"}  # a namespace, not a fetch
        assert not any(v.startswith(("http:", "https:", "//")) for v in fetched.values()), attrs
    out = capsys.readouterr().out
    assert "lot LOT-2411-B against lot LOT-2411-A: 19 channels compared, differs in 1" in out
    assert "Leather moisture at intake: 12." in out
    assert "DIFFERS" in out


def test_against_the_approved_lot_and_the_previous_one(demo: LotDemo, tmp_path: Path) -> None:
    assert main(["report", "--state-dir", str(demo.state_dir), "--lot", LOT_B,
                 "--against-reference", "-o", str(tmp_path / "x.html")]) == 1  # fmt: skip
    state = tmp_path / "state"
    shutil.copytree(demo.state_dir, state)  # the approval must not change the module's demo
    assert main(["lot", "approve", LOT_A, "--state-dir", str(state)]) == 0
    for args in (["--against-reference"], []):
        out = tmp_path / "r.html"
        argv = ["report", "--state-dir", str(state), "--lot", LOT_B, "-o", str(out), *args]
        assert main(argv) == 0
        page = Page(out.read_text(encoding="utf-8"))
        assert {c for c, v in page.rows.items() if v == "differs"} == {MOISTURE}
        who = "approved lot LOT-2411-A" if args else "lot LOT-2411-A"
        assert who in "".join(page.text)


def test_an_unknown_lot_is_refused_with_the_lots_there_are(
    demo: LotDemo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["report", "--state-dir", str(demo.state_dir), "--lot", "LOT-9", "-o",
            str(tmp_path / "r.html")]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no readings of lot 'LOT-9'" in err
    assert f"{LOT_A}, {LOT_B}" in err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="needs poppler-utils (scripts/test)")
def test_the_pdf_renders_to_pages(demo: LotDemo, tmp_path: Path) -> None:
    pytest.importorskip("weasyprint", reason="the report extra (scripts/test installs it)")
    from PIL import Image

    pdf = tmp_path / "report.pdf"
    _report(demo, tmp_path, "--against", LOT_A, "--pdf", str(pdf))
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True)
    pages = int(re.search(r"Pages:\s+(\d+)", info.stdout).group(1))  # type: ignore[union-attr]
    assert 2 <= pages <= 8
    subprocess.run(["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", "1", str(pdf),
                    str(tmp_path / "page")], check=True)  # fmt: skip
    (png,) = tmp_path.glob("page*.png")
    image = Image.open(png).convert("RGB")
    assert image.width < image.height  # A4 portrait
    colours = image.getcolors(maxcolors=1 << 16) or []
    # The answer's red-tinted box (#fcf1f0, a lot differs) is on the first page.
    assert any(abs(r - 252) + abs(g - 241) + abs(b - 240) < 6 for _, (r, g, b) in colours)
