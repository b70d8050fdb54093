"""The browser demo end to end in a real headless browser (Debian's chromium through Selenium): upload a
skeleton, generate, see images; a file that is not an image and a photo with nobody in it give a message in the
page, not a traceback. gradio and selenium come with requirements-dev.txt; chromium and chromium-driver are Debian
packages: without them the test skips, except where GRPOSE_REQUIRE_BROWSER=1 (.ci/run installs them and sets it)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("GRPOSE_REQUIRE_BROWSER") == "1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_and_url():
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        if REQUIRED:
            raise RuntimeError("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
        pytest.skip("chromium / chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    sys.path.insert(0, str(ROOT / "scripts"))
    import demo

    port = _free_port()
    app = demo.launch(["--port", str(port), "--steps", "2", "--device", "cpu"], block=False)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver, f"http://127.0.0.1:{port}/"
    driver.quit()
    app.close()


def _submit(driver, url: str, path: Path, kind: str | None = None) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, 60)
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#pose_file input[type=file]")))
    upload.send_keys(str(path))
    if kind:
        driver.find_element(By.XPATH, f"//label[contains(., '{kind}')]").click()
    wait.until(lambda d: path.name in d.page_source)  # the upload finished
    driver.find_element(By.CSS_SELECTOR, "#generate").click()


def _wait_for_text(driver, text: str, timeout: int = 120) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: text in d.page_source)


def test_upload_a_skeleton_generate_and_see_images(browser_and_url, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from grpose.pose.skeleton import render_skeleton

    driver, url = browser_and_url
    pose = np.full((1, 17, 3), -1.0, np.float32)
    pose[0, :, 2] = 0
    joints = {0: (64, 20), 5: (50, 40), 6: (78, 40), 7: (44, 60), 8: (84, 60), 11: (54, 75), 12: (74, 75),
              13: (52, 100), 14: (76, 100), 15: (52, 120), 16: (76, 120)}  # fmt: skip
    for joint, (x, y) in joints.items():
        pose[0, joint] = (x, y, 1.0)
    skeleton = tmp_path / "skeleton.png"
    Image.fromarray(render_skeleton(pose, 128, 128)).save(skeleton)
    _submit(driver, url, skeleton)
    WebDriverWait(driver, 180).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) >= 2)
    assert driver.find_elements(By.CSS_SELECTOR, "#skeleton img")
    assert "Traceback" not in driver.page_source


def test_a_file_that_is_not_an_image_shows_a_message(browser_and_url, tmp_path):
    driver, url = browser_and_url
    bad = tmp_path / "notes.png"
    bad.write_text("this is text, not an image")
    _submit(driver, url, bad)
    _wait_for_text(driver, "notes.png is not an image")
    assert "Traceback" not in driver.page_source


def test_a_photo_with_nobody_shows_a_message(browser_and_url, tmp_path):
    from PIL import Image

    driver, url = browser_and_url
    empty = tmp_path / "empty_room.png"
    Image.fromarray(np.full((128, 128, 3), 127, np.uint8)).save(empty)
    _submit(driver, url, empty, kind="photo (detect the pose)")
    _wait_for_text(driver, "no person found in empty_room.png")
    assert "Traceback" not in driver.page_source
