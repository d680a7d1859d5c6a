"""The annotation tool end to end in a real headless browser (Debian's chromium and
chromium-driver through selenium; `.ci/run` installs them).

The server runs on a free localhost port with the tiny model trained on ellipses
(`tiny_models.trained_workdir`) and a generated ellipse image. The test clicks the four
extreme points on the canvas, waits for the contour, saves, checks the saved label map
against the truth (DSC above the four-point polygon's), and reopens the image to see
the saved object again. Skipped, with the reason, only where no browser is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image
from tiny_models import ellipse_image

from dlset_jax import metrics, targets
from dlset_jax import segmenter as seglib
from dlset_jax.app import folder as folder_lib
from dlset_jax.app import server

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(trained_workdir, tmp_path):
    """(url, image folder, truth mask) of a running server; stopped afterwards."""
    uvicorn = pytest.importorskip("uvicorn")
    root = tmp_path / "images"
    root.mkdir()
    img, mask = ellipse_image(np.random.default_rng(7), 64, 64, center=(31, 33), axes=(17, 11))
    Image.fromarray(img).save(root / "ellipse.png")
    seg = seglib.Segmenter.from_workdir(str(trained_workdir), bucket_size=1)
    app = server.create_app(
        seg, folder_lib.ImageFolder(str(root), max_pixels=10**6), max_upload_bytes=1 << 20
    )
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{port}/", root, mask
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "no chromium / chromedriver installed (apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1100,800",
        "--disable-dev-shm-usage",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def wait_for(driver, condition, what, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout).until(lambda d: condition(d))
    except Exception:
        status = driver.find_element("id", "status").text
        raise AssertionError(f"timed out waiting for {what}; the page says: {status!r}") from None


def open_image(driver, url, image_id):
    driver.get(url)
    item = wait_for(
        driver,
        lambda d: d.find_elements("css selector", f'li[data-id="{image_id}"]'),
        "the image list",
    )[0]
    item.click()
    wait_for(
        driver, lambda d: d.find_element("id", "status").text.startswith(image_id), "the image"
    )


def click_pixel(driver, x, y):
    """Clicks image pixel (x, y) on the canvas where the page draws it."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "canvas")
    view = driver.execute_script("return window.dlset.view")
    cx = view["ox"] + (x + 0.5) * view["scale"]
    cy = view["oy"] + (y + 0.5) * view["scale"]
    size = canvas.size  # offsets are from the element's centre
    ActionChains(driver).move_to_element_with_offset(
        canvas, int(round(cx - size["width"] / 2)), int(round(cy - size["height"] / 2))
    ).click().perform()


def test_four_clicks_contour_save_and_reopen(served, browser, tmp_path):
    url, root, mask = served
    open_image(browser, url, "ellipse.png")
    points = targets.extreme_points(mask)  # (4, 2) x, y: left, right, top, bottom
    order = [2, 1, 3, 0]  # clicked in another order than the model's: the page sorts them
    for k in order:
        click_pixel(browser, *points[k])
    canvas = browser.find_element("id", "canvas")
    wait_for(browser, lambda d: canvas.get_attribute("data-contours") == "1", "the contour")
    assert "contour ready" in browser.find_element("id", "status").text
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert Image.open(tmp_path / "page.png").size[0] > 0

    browser.find_element("id", "save").click()
    wait_for(
        browser, lambda d: "saved (revision 1)" in d.find_element("id", "status").text, "the save"
    )
    labels = np.asarray(Image.open(root / "ellipse.labels.png"))
    saved = json.loads((root / "ellipse.annotation.json").read_text())
    assert sorted(map(tuple, saved["objects"][0]["points"])) == sorted(map(tuple, points.tolist()))
    got = metrics.dice(labels == 1, mask)
    polygon = metrics.dice(targets.polygon_mask(points, mask.shape), mask)
    assert got > polygon, (got, polygon)

    # reopening the image shows the saved object and its contour again
    open_image(browser, url, "ellipse.png")
    wait_for(
        browser,
        lambda d: d.find_element("id", "canvas").get_attribute("data-contours") == "1",
        "the saved contour",
    )
    items = browser.find_elements("css selector", "#objects li")
    assert len(items) == 1 and "object" in items[0].text
    shot = os.environ.get("DLSET_APP_SCREENSHOT")
    if shot:  # scripts can keep the page's picture (the README's)
        browser.save_screenshot(shot)
