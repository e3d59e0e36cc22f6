"""The example edge app (examples/edge-app) in a real headless Chromium: load the page,
record events, see the recommendations change and explain themselves, see ε and what
left the device, forget an item and everything. The screenshots are kept under
runs/test-artifacts/."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from pollinate.client import Device, DevicePolicy
from pollinate.shared.privacy.ledger import local_event

from .conftest import make_catalogue, make_mf

pytestmark = [pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "runs" / "test-artifacts"


def _edge_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "edge_app", ROOT / "examples/edge-app/edge_app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def server(tmp_path: Path, key: bytes) -> Iterator[tuple[str, Device]]:
    import uvicorn

    app_module = _edge_app()
    device = Device.open(tmp_path / "device.db", key=key)
    device.set_global(3, make_mf(), make_catalogue(40), {"model": "mf", "task": "ranking"})
    device.policy = DevicePolicy(local_dp=True, noise_multiplier=1.0, epsilon_budget=8.0,
                                 evaluation="noised")  # fmt: skip
    device.store.charge(local_event(round_=3, device="1", release=(1.0, 0.1, 10), clip_norm=0.5,
                                    delta=1e-4, accountant="pld", epsilon=1.25))  # fmt: skip
    device.store.record_release(3, "train", {"item_factors.weight": np.zeros((40, 4), np.float32)},
                                {"local-epsilon": 1.25})  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app_module.create_app(device), host="127.0.0.1", port=port,
                            log_level="warning", ws="none")  # fmt: skip
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{port}/", device
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        device.close()


def _items(driver: Any, css: str) -> list[str]:
    """The data-item of every element matching ``css``, read in one script (the page
    re-renders its lists, so element handles go stale)."""
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.dataset.item)"
    out: list[str] = driver.execute_script(script, css)
    return out


def _has_event(item: str) -> Any:
    return lambda d: item in _items(d, "li.event")


def _texts(driver: Any, css: str) -> list[str]:
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)"
    out: list[str] = driver.execute_script(script, css)
    return out


def test_record_recommend_explain_forget_in_chromium(
    server: tuple[str, Device], chromium: tuple[str, str]
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, device = server
    browser, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1200",
                "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    wait = WebDriverWait(driver, 15)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(url)
        wait.until(lambda d: len(_items(d, "li.rec")) == 10)
        cold = _items(driver, "li.rec")
        assert "content and popularity" in driver.find_element(By.ID, "source").text
        assert driver.find_element(By.ID, "epsilon").text == "1.250"
        assert driver.find_element(By.ID, "budget-left").text == "6.750"
        releases = driver.find_element(By.ID, "releases").text
        assert "item_factors.weight [40×4] 640 B" in releases
        # record: search, like two titles from the catalogue
        liked = [("Title 12", "item-12"), ("Title 8", "item-8"), ("Title 3", "item-3"),
                 ("Title 21", "item-21")]  # fmt: skip
        for n, (title, item) in enumerate(liked):
            if n == 2:  # two likes: content and popularity, already following them
                content = _items(driver, "li.rec")
                assert content != cold
                assert "content and popularity" in driver.find_element(By.ID, "source").text
            box = driver.find_element(By.ID, "search")
            box.clear()
            box.send_keys(title)
            hit = wait.until(ec.element_to_be_clickable(
                (By.CSS_SELECTOR, f'#results li[data-item="{item}"] button.like')))  # fmt: skip
            hit.click()
            wait.until(_has_event(item))
        wait.until(lambda d: "model" in d.find_element(By.ID, "source").text)
        warm = _items(driver, "li.rec")
        assert warm not in (cold, content) and not {item for _, item in liked} & set(warm)
        whys = _texts(driver, "li.rec .why")
        assert any("because you liked Title 12" in w or "because you liked Title 8" in w
                   for w in whys), whys  # fmt: skip
        assert [e.item for e in device.events()] == [item for _, item in liked]
        driver.save_screenshot(str(ARTIFACTS / "edge-app.png"))
        # a bad event is refused with a clear message and stores nothing
        # forget one item, then everything
        driver.find_element(By.CSS_SELECTOR, 'li.event[data-item="item-12"] button.forget').click()
        rest = ["item-21", "item-3", "item-8"]  # newest first on the page
        wait.until(lambda d: _items(d, "li.event") == rest)
        assert sorted(e.item for e in device.events()) == sorted(rest)
        driver.find_element(By.ID, "forget-all").click()
        driver.switch_to.alert.accept()
        wait.until(lambda d: _items(d, "li.event") == [])
        wait.until(lambda d: _items(d, "li.rec") == cold)
        assert device.events() == []
        assert driver.find_element(By.ID, "epsilon").text == "1.250"  # the ledger stays
        driver.save_screenshot(str(ARTIFACTS / "edge-app-forgotten.png"))
        console = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert console == [], console
        outside = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                req = message["params"]["request"]["url"]
                if not req.startswith((url, "data:")):
                    outside.append(req)
        assert outside == []
    finally:
        driver.quit()


def test_the_api_refuses_a_bad_event_and_stores_nothing(server: tuple[str, Device]) -> None:
    import urllib.error
    import urllib.request

    url, device = server
    for body, match in (({"item": "item-1", "rating": "NaN"}, "finite"),
                        ({"item": "item-1", "kind": "binge"}, "kind must be one of"),
                        ({"item": ""}, "non-empty")):  # fmt: skip
        req = urllib.request.Request(url + "api/record", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 400 and match in json.loads(err.value.read())["error"]
    assert device.events() == []
    with urllib.request.urlopen(url + "api/export", timeout=10) as res:
        export = json.loads(res.read())
    assert export["format"] == "pollinate-device-export/1"
