"""Headless Chromium driven through chromedriver (Debian's ``chromium`` and ``chromium-driver``).

The flags keep the browser off the network entirely: without the background-networking ones
Chromium tries to reach Google's services at start, which a closed CI network refuses.
"""

from __future__ import annotations

import base64
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def _which(names: tuple[str, ...], extra: tuple[str, ...] = ()) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return next((p for p in extra if Path(p).is_file()), None)


def find() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or the reason they cannot be used here."""
    browser = _which(CHROMIUM, ("/usr/bin/chromium",))
    driver = _which(DRIVER, ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"))
    if browser is None or driver is None:
        return "needs Debian's chromium and chromium-driver (apt install chromium chromium-driver; .ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e '.[dev]')"
    return browser, driver


@dataclass(frozen=True)
class PageCheck:
    console: list[dict[str, Any]]  # SEVERE browser-log entries: console errors, failed loads
    images: list[dict[str, Any]]  # every <img>: src prefix, complete, natural size
    title: str


@contextmanager
def browser(width: int = 1280, height: int = 900) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find()
    assert not isinstance(found, str), found
    chromium, driver_path = found
    profile = tempfile.mkdtemp(prefix="etl-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def load(driver: Any, page: Path) -> PageCheck:
    driver.get(page.resolve().as_uri())
    # Decoding is asynchronous: wait for every image's decode() promise before reading sizes.
    images = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const imgs = Array.from(document.images);
        Promise.allSettled(imgs.map(i => i.decode())).then(results => done(imgs.map((img, k) => ({
            src: img.getAttribute('src').slice(0, 30), alt: img.alt, complete: img.complete,
            width: img.naturalWidth, height: img.naturalHeight, decoded: results[k].status === 'fulfilled'}))));
        """
    )
    console = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    return PageCheck(console=console, images=images, title=driver.title)


def screenshot(driver: Any, path: Path, *, full_page: bool) -> Path:
    """A PNG of the first screen, or of the whole page (Chrome DevTools' captureBeyondViewport)."""
    if full_page:
        metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            },
        )
        path.write_bytes(base64.b64decode(shot["data"]))
    else:
        driver.save_screenshot(str(path))
    return path


def check_in_chromium(page: Path, *, table: str) -> tuple[PageCheck, list[str]]:
    """Load ``page``: return what Chromium saw and the rows of ``table``; save screenshots beside it."""
    found = find()
    if isinstance(found, str):
        pytest.skip(found)
    with browser() as driver:
        seen = load(driver, page)
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll("
            f"'#{table} tbody tr[data-artifact], #{table} tbody tr[data-device]'))"
            ".map(r => r.dataset.artifact || r.dataset.device)"
        )
        screenshot(driver, page.with_name(page.stem + "-screenshot.png"), full_page=False)
        screenshot(driver, page.with_name(page.stem + "-full.png"), full_page=True)
    return seen, rows


def assert_renders_cleanly(seen: PageCheck, *, min_images: int) -> None:
    assert seen.console == [], seen.console
    assert len(seen.images) >= min_images, seen.images
    for image in seen.images:
        assert image["decoded"] and image["complete"] and image["width"] > 100 and image["height"] > 100, image
        assert image["src"].startswith("data:image/png;base64,"), image


def assert_self_contained(html: str) -> None:
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//)""", html), "the page reaches out to the network"
    assert "<link" not in html.lower()
