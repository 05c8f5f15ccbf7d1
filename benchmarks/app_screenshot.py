"""Screenshot of ``ddimkit app`` in headless Chromium: serve the page, press Sample, wait for the grid, save a PNG.

    apt-get install -y chromium chromium-driver   # Debian's browser and its WebDriver
    pip install -e '.[app]'                       # Gradio and Selenium
    python benchmarks/app_screenshot.py --ckpt pretrained:mnist --out docs/images/app.png

The browser helpers here are also what ``tests/test_app_browser.py`` drives the page with.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver")


def find_chromium() -> tuple[str | None, str | None]:
    """Paths of a Chromium browser and its chromedriver, or None for what is missing."""
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = next((p for p in map(shutil.which, DRIVERS) if p), None)
    return browser, driver


def chromium_driver(width: int = 1280, height: int = 1000):
    """A headless Chromium driven by Selenium; the paths are given, so Selenium downloads nothing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_chromium()
    if not (browser and driver):
        raise FileNotFoundError("no Chromium and chromedriver: apt-get install -y chromium chromium-driver")
    opts = Options()
    opts.binary_location = browser
    # --no-sandbox: CI and containers run as root, where Chromium's sandbox refuses to start.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def _loaded_image(driver, css: str):
    from selenium.webdriver.common.by import By

    for img in driver.find_elements(By.CSS_SELECTOR, css):
        if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img):
            return img
    return False


def sample_in_page(driver, url: str, timeout: float = 60.0):
    """Open the page, press Sample and return the grid's <img> once it has loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, timeout)
    wait.until(ec.element_to_be_clickable((By.ID, "sample-button"))).click()
    return wait.until(lambda d: _loaded_image(d, "#sample-grid img"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default="pretrained:mnist")
    p.add_argument("--out", default="docs/images/app.png")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=960)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ddimkit.app import launch

    demo = launch(args.ckpt, port=free_port(), device="cpu", block=False)
    driver = chromium_driver(args.width, args.height)
    try:
        t0 = time.perf_counter()
        sample_in_page(driver, demo.local_url)
        time.sleep(1.0)  # let the info line and the progress bar settle
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(args.out)
        print(f"wrote {args.out} ({time.perf_counter() - t0:.1f} s from page load to the sampled grid)")
    finally:
        driver.quit()
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
