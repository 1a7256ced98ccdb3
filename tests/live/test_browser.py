"""The live page in a real browser (Debian's chromium driven by Selenium through chromedriver):
counters rise while traffic flows; "link down" on an uplink makes its link-down drops appear.
A screenshot is saved in the test's tmp dir as evidence."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.live.conftest import start_serve, stop_serve

pytestmark = pytest.mark.interop


@pytest.fixture
def browser():
    chromium = shutil.which("chromium")
    driver_bin = shutil.which("chromedriver")
    assert chromium and driver_bin, "chromium and chromium-driver are installed by setup.sh"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(driver_bin), options=opts)
    try:
        yield drv
    finally:
        drv.quit()


def _row(drv, path: str):
    return drv.find_element(By.XPATH, f"//tr[@data-port='{path}']")


def test_page_shows_live_counters_and_link_down_drops(tmp_path: Path, browser) -> None:
    served = start_serve(tmp_path, "three-hosts.yaml", "--interval", "0.2", "--token",
                         "t0ken")
    try:
        browser.get(f"{served.url}/?token=t0ken")
        wait = WebDriverWait(browser, 30, poll_frequency=0.2)
        wait.until(lambda d: d.find_element(By.ID, "status").text == "live")
        uplink = "esx1/vmnic0"

        def rx() -> int:
            return int(_row(browser, uplink).find_element(By.CLASS_NAME, "rx").text or 0)

        wait.until(lambda d: rx() > 0)
        first = rx()
        wait.until(lambda d: rx() > first)  # the counter rises while pings flow
        assert _row(browser, uplink).find_element(By.CLASS_NAME, "link").text == "up"
        _row(browser, uplink).find_element(By.CLASS_NAME, "linkbtn").click()
        wait.until(lambda d: _row(d, uplink).find_element(By.CLASS_NAME, "link").text
                   == "down")
        wait.until(lambda d: "link-down" in _row(d, uplink).find_element(
            By.CLASS_NAME, "drops").text)
        wait.until(lambda d: "vmnic0 link down" in d.find_element(By.ID, "events").text)
        # the topology picture carries the live figures: the uplink's node shows its drops
        node = browser.find_element(By.CSS_SELECTOR, f"text.live[data-port='{uplink}']")
        wait.until(lambda d: "drops" in node.text)
        # the trace form explains a frame from the running lab
        browser.find_element(By.ID, "trace-from").send_keys("app2")
        browser.find_element(By.ID, "trace-frame").send_keys("{eth: {dst: ff:ff:ff:ff:ff:ff}}")
        browser.find_element(By.ID, "trace-go").click()
        wait.until(lambda d: "Final:" in d.find_element(By.ID, "trace-out").text)
        assert "app3.eth0" in browser.find_element(By.ID, "trace-out").text
        # MAC table of a switch and the topology picture are on the page too
        assert browser.find_element(By.ID, "switch").get_attribute("value")
        shot = tmp_path / "hvsim-live.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        stop_serve(served)
