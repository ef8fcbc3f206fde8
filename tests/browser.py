"""A real browser for the status page's tests and bench: Debian's ``chromium`` driven headless
by selenium through Debian's ``chromium-driver``. Nothing is downloaded: the driver and the
browser are the installed ones (selenium's own driver manager is never asked)."""

from __future__ import annotations

from servers import require_binary

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def headless_chromium(width: int = 1280, height: int = 800):  # type: ignore[no-untyped-def]
    """A headless Chromium whose page is exactly ``width`` x ``height`` CSS pixels."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = require_binary(CHROMIUM, "chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--disable-extensions", "--no-first-run",
                "--lang=en-GB"):  # fmt: skip
        options.add_argument(arg)
    service = Service(executable_path=require_binary(CHROMEDRIVER, "chromium-driver"))
    driver = webdriver.Chrome(service=service, options=options)
    viewport(driver, width, height)
    return driver


def viewport(driver, width: int, height: int) -> None:  # type: ignore[no-untyped-def]
    """Set the page's size (a tablet, a wall screen) regardless of the window's frame."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
