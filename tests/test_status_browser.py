"""The status page in a real browser (Debian's chromium, headless, driven by selenium) against
an agent run as on a gateway (`driftgate run -c`, its own process) on an emulated floor: the
demo workshop's simulated channels and an ESPHome humidity probe over a private Mosquitto.

Checked from the DOM: every channel with its state (class and word), an incident the probe
opens appears without a reload, acknowledging it in the page reaches the retained MQTT
incident topic and `driftgate alerts list`, a baseline capture asks before it locks, and the
wall screen has no control at all. Screenshots of the floor, a channel page and the wall
screen are kept in test-artifacts/status/ (and the test's tmp dir).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import headless_chromium, viewport
from servers import MosquittoServer, free_port, require_binary
from test_notify import retained

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "status"
SITE, GATEWAY = "atelier-nord", "gw-floor2"
PASSWORD = "correct horse battery"
PROBE = "finishing.fp1.humidity"
SIM_DAYS = 9.0


def wait(predicate: Callable[[], Any], within: float, what: str) -> Any:
    """Poll every 50 ms; fail naming ``what`` when the time is up."""
    deadline = time.monotonic() + within
    from selenium.common.exceptions import StaleElementReferenceException

    while True:
        try:
            got = predicate()
        except StaleElementReferenceException:  # the page was replaced while it was read
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        time.sleep(0.05)


def api(base: str) -> dict[str, Any] | None:
    """The agent's /api/status, or None while it does not answer (it starts; the simulated
    weeks are still being taken in on a busy machine)."""
    try:
        with urllib.request.urlopen(base + "api/status", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
    except OSError:
        return None
    return data


def publish(broker: MosquittoServer, topic: str, payload: str) -> None:
    subprocess.run(
        [require_binary("/usr/bin/mosquitto_pub", "mosquitto-clients"), "-h", broker.host,
         "-p", str(broker.port), "-q", "1", "-t", topic, "-m", payload],
        check=True, timeout=10,
    )  # fmt: skip


def driftgate(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], input=stdin, capture_output=True, text=True,
        timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip


@pytest.fixture
def gateway(tmp_path: Path, mosquitto: MosquittoServer) -> Iterator[tuple[str, Path]]:
    """A running agent on the emulated floor: (its page's URL, its state dir)."""
    state = tmp_path / "state"
    port = free_port()
    start = time.time() - SIM_DAYS * 86400
    cfg = {
        "site": SITE, "gateway": GATEWAY, "timezone": "Europe/Paris", "state_dir": str(state),
        "log": {"level": "info", "format": "json"},
        "status": {"listen": f"127.0.0.1:{port}"},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "watch_dropped": False},
        "sources": [
            {"type": "simulated", "name": "workshop", "speed": 3e5, "days": SIM_DAYS,
             "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)), "interval": 60},
            {"type": "mqtt", "name": "probe", "profile": "sht4x-esphome", "zone": "finishing"},
        ],
        "channels": [
            {"name": "edge_paint.humidity",
             "limits": {"low_warn": 40, "high_warn": 58, "high_alarm": 62, "hold": "1h"}},
            {"name": PROBE, "label": "Finishing room humidity", "detectors": [],
             "action": "close the finishing room's doors; check its dehumidifier",
             "limits": {"high_warn": 55, "high_alarm": 60, "hold": 0}},
        ],
    }  # fmt: skip
    path = tmp_path / "agent.yaml"
    path.write_text(json.dumps(cfg))
    added = driftgate("users", "add", "marie", "--password-stdin", "-c", str(path),
                      stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    err = (tmp_path / "agent.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(path)], stdout=subprocess.DEVNULL,
        stderr=err, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/"
    try:
        yield base, state
    finally:
        proc.terminate()
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        err.close()
        assert code == 0, (tmp_path / "agent.err").read_text()[-3000:]


def shoot(driver: Any, name: str, tmp_path: Path) -> None:
    """Keep a screenshot as a test artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for where in (ARTIFACTS, tmp_path):
        driver.save_screenshot(str(where / f"{name}.png"))


def test_the_floor_in_a_browser_live_acknowledged_and_on_the_wall(
    gateway: tuple[str, Path], mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    base, state = gateway

    wait(lambda: api(base), 30, "the agent's status page")
    publish(mosquitto, "fp1/sensor/humidity/state", "50.2")
    # The simulated weeks are in, and the probe's channel exists, before the page opens.
    status = wait(lambda: (s := api(base)) is not None and len(s["channels"]) == 13
                  and all(c["value"] is not None for c in s["channels"])
                  and s["health"]["sources"][0]["word"] == "finished" and s, 60,
                  "every channel's first value")  # fmt: skip
    driver = headless_chromium(1280, 800)
    try:
        driver.get(base)
        wait(lambda: driver.find_element(By.ID, "live").text == "live", 10, "the event stream")
        # Every channel, with its state as a colour class and as a word.
        for ch in status["channels"]:
            card = driver.find_element(By.CSS_SELECTOR, f'.card[data-channel="{ch["name"]}"]')
            badge = card.find_element(By.CSS_SELECTOR, ".state")
            assert f"st-{ch['state']}" in card.get_attribute("class").split(), ch["name"]
            assert badge.text.lower() == ch["word"], ch["name"]
            assert card.find_element(By.CSS_SELECTOR, ".label").text == ch["label"]
        # The history writes every 5 s, and a page drawn before that draws them 5 s later.
        wait(lambda: driver.find_elements(By.CSS_SELECTOR, ".card svg.spark path.spark-line"),
             20, "the sparklines")  # fmt: skip
        # The probe reads 61.5 %RH: the incident is on the page without a reload.
        driver.execute_script("window.stillTheSamePage = true")
        published = time.monotonic()
        publish(mosquitto, "fp1/sensor/humidity/state", "61.5")

        def shown() -> Any:
            for card in driver.find_elements(By.CSS_SELECTOR, "article.incident"):
                if card.find_element(By.TAG_NAME, "h3").text == "Finishing room humidity":
                    return card
            return None

        card = wait(shown, 10, "the probe's incident on the page")
        print(f"incident on the page {time.monotonic() - published:.2f} s after the reading")
        assert driver.execute_script("return window.stillTheSamePage") is True
        incident = card.get_attribute("data-incident")
        assert "ALARM" in card.find_element(By.CSS_SELECTOR, ".badge").text
        assert "What to do: close the finishing room's doors" in card.text
        probe = driver.find_element(By.CSS_SELECTOR, f'.card[data-channel="{PROBE}"]')
        wait(lambda: probe.find_element(By.CSS_SELECTOR, ".state").text == "ALARM", 10,
             "the probe's card to say alarm")  # fmt: skip
        shoot(driver, "floor", tmp_path)

        # Acknowledge it in the page: log in first, as a supervisor would.
        driver.find_element(By.LINK_TEXT, "Log in").click()
        form = driver.find_element(By.CSS_SELECTOR, 'form.login input[value="password"]')
        form = form.find_element(By.XPATH, "..")
        form.find_element(By.NAME, "name").send_keys("marie")
        form.find_element(By.NAME, "secret").send_keys(PASSWORD)
        form.find_element(By.TAG_NAME, "button").click()
        wait(lambda: driver.find_elements(By.CSS_SELECTOR, ".nav .who"), 10, "the login")
        assert driver.find_element(By.CSS_SELECTOR, ".nav .who").text == "marie"
        card = driver.find_element(By.CSS_SELECTOR, f'article[data-incident="{incident}"]')
        card.find_element(By.NAME, "note").send_keys("doors shut")
        card.find_element(By.TAG_NAME, "button").click()
        wait(lambda: "Acknowledged." in driver.find_element(By.TAG_NAME, "main").text, 10,
             "the acknowledgement")  # fmt: skip
        card = driver.find_element(By.CSS_SELECTOR, f'article[data-incident="{incident}"]')
        assert "acknowledged by marie: “doors shut”" in card.text
        assert not card.find_elements(By.TAG_NAME, "form")

        # The floor's screens see it on MQTT (the retained incident topic) ...
        topic = f"driftgate/{SITE}/{GATEWAY}/incidents/{incident}"

        def on_mqtt() -> dict[str, Any] | None:
            lines = asyncio.run(retained(mosquitto, topic))
            body = json.loads(lines[0].split(" ", 1)[1]) if lines else {}
            return body if body.get("transition") == "acknowledged" else None

        body = wait(on_mqtt, 15, "the acknowledgement on the retained incident topic")
        assert (body["acknowledged_by"], body["state"]) == ("marie", "acknowledged")

        # ... and `driftgate alerts list` does too.
        def listed() -> str | None:
            out = driftgate("alerts", "list", "--state-dir", str(state)).stdout
            row = next((x for x in out.splitlines() if x.startswith(incident)), "")
            return row if " acknowledged " in row else None

        row = wait(listed, 15, "driftgate alerts list to show the acknowledgement")
        assert row.rstrip().endswith("marie")

        # A channel page: its chart, and a baseline capture that asks before it locks.
        viewport(driver, 1280, 900)
        driver.get(base + "channels/edge_paint.humidity?days=7")
        assert driver.find_elements(By.CSS_SELECTOR, "svg.chart path.chart-mean")
        assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart line.chart-warn")) == 2
        shoot(driver, "channel", tmp_path)
        capture = driver.find_element(By.CSS_SELECTOR, "form.capture")
        capture.find_element(By.NAME, "note").send_keys("sample approval SKU 4711")
        capture.find_element(By.TAG_NAME, "button").click()
        wait(lambda: "Capture this baseline?" in driver.page_source, 10, "the confirmation")
        assert not (state / "baselines.json").exists() or "captured" not in (
            state / "baselines.json").read_text()  # fmt: skip
        driver.find_element(By.CSS_SELECTOR, "section.confirm button").click()
        wait(lambda: "Baseline captured." in driver.page_source, 10, "the capture")
        stored = json.loads((state / "baselines.json").read_text())["edge_paint.humidity"]
        assert (stored["source"], stored["note"]) == ("captured", "sample approval SKU 4711")

        # The wall screen: large type, live, and nothing to press.
        viewport(driver, 1920, 1080)
        driver.get(base + "kiosk")
        wait(lambda: driver.find_element(By.ID, "live").text == "live", 10, "the event stream")
        assert driver.find_elements(By.CSS_SELECTOR, f'article[data-incident="{incident}"]')
        assert len(driver.find_elements(By.CSS_SELECTOR, ".card[data-channel]")) == 13
        controls = "button, form, input, select, textarea, a[href], [onclick], [contenteditable]"
        assert driver.find_elements(By.CSS_SELECTOR, controls) == []
        shoot(driver, "kiosk", tmp_path)
        log = (state / "audit.log").read_text().splitlines()
        assert [json.loads(x)["action"] for x in log] == ["login", "acknowledge",
                                                          "baseline capture"]  # fmt: skip
    finally:
        driver.quit()
