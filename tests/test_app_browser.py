"""The annotation tool end to end in a real headless browser (Debian's chromium and
chromium-driver through selenium; `.ci/run` installs them).

The server runs on a free localhost port with the tiny model trained on ellipses
(`tiny_models.trained_workdir`), a generated ellipse image and a NIfTI volume of
ellipses. The first test clicks the four extreme points on the canvas, waits for the
contour, saves, checks the saved label map against the truth (DSC above the four-point
polygon's), and reopens the image to see the saved object again; the second follows an
object through the volume between a first and a last slice named with the buttons and
checks the saved label volume against `volume.propagate` on the same clicks. Skipped,
with the reason, only where no browser is installed.
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


# five slices of one ellipse growing upwards (image, mask per slice)
_rng = np.random.default_rng(8)
VOLUME = [ellipse_image(_rng, center=(32, 30), axes=(8 + 2 * z, 6 + z)) for z in range(5)]

# an ellipsoid in a volume of 2.5 mm slices (array axes x, y, z), uint8 as shown
_x, _y, _z = np.meshgrid(np.arange(40), np.arange(48), np.arange(16), indexing="ij")
ELLIPSOID = ((_x - 19) / 12) ** 2 + ((_y - 25) / 16) ** 2 + ((_z - 8) / 5) ** 2 <= 1
ELLIPSOID_IMAGE = np.clip(
    70 + 110 * ELLIPSOID + np.random.default_rng(9).normal(0, 8, ELLIPSOID.shape), 0, 255
).astype(np.uint8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(trained_workdir, tmp_path):
    """(url, image folder, truth mask, segmenter, folder) of a running server; stopped
    afterwards. The folder holds ellipse.png and v.nii (slice z shown as VOLUME[z])."""
    uvicorn = pytest.importorskip("uvicorn")
    nib = pytest.importorskip("nibabel")
    root = tmp_path / "images"
    root.mkdir()
    img, mask = ellipse_image(np.random.default_rng(7), 64, 64, center=(31, 33), axes=(17, 11))
    Image.fromarray(img).save(root / "ellipse.png")
    stack = np.stack([np.rot90(im, -1) for im, _ in VOLUME], axis=2).astype(np.int16)
    nib.save(nib.Nifti1Image(stack, np.eye(4)), root / "v.nii")
    nib.save(nib.Nifti1Image(ELLIPSOID_IMAGE, np.diag([1.0, 1.0, 2.5, 1.0])), root / "e.nii")
    seg = seglib.Segmenter.from_workdir(str(trained_workdir), bucket_size=1)
    images = folder_lib.ImageFolder(str(root), max_pixels=10**6)
    app = server.create_app(seg, images, max_upload_bytes=1 << 20)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{port}/", root, mask, seg, images
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
    cy = view["oy"] + (y + 0.5) * view["scale"] * view["aspect"]
    size = canvas.size  # offsets are from the element's centre
    ActionChains(driver).move_to_element_with_offset(
        canvas, int(round(cx - size["width"] / 2)), int(round(cy - size["height"] / 2))
    ).click().perform()


def test_four_clicks_contour_save_and_reopen(served, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    url, root, mask, _, _ = served
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

    # another image while the object is not saved: the page asks, and No keeps the work
    browser.find_element("css selector", 'li[data-id="v.nii"]').click()
    ask = browser.switch_to.alert
    assert "ellipse.png has changes that are not saved" in ask.text
    ask.dismiss()
    assert browser.execute_script("return window.dlset.state.image.id") == "ellipse.png"
    assert browser.execute_script("return window.dlset.state.objects.length") == 1

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
    # renamed from the list (the page asks for the new label), then saved under it
    items[0].find_element("css selector", "button.rename").click()
    prompt = browser.switch_to.alert
    prompt.send_keys("  optic disc ")
    prompt.accept()
    wait_for(browser, lambda d: "optic disc" in d.find_element("id", "objects").text, "rename")
    browser.find_element("id", "save").click()
    wait_for(browser, lambda d: "saved (revision 2)" in d.find_element("id", "status").text, "save")
    saved = json.loads((root / "ellipse.annotation.json").read_text())
    # saved: the next image opens without a question (PageDown; an alert would fail the
    # wait), PageUp goes back
    ActionChains(browser).send_keys(Keys.PAGE_DOWN).perform()
    wait_for(browser, lambda d: d.find_element("id", "status").text.startswith("v.nii"), "v.nii")
    ActionChains(browser).send_keys(Keys.PAGE_UP).perform()
    wait_for(
        browser, lambda d: d.find_element("id", "status").text.startswith("ellipse"), "ellipse"
    )
    assert saved["labels"] == [{"name": "optic disc", "value": 1}]
    assert saved["objects"][0]["label"] == "optic disc"
    np.testing.assert_array_equal(np.asarray(Image.open(root / "ellipse.labels.png")), labels)
    shot = os.environ.get("DLSET_APP_SCREENSHOT")
    if shot:  # scripts can keep the page's picture (the README's)
        browser.save_screenshot(shot)


def test_the_brush_paints_and_erases_the_current_object(served, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    url, root, mask, seg, _ = served
    open_image(browser, url, "ellipse.png")
    points = targets.extreme_points(mask)
    for x, y in points:
        click_pixel(browser, x, y)
    canvas = browser.find_element("id", "canvas")
    wait_for(browser, lambda d: canvas.get_attribute("data-contours") == "1", "the contour")
    area = browser.execute_script("return window.dlset.state.objects[0].area")

    def drag(x0, y0, x1, y1):  # image pixels -> a main-button drag on the canvas
        v, size = view_at(browser), canvas.size
        cx = v["ox"] + (x0 + 0.5) * v["scale"] - size["width"] / 2
        cy = v["oy"] + (y0 + 0.5) * v["scale"] - size["height"] / 2
        ActionChains(browser).move_to_element_with_offset(
            canvas, int(round(cx)), int(round(cy))
        ).click_and_hold().move_by_offset(
            int(round((x1 - x0) * v["scale"])), int(round((y1 - y0) * v["scale"]))
        ).release().perform()
        wait_idle(browser, "the edited mask")

    ActionChains(browser).send_keys("b").perform()  # paint, radius 3 px
    assert "paint brush, radius 3 px" in browser.find_element("id", "status").text
    drag(4, 5, 14, 5)  # a band above the ellipse, outside the model's mask
    painted = browser.execute_script("return window.dlset.state.objects[0].area")
    assert painted > area + 40, (area, painted)
    ActionChains(browser).send_keys("e").send_keys("[").perform()  # erase, radius 2 px
    drag(31, 33, 33, 33)  # a hole in the middle
    erased = browser.execute_script("return window.dlset.state.objects[0].area")
    assert erased < painted - 10, (painted, erased)
    ActionChains(browser).send_keys("e").perform()  # back to clicks
    assert browser.execute_script("return window.dlset.state.brush") == 0

    browser.find_element("id", "save").click()
    wait_for(browser, lambda d: "saved (revision 1)" in d.find_element("id", "status").text, "save")
    edits = json.loads((root / "ellipse.annotation.json").read_text())["objects"][0]["edits"]
    assert {e[3] for e in edits} == {1, -1} and {e[2] for e in edits} == {3, 2}
    img = np.asarray(Image.open(root / "ellipse.png"))
    want = seg.segment(img, [points]).objects[0].mask
    for x, y, r, sign in edits:  # the saved label map: the model's mask, then the discs
        yy, xx = np.mgrid[: want.shape[0], : want.shape[1]]
        want[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = sign > 0
    labels = np.asarray(Image.open(root / "ellipse.labels.png"))
    np.testing.assert_array_equal(labels == 1, want)
    assert want[5, 4:15].all() and not want[33, 31:34].any()
    # Ctrl+Z takes the last stroke back
    ActionChains(browser).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
    wait_idle(browser, "the undone stroke")
    assert browser.execute_script("return window.dlset.state.objects[0].area") == painted


def view_at(driver):
    return driver.execute_script("return Object.assign({}, window.dlset.view)")


def test_zoom_and_pan_keep_clicks_on_their_pixels(served, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.mouse_button import MouseButton
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.keys import Keys

    url, _, mask, _, _ = served
    open_image(browser, url, "ellipse.png")
    canvas = browser.find_element("id", "canvas")
    size = canvas.size
    fit = view_at(browser)
    assert fit["zoom"] == 1

    def under(v, mx, my):  # the image point (x, y) under canvas point (mx, my)
        return ((mx - v["ox"]) / v["scale"] - 0.5, (my - v["oy"]) / v["scale"] - 0.5)

    # two wheel notches towards the screen at a point off the centre: 1.25 x 1.25 the
    # fitting scale, and the image point under the pointer stays under it
    off = (-60, 40)  # from the canvas centre, canvas px
    mx, my = size["width"] / 2 + off[0], size["height"] / 2 + off[1]
    before = under(fit, mx, my)
    for _ in range(2):
        ActionChains(browser).scroll_from_origin(
            ScrollOrigin.from_element(canvas, *off), 0, -120
        ).perform()
    zoomed = view_at(browser)
    assert zoomed["scale"] == pytest.approx(fit["scale"] * 1.25**2)
    np.testing.assert_allclose(under(zoomed, mx, my), before, atol=0.6 / zoomed["scale"])

    # a right-button drag and a drag with Space held pan by the pointer's travel
    ab = ActionBuilder(browser)
    ab.pointer_action.move_to(canvas, 0, 0).pointer_down(MouseButton.RIGHT).move_by(
        30, -20
    ).pointer_up(MouseButton.RIGHT)
    ab.perform()
    panned = view_at(browser)
    assert (panned["ox"] - zoomed["ox"], panned["oy"] - zoomed["oy"]) == pytest.approx((30, -20))
    ActionChains(browser).key_down(Keys.SPACE).move_to_element(
        canvas
    ).click_and_hold().move_by_offset(-50, 10).release().key_up(Keys.SPACE).perform()
    panned2 = view_at(browser)
    assert (panned2["ox"] - panned["ox"], panned2["oy"] - panned["oy"]) == pytest.approx((-50, 10))
    assert browser.execute_script("return window.dlset.state.objects.length") == 0  # no clicks

    # the four extreme points clicked on the zoomed, panned view land on their pixels
    points = targets.extreme_points(mask)
    for x, y in points:
        cx = panned2["ox"] + (x + 0.5) * panned2["scale"]
        cy = panned2["oy"] + (y + 0.5) * panned2["scale"]
        assert 0 < cx < size["width"] and 0 < cy < size["height"], "point out of sight"
        click_pixel(browser, x, y)
    wait_for(browser, lambda d: canvas.get_attribute("data-contours") == "1", "the contour")
    clicked = browser.execute_script("return window.dlset.state.objects[0].points")
    assert sorted(map(tuple, clicked)) == sorted(map(tuple, points.tolist()))

    ActionChains(browser).send_keys("0").perform()  # the whole image again
    assert view_at(browser)["scale"] == pytest.approx(fit["scale"])
    assert view_at(browser)["ox"] == pytest.approx(fit["ox"])

    # H hides the outline and shows it again; Delete removes the object, Ctrl+Z undoes
    assert canvas.get_attribute("data-drawn") == "1"
    ActionChains(browser).send_keys("h").perform()
    assert canvas.get_attribute("data-drawn") == "0"
    # while hidden, a click on a point neither drags it nor starts a new object
    x, y = points[0]
    canvas_pos = view_at(browser)
    ActionChains(browser).move_to_element_with_offset(
        canvas,
        int(round(canvas_pos["ox"] + (x + 0.5) * canvas_pos["scale"] - size["width"] / 2)),
        int(round(canvas_pos["oy"] + (y + 0.5) * canvas_pos["scale"] - size["height"] / 2)),
    ).click_and_hold().move_by_offset(25, 15).release().perform()
    assert browser.execute_script("return window.dlset.state.objects[0].points") == clicked
    assert browser.execute_script("return window.dlset.state.objects.length") == 1
    assert "H shows them" in browser.find_element("id", "status").text
    ActionChains(browser).send_keys("h").perform()
    assert canvas.get_attribute("data-drawn") == "1"
    ActionChains(browser).send_keys(Keys.DELETE).perform()
    assert browser.execute_script("return window.dlset.state.objects.length") == 0
    assert canvas.get_attribute("data-drawn") == "0"
    ActionChains(browser).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
    wait_for(browser, lambda d: canvas.get_attribute("data-contours") == "1", "the undone delete")
    assert canvas.get_attribute("data-drawn") == "1"


def show_slice(driver, z):
    driver.execute_script(
        "const s = document.getElementById('slice'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input'));",
        z,
    )
    canvas = driver.find_element("id", "canvas")
    wait_for(driver, lambda d: canvas.get_attribute("data-shown") == str(z), f"slice {z}")
    return canvas


def wait_idle(driver, what):
    canvas = driver.find_element("id", "canvas")
    wait_for(driver, lambda d: canvas.get_attribute("data-busy") == "0", what)


def test_an_object_followed_through_a_volume_between_named_slices(served, browser):
    nib = pytest.importorskip("nibabel")
    from dlset_jax import volume

    url, root, _, seg, images = served
    open_image(browser, url, "v.nii")  # opens on the middle slice, 2
    points = targets.extreme_points(VOLUME[2][1])
    for p in points:
        click_pixel(browser, *p)
    canvas = browser.find_element("id", "canvas")
    wait_for(browser, lambda d: canvas.get_attribute("data-contours") == "1", "the contour")
    show_slice(browser, 1)  # the object stays current: name its first slice here
    browser.find_element("id", "first-slice").click()
    wait_idle(browser, "the propagation")
    assert "(1..4)" in browser.find_element("id", "status").text  # up to where it vanishes
    show_slice(browser, 3)
    browser.find_element("id", "last-slice").click()
    wait_idle(browser, "the propagation")
    assert "3 slices (1..3)" in browser.find_element("id", "status").text
    assert canvas.get_attribute("data-drawn") == "1"  # its outline on this slice
    assert show_slice(browser, 4).get_attribute("data-drawn") == "0"  # beyond the last one
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(browser).send_keys(Keys.ARROW_DOWN).perform()  # a slice down
    wait_for(browser, lambda d: canvas.get_attribute("data-shown") == "3", "slice 3")
    assert canvas.get_attribute("data-drawn") == "1"
    items = browser.find_elements("css selector", "#objects li")
    assert len(items) == 1 and "3-D, slices 1..3 (given 1..3)" in items[0].text
    # this model takes no corrective clicks: the page says so and sends nothing
    show_slice(browser, 3)
    ActionChains(browser).key_down(Keys.SHIFT).perform()
    click_pixel(browser, 30, 32)
    ActionChains(browser).key_up(Keys.SHIFT).perform()
    assert "takes no corrective clicks" in browser.find_element("id", "status").text

    browser.find_element("id", "save").click()
    wait_for(
        browser, lambda d: "saved (revision 1)" in d.find_element("id", "status").text, "the save"
    )
    lab = np.asarray(nib.load(root / "v.labels.nii.gz").dataobj)
    want = volume.propagate(seg, images.load("v.nii").frames, 2, points, extent=(1, 3)).labels
    for z in range(5):
        np.testing.assert_array_equal(np.rot90(lab[..., z]) > 0, want[z])
    assert want[1:4].any(axis=(1, 2)).all() and not lab[..., [0, 4]].any()
    saved = json.loads((root / "v.annotation.json").read_text())["objects"][0]
    assert saved["propagate"] and saved["extent"] == [1, 3] and saved["slice"] == 2

    open_image(browser, url, "v.nii")  # reopened on its clicked slice, followed again
    wait_idle(browser, "the saved object")
    assert show_slice(browser, 1).get_attribute("data-drawn") == "1"
    items = browser.find_elements("css selector", "#objects li")
    assert "3-D, slices 1..3" in items[0].text


def test_a_volume_sliced_along_another_axis_with_its_true_pixel_shape(served, browser):
    nib = pytest.importorskip("nibabel")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    url, root, _, seg, _ = served
    open_image(browser, url, "e.nii")
    canvas = browser.find_element("id", "canvas")
    assert view_at(browser)["aspect"] == 1  # axis 2: 1 x 1 mm pixels
    Select(browser.find_element("id", "axis")).select_by_value("0")
    wait_for(
        browser,
        lambda d: (
            (canvas.get_attribute("data-axis"), canvas.get_attribute("data-shown")) == ("0", "20")
        ),
        "the middle slice along axis 0",
    )
    # rows are the 2.5 mm slices, columns 1 mm: drawn 2.5 times as tall as wide
    assert view_at(browser)["aspect"] == pytest.approx(2.5)
    from selenium.webdriver.common.keys import Keys

    ActionChains(browser).send_keys(Keys.ARROW_DOWN).perform()  # slices, not axes
    wait_for(browser, lambda d: canvas.get_attribute("data-shown") == "19", "slice 19")
    ActionChains(browser).send_keys(Keys.ARROW_UP).perform()
    wait_for(browser, lambda d: canvas.get_attribute("data-shown") == "20", "slice 20")
    assert canvas.get_attribute("data-axis") == "0"
    frame = np.rot90(ELLIPSOID_IMAGE[20])  # (z, y) turned as the tool shows it: (16, 48)
    truth = np.rot90(ELLIPSOID[20])
    points = targets.extreme_points(truth)
    for p in points:
        click_pixel(browser, *p)
    wait_for(browser, lambda d: canvas.get_attribute("data-contours") == "1", "the contour")
    items = browser.find_elements("css selector", "#objects li")
    assert "(axis 0, slice 20)" in items[0].text
    clicked = browser.execute_script("return window.dlset.state.objects[0].points")
    assert sorted(map(tuple, clicked)) == sorted(map(tuple, points.tolist()))

    browser.find_element("id", "save").click()
    wait_for(
        browser, lambda d: "saved (revision 1)" in d.find_element("id", "status").text, "the save"
    )
    lab = np.asarray(nib.load(root / "e.labels.nii.gz").dataobj)
    want = seg.segment(frame, [points]).objects[0].mask
    assert want.any() and not lab[:20].any() and not lab[21:].any()
    np.testing.assert_array_equal(lab[20] > 0, np.rot90(want, -1))  # the plane x = 20

    # along axis 2 the object is not drawn; picking it in the list shows its axis again
    Select(browser.find_element("id", "axis")).select_by_value("2")
    wait_for(browser, lambda d: canvas.get_attribute("data-axis") == "2", "axis 2")
    assert canvas.get_attribute("data-drawn") == "0"
    browser.find_elements("css selector", "#objects li")[0].click()
    wait_for(
        browser,
        lambda d: (
            (canvas.get_attribute("data-axis"), canvas.get_attribute("data-shown")) == ("0", "20")
        ),
        "the object's axis and slice",
    )
    assert canvas.get_attribute("data-drawn") == "1"
