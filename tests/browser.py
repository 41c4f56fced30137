"""Headless Chromium for the tests that look at a page as a person would (selenium + Debian's
chromium and chromium-driver, installed by `make setup-browser`). Skips with a reason where absent."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

# flags that work on a headless, offline, root container; a fresh profile per browser
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def _binaries() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[serve]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no chromium/chromedriver on PATH (make setup-browser installs Debian's chromium "
                    "and chromium-driver)")
    return browser, driver


@contextmanager
def chromium(profile: Path, width: int = 1280, height: int = 1400):
    """A selenium driver for headless Chromium that keeps the page's console log; quits on exit."""
    browser, driver = _binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = browser
    for f in FLAGS:
        opts.add_argument(f)
    profile.mkdir(parents=True, exist_ok=True)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument(f"--window-size={width},{height}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    drv.set_page_load_timeout(60)
    drv.set_script_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def console_errors(drv) -> list[str]:
    """The page's console messages at level SEVERE (errors, failed loads) so far."""
    return [e["message"] for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def broken_images(drv) -> list[str]:
    """The alt text (or src head) of every <img> that did not load."""
    return drv.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.alt || i.src.slice(0, 60));")
