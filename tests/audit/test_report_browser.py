"""The audit report's HTML page in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium): no console errors, no network request, and the
headline (verdict, ε per layer, the empirical bound) visible. The screenshot is kept
under ``runs/test-artifacts/`` for a person to look at."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pollinate.shared.config import FederationConfig
from pollinate.simulations.engine import run_federation

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from pollinate.audit.report import write_report

    run = tmp_path_factory.mktemp("browser") / "run"
    cfg = FederationConfig.from_mapping(
        {"dataset": "synthetic", "synthetic-users": 60, "synthetic-items": 50, "embedding-dim": 4,
         "rounds": 2, "sample-rate": 0.5, "eval-every": 0, "progress": False, "dp": "both",
         "local-noise": 1.0, "user-noise": 1.0, "user-clip": 0.1, "server-opt": "fedavg",
         "server-lr": 1.0, "out": str(run), "device-state-dir": str(run / "devices")}
    )  # fmt: skip
    run_federation(cfg)
    json_path, html_path = write_report(run, run / "audit")
    return html_path, json.loads(json_path.read_text())


def test_the_report_page_shows_its_headline_and_fetches_nothing(
    report: tuple[Path, dict[str, Any]], chromium: tuple[str, str]
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    browser, driver_path = chromium
    html_path, data = report
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000",
                "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(html_path.resolve().as_uri())
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "audit-report.png"))
        console = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert console == [], console
        requests = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                url = message["params"]["request"]["url"]
                if not url.startswith(("file://", "data:")):
                    requests.append(url)
        assert requests == [], requests
        # What a reader sees first: the verdict, each layer's ε and the empirical bound.
        text = driver.find_element(By.TAG_NAME, "body").text
        assert data["verdict"] in text.lower()
        for name, layer in data["layers"].items():
            assert name in text.lower()
            assert f"{layer['epsilon']:.3g}" in text or f"{layer['epsilon']:.4g}" in text
        assert "empirical" in text.lower()
        images = driver.find_elements(By.TAG_NAME, "img")
        assert images and all(i.get_attribute("src").startswith("data:image/png") for i in images)
        assert all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
    finally:
        driver.quit()
