"""The web page of ``dalle2 serve`` in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, Selenium).

Types a prompt, clicks Generate, waits for the images and downloads one through its link; then makes
variations of an uploaded image and an inpainting edit with a mask painted on the page's canvas.
``DALLE2_SCREENSHOT=1`` also saves ``docs/serve-page.png`` (the README shows it; set
``DALLE2_SCREENSHOT_MODEL=DIR`` to show a trained model instead of the tiny test one). Skips, saying why, where
Selenium, Chromium or chromedriver is missing or the browser cannot start.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

import dalle2
from dalle2.serve import ServeOptions, create_app
from tests.serve_support import ServerThread, open_png

ROOT = Path(__file__).resolve().parents[1]


def _browser_paths() -> tuple[str, str]:
    browser = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("headless browser test needs Chromium and chromedriver (apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[test]')")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,1000", "--hide-scrollbars", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as error:
        pytest.skip(f"Chromium did not start: {str(error).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_server(request: pytest.FixtureRequest) -> str:
    """The tiny unCLIP model, or the model folder in ``DALLE2_SCREENSHOT_MODEL`` (for a README screenshot)."""
    folder = os.environ.get("DALLE2_SCREENSHOT_MODEL") or request.getfixturevalue("tiny_unclip")
    app = create_app({Path(folder).name: dalle2.load(folder)}, ServeOptions(max_wait_ms=5))
    with ServerThread(app) as url:
        yield url


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def loaded_images(driver) -> int:
    return driver.execute_script(
        "return [...document.querySelectorAll('#results img')].filter(i => i.complete && i.naturalWidth > 0).length"
    )


def status_text(driver) -> str:
    return driver.find_element("id", "status").text


def test_generate_on_the_page_and_download(browser, page_server):
    from selenium.webdriver.support.ui import Select

    browser.get(page_server + "/")
    wait_for(lambda: len(Select(browser.find_element("id", "model")).options) >= 2, what="the model list")
    Select(browser.find_element("id", "size")).select_by_value("256x256")
    n = browser.find_element("id", "n")
    n.clear()
    n.send_keys("4")
    browser.find_element("id", "seed").send_keys("7")
    browser.find_element("id", "prompt").send_keys("a red circle above a blue square")
    browser.find_element("id", "generate").click()
    wait_for(lambda: loaded_images(browser) == 4, what="4 generated images")
    assert "error" not in browser.find_element("id", "status").get_attribute("class")
    link = browser.find_element("css selector", "#results a.download")
    assert link.get_attribute("download").endswith(".png")
    with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as response:
        assert response.headers["content-type"] == "image/png"
        assert open_png(response.read()).size == (256, 256)
    if os.environ.get("DALLE2_SCREENSHOT"):
        out = ROOT / "docs" / "serve-page.png"
        out.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(out))


def test_variations_and_inpainting_on_the_page(browser, page_server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    picture = tmp_path / "picture.png"
    Image.new("RGB", (64, 48), (30, 120, 200)).save(picture)  # not square: the page crops it
    browser.get(page_server + "/")
    wait_for(lambda: browser.execute_script("return document.querySelectorAll('#model option').length") >= 2,
             what="the model list")  # fmt: skip

    browser.find_element("id", "tab-variations").click()
    browser.find_element("id", "vary-file").send_keys(str(picture))
    wait_for(lambda: browser.find_element("id", "vary").is_enabled(), what="the variations button")
    browser.find_element("id", "vary").click()
    wait_for(lambda: "image" in status_text(browser) and loaded_images(browser) >= 1, what="variations")
    assert "error" not in browser.find_element("id", "status").get_attribute("class"), status_text(browser)

    browser.find_element("id", "tab-edit").click()
    browser.find_element("id", "edit-file").send_keys(str(picture))
    wait_for(lambda: browser.find_element("id", "edit").is_enabled(), what="the edit button")
    canvas = browser.find_element("id", "edit-canvas")
    ActionChains(browser).move_to_element_with_offset(canvas, -60, -60).click_and_hold().move_by_offset(
        40, 30).move_by_offset(20, 40).release().perform()  # fmt: skip
    painted = browser.execute_script(
        "const c = document.getElementById('edit-canvas'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let k = 0;"
        "for (let i = 0; i < d.length; i += 4) if (d[i] > 150 && d[i + 2] < 150) k++; return k;"
    )
    assert painted > 0  # the brush left red paint over the blue picture
    browser.find_element("id", "edit-prompt").send_keys("a green triangle")
    browser.execute_script("document.getElementById('results').innerHTML = ''")
    browser.find_element("id", "edit").click()
    wait_for(lambda: loaded_images(browser) >= 1 or "error" in browser.find_element("id", "status")
             .get_attribute("class"), what="the edit")  # fmt: skip
    assert "error" not in browser.find_element("id", "status").get_attribute("class"), status_text(browser)
