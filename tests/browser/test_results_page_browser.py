"""The results page in a real browser: headless Chromium from the distribution's packages.

The app runs on a real port (werkzeug in a thread, as inside ``abkit serve``); Chromium loads
the detail page of an experiment with data, and the test checks what a product owner sees: the
verdict banner, the numbers, the chart with its band and decision marker, the stylesheet applied
under the page's Content-Security-Policy, no console errors. Screenshots go to
``.artifacts/browser/`` (git-ignored).

No browser can be downloaded here: Selenium drives ``/usr/bin/chromium`` with
``/usr/bin/chromedriver`` (``apt-get install chromium chromium-driver``; override with
``ABKIT_CHROMIUM`` / ``ABKIT_CHROMEDRIVER``). Without them the test is skipped *visibly*, unless
``ABKIT_REQUIRE_BROWSER=1`` (set by ``.ci/run``): then it fails.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from abkit.config import Settings
from abkit.report import wording
from abkit.runtime import Runtime
from abkit.services.decisions import DecisionService
from abkit.store.sql import SqlStore
from abkit.web import create_app
from abkit.web.server import WebServer
from tests.helpers import T0, Clock, setup, traffic

ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / ".artifacts" / "browser"
KEY = "ranker-v2"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)


def _find(variable: str, default: str, *names: str) -> str | None:
    """The executable named by ``variable`` if set (and only it), else the usual places."""
    chosen = os.environ.get(variable)
    candidates = [chosen] if chosen else [default, *map(shutil.which, names)]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _unavailable(reason: str) -> None:
    message = f"{reason}; install it with: apt-get install -y chromium chromium-driver"
    if os.environ.get("ABKIT_REQUIRE_BROWSER", "") == "1":
        pytest.fail(f"{message} (ABKIT_REQUIRE_BROWSER=1: the browser test must run)")
    pytest.skip(message)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium driven by Selenium, with a fresh profile."""
    browser = _find("ABKIT_CHROMIUM", "/usr/bin/chromium", "chromium", "chromium-browser")
    driver_path = _find("ABKIT_CHROMEDRIVER", "/usr/bin/chromedriver", "chromedriver")
    if browser is None or driver_path is None:
        _unavailable(f"headless Chromium not found (chromium: {browser}, driver: {driver_path})")
    try:
        webdriver = importlib.import_module("selenium.webdriver")
        service_module = importlib.import_module("selenium.webdriver.chrome.service")
    except ImportError:
        _unavailable("the selenium package is missing (pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=service_module.Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def served(sqlite_url: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """An experiment promoted after a few looks, on a real port; (base URL, last snapshot)."""
    store = SqlStore.from_url(sqlite_url)
    clock = Clock(T0 + timedelta(minutes=20))
    setup(store, clock)
    decisions = DecisionService(store, clock)
    done = 0
    for look, total in enumerate((400, 1200, 2400, 4000, 6000, 9000, 13000, 18000)):
        traffic(store, units=total - done, lift=0.04, seed=20 + look, start=done)
        done = total
        outcome = decisions.look(KEY)
        assert outcome is not None
        if outcome.record.action != "continue":
            break
        clock.value += timedelta(minutes=7)
    assert outcome.record.action == "promote", outcome.record.reason
    assert outcome.record.look is not None and outcome.record.look >= 3
    settings = Settings(database_url=sqlite_url, actor="tester", admin_token="browser-admin")
    app = create_app(settings, Runtime(settings, store, clock))
    server = WebServer(app, "127.0.0.1:0")
    server.start()
    try:
        yield server.url, dict(outcome.record.snapshot)
    finally:
        server.stop()
        store.close()


def _screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(1000, int(height)))
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def test_detail_page_shows_verdict_numbers_and_chart(
    chromium: Any, served: tuple[str, dict[str, Any]]
) -> None:
    base, snapshot = served
    by = importlib.import_module("selenium.webdriver.common.by").By
    chromium.get(f"{base}/experiments/{KEY}")
    assert chromium.title == "ranker-v2 · abkit"

    banner = chromium.find_element(by.ID, "verdict")
    assert banner.is_displayed()
    assert "Promoted candidate: everyone now gets ranker-v2" in banner.text
    # The stylesheet applied (served by the app itself, allowed by its CSP): a coloured banner.
    background = banner.value_of_css_property("background-color")
    assert background not in ("rgba(0, 0, 0, 0)", "transparent")

    primary = next(c for c in snapshot["comparisons"] if c["role"] == "primary")
    row = chromium.find_element(
        by.CSS_SELECTOR, "section.metric table.numbers tbody tr:nth-child(2)"
    )
    assert row.is_displayed()
    text = row.text
    assert wording.effect(primary["estimate"], "binary", False) in text
    assert wording.effect(primary["ci_low"], "binary", False) in text
    assert f"{primary['n_treatment']:,}" in text and "better" in text

    charts = chromium.find_elements(by.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 2
    chart = charts[0]
    assert chart.is_displayed()
    assert chart.size["width"] > 500 and chart.size["height"] > 200
    band = chart.find_element(by.CSS_SELECTOR, "polygon.band")
    box = chromium.execute_script(
        "const b = arguments[0].getBBox(); return [b.width, b.height]", band
    )
    assert box[0] > 100 and box[1] > 10  # the confidence sequence is drawn, not degenerate
    assert len(chart.find_elements(by.CSS_SELECTOR, ":scope > circle.point")) == snapshot["look"]
    labels = [t.text for t in chart.find_elements(by.CSS_SELECTOR, "text")]
    assert "promoted candidate" in labels and "no difference" in labels
    assert any(label.startswith("minimum effect") for label in labels)
    assert "time of look (UTC)" in labels

    errors = [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []  # no CSP violation, no missing resource
    _screenshot(chromium, "results-page.png")


def test_list_and_registry_pages_render(chromium: Any, served: tuple[str, dict[str, Any]]) -> None:
    base, snapshot = served
    by = importlib.import_module("selenium.webdriver.common.by").By
    chromium.get(base + "/")
    table = chromium.find_element(by.CSS_SELECTOR, "table.list")
    assert table.is_displayed() and "Promoted candidate" in table.text
    assert f"{snapshot['units']['candidate']:,} units" in table.text
    _screenshot(chromium, "experiments.png")
    chromium.get(base + "/models")
    assert "live: ranker-v2" in chromium.find_element(by.TAG_NAME, "main").text
    _screenshot(chromium, "models.png")
    assert [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"] == []
