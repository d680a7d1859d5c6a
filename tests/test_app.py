"""The annotation tool's API (`dlset_jax.app`), through FastAPI's test client.

Every endpoint, and every bad input the tool must refuse (paths out of the folder,
hidden files, oversize images and uploads, corrupt files, clicks outside the image,
unknown images, a save overtaken by another tab's) with its status and message, and
that a refused request writes nothing. The model is `random_model` (untrained: these
tests check the plumbing; the browser test checks a trained model's masks).
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import threading
import time

import numpy as np
import pytest
from PIL import Image
from tiny_models import dicom_file, dicom_series, ellipse_image, inside_polylines

from dlset_jax import segmenter as seglib
from dlset_jax import targets
from dlset_jax.app import folder as folder_lib
from dlset_jax.app import server

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

LOCAL = "http://127.0.0.1:8765"  # the server's own name (it refuses requests to others)
POINTS = [[10, 30], [50, 31], [30, 12], [31, 50]]


def png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def tree(root) -> dict:
    """{relative path: bytes} of every file under `root` (to assert that nothing changed)."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def seg(random_model):
    wd, _, _ = random_model
    return seglib.Segmenter.from_workdir(str(wd), bucket_size=4)


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    img, _ = ellipse_image(rng)
    (root / "a.png").write_bytes(png(img))
    (root / "sub" / "b.png").write_bytes(png(np.stack([img] * 3, -1)))
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(png(img))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (root / "big.png").write_bytes(png(np.zeros((80, 80), np.uint8)))
    (tmp_path / "secret.png").write_bytes(png(img))
    os.symlink(tmp_path / "secret.png", root / "link_out.png")
    return root


def local_client(seg, root, *, max_pixels=64 * 64, max_upload_bytes=20_000, **kwargs):
    """A client of the tool over the folder `root`, addressed as the server's own name."""
    folder = folder_lib.ImageFolder(str(root), max_pixels=max_pixels)
    app = server.create_app(seg, folder, max_upload_bytes=max_upload_bytes, **kwargs)
    return TestClient(app, base_url=LOCAL)


@pytest.fixture
def client(seg, images):
    return local_client(seg, images)


def test_page_and_static_files_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "<canvas" in r.text
    for name in ("app.js", "app.css"):
        assert client.get(f"/static/{name}").status_code == 200
    # the page fetches nothing from elsewhere
    for name in ("index.html", "app.js", "app.css"):
        text = open(os.path.join(server.STATIC, name)).read()
        assert "http://" not in text and "https://" not in text, name


def test_info_names_the_model_and_limits(client, seg):
    info = client.get("/api/info").json()
    assert info["model"]["step"] == seg.step
    assert info["model"]["takes_corrections"] is False
    assert info["limits"]["max_upload_bytes"] == 20_000


def test_listing_skips_hidden_links_out_and_non_images(client):
    ids = [im["id"] for im in client.get("/api/images").json()["images"]]
    assert ids == ["a.png", "big.png", "corrupt.png", "sub/b.png"]


def test_image_meta_and_slice_png(client):
    meta = client.get("/api/image", params={"id": "sub/b.png"}).json()
    assert (meta["width"], meta["height"], meta["n_slices"], meta["channels"]) == (64, 64, 1, 1)
    assert meta["annotation"] is None
    r = client.get("/api/slice", params={"id": "a.png", "z": 0, "lo": 50, "hi": 150})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    shown = np.asarray(Image.open(io.BytesIO(r.content)))
    assert shown.shape == (64, 64)
    assert shown.min() == 0 and shown.max() == 255  # the window stretches 50..150


@pytest.mark.parametrize(
    "image_id,status,needle",
    [
        ("../secret.png", 403, "not a path inside"),
        ("/etc/passwd", 403, "not a path inside"),
        ("sub/../../secret.png", 403, "not a path inside"),
        (".hidden.png", 403, "hidden files"),
        ("link_out.png", 403, "leaves the image folder"),
        ("nope.png", 404, "unknown image"),
        ("notes.txt", 404, "not an image"),
        ("corrupt.png", 422, "cannot read image"),
        ("big.png", 413, "limit"),
    ],
)
def test_bad_image_ids_are_refused(client, images, image_id, status, needle):
    before = tree(images)
    for method, path, kwargs in (
        ("get", "/api/image", {"params": {"id": image_id}}),
        ("get", "/api/slice", {"params": {"id": image_id}}),
        ("post", "/api/segment", {"json": {"id": image_id, "points": POINTS}}),
        ("post", "/api/save", {"json": {"id": image_id, "revision": 0, "objects": []}}),
    ):
        r = getattr(client, method)(path, **kwargs)
        assert r.status_code == status, (path, r.text)
        assert needle in r.json()["error"], (path, r.text)
        assert not r.json()["error"].startswith(f"{image_id}: {image_id}"), r.text
    assert tree(images) == before


def test_segment_returns_closed_contours_inside_the_image(client):
    r = client.post("/api/segment", json={"id": "a.png", "slice": 0, "points": POINTS})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["ms"] > 0 and isinstance(out["warnings"], list)
    for line in out["contours"]:
        xy = np.asarray(line)
        assert xy.shape[1] == 2 and (xy >= -1).all() and (xy <= 64).all()


def test_segment_contour_is_the_masks_boundary(seg, client):
    """The API's contour is the Segmenter's level line (`ObjectResult.contours`), and
    it encloses exactly the mask (an independent check with matplotlib's
    point-in-polygon test on every pixel centre)."""
    img, _ = ellipse_image(np.random.default_rng(1))
    obj = seg.segment(img, np.asarray(POINTS, float)).objects[0]
    assert obj.mask.any()
    np.testing.assert_array_equal(inside_polylines(obj.contours(), obj.mask.shape), obj.mask)
    r = client.post("/api/segment", json={"id": "a.png", "slice": 0, "points": POINTS})
    a_png = ellipse_image(np.random.default_rng(0))[0]  # the `images` fixture's a.png
    api = seg.segment(a_png, np.asarray(POINTS, float)).objects[0]
    assert len(r.json()["contours"]) == len(api.contours())
    for got, want in zip(r.json()["contours"], api.contours(), strict=True):
        np.testing.assert_allclose(got, want)


@pytest.mark.parametrize(
    "body,needle",
    [
        ({"id": "a.png", "points": [[10, 30], [50, 31], [30, 12], [31, 90]]}, "outside the image"),
        ({"id": "a.png", "points": [[10, 30], [50, 31], [30, 12]]}, "points"),
        ({"id": "a.png", "points": "left right"}, "points"),
        ({"id": "a.png", "slice": 3, "points": POINTS}, "slice 3 out of range"),
        ({"points": POINTS}, "id"),
    ],
)
def test_bad_clicks_are_400_with_the_reason(client, body, needle):
    r = client.post("/api/segment", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def test_malformed_and_oversize_json_bodies(client):
    r = client.post(
        "/api/segment", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    big = b'{"id": "a.png", "points": [' + b"[1, 1]," * 200_000 + b"[1, 1]]}"
    r = client.post("/api/segment", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["error"]


def obj(label="disc", color="#ff0000", points=POINTS, z=0, corrections=None):
    out = {"label": label, "color": color, "slice": z, "points": points}
    return out if corrections is None else {**out, "corrections": corrections}


def test_save_writes_label_map_and_clicks_and_reopens(client, images, seg):
    r = client.post(
        "/api/save", json={"id": "a.png", "revision": 0, "objects": [obj(), obj("cup")]}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"revision": 1, "files": ["a.annotation.json", "a.labels.png"]}
    labels = np.asarray(Image.open(images / "a.labels.png"))
    img = np.asarray(Image.open(images / "a.png"))
    want = seg.segment(img, [POINTS, POINTS]).objects
    # label 1 = disc, 2 = cup; the later object wins where they overlap
    np.testing.assert_array_equal(labels == 2, want[1].mask)
    doc = json.loads((images / "a.annotation.json").read_text())
    assert doc["labels"] == [{"name": "disc", "value": 1}, {"name": "cup", "value": 2}]
    assert doc["objects"][0]["points"] == POINTS and doc["revision"] == 1
    # each object's outline: the level set's contour, holding exactly its mask's pixels
    assert [(o["object"], o["label"], o["slice"]) for o in doc["outlines"]] == [
        (1, "disc", 0),
        (2, "cup", 0),
    ]
    for o, w in zip(doc["outlines"], want, strict=True):
        assert len(o["lines"]) == len(w.contours())
        for got, line in zip(o["lines"], w.contours(), strict=True):
            np.testing.assert_allclose(got, line)
        np.testing.assert_array_equal(inside_polylines(o["lines"], w.mask.shape), w.mask)
    meta = client.get("/api/image", params={"id": "a.png"}).json()
    assert meta["annotation"]["objects"] == doc["objects"]
    listed = {im["id"]: im["annotated"] for im in client.get("/api/images").json()["images"]}
    assert listed["a.png"] and not listed["sub/b.png"]
    # outputs are not offered as images
    assert "a.labels.png" not in listed


def test_a_stale_save_is_refused_and_writes_nothing(client, images):
    r = client.post("/api/save", json={"id": "a.png", "revision": 0, "objects": [obj()]})
    assert r.is_success
    before = tree(images)
    r = client.post("/api/save", json={"id": "a.png", "revision": 0, "objects": [obj("x")]})
    assert r.status_code == 409 and "reload" in r.json()["error"]
    assert tree(images) == before
    assert client.post("/api/save", json={"id": "a.png", "revision": 1, "objects": []}).is_success


@pytest.mark.parametrize(
    "bad,needle",
    [
        (obj(color="red"), "color"),
        (obj(label=""), "label"),
        (obj(z=2), "slice 2 out of range"),
        (obj(points=[[0, 0], [1, 0], [0, 1], [1, 1]] * 1), "within one pixel"),
        (obj(points=[[10, 30], [50, 31], [30, 12], [31, 64]]), "outside the image"),
    ],
)
def test_bad_objects_in_a_save_write_nothing(client, images, bad, needle):
    before = tree(images)
    r = client.post("/api/save", json={"id": "a.png", "revision": 0, "objects": [obj(), bad]})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
    assert tree(images) == before


def test_concurrent_saves_from_two_tabs(client, images):
    """Two tabs save the same revision at once: one wins, the other gets 409, and the
    files on disk are one complete save (label map and clicks of the same revision)."""
    barrier = threading.Barrier(2)
    codes = []

    def tab(label):
        barrier.wait()
        r = client.post("/api/save", json={"id": "a.png", "revision": 0, "objects": [obj(label)]})
        codes.append(r.status_code)

    threads = [threading.Thread(target=tab, args=(n,)) for n in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 409]
    doc = json.loads((images / "a.annotation.json").read_text())
    assert doc["revision"] == 1 and len(doc["labels"]) == 1
    assert not [n for n in os.listdir(images) if n.endswith(".tmp")]


def test_requests_to_another_host_or_from_another_site_are_refused(seg, images, client):
    """DNS rebinding (a site's own name resolved to 127.0.0.1) and cross-site requests (any
    page the user has open posting to the tool) get 403 and change nothing; the page's
    own requests, and clients that send no Origin (curl), go through."""
    upload = {"file": ("pwn.png", io.BytesIO(b"x"), "image/png")}
    r = client.get("/api/images", headers={"host": "attacker.example:8765"})
    assert r.status_code == 403 and "requests to host 'attacker.example:8765'" in r.json()["error"]
    r = client.post("/api/upload", files=upload, headers={"origin": "http://attacker.example"})
    assert r.status_code == 403 and "another site (http://attacker.example)" in r.json()["error"]
    r = client.post("/api/upload", files=upload, headers={"sec-fetch-site": "cross-site"})
    assert r.status_code == 403
    assert not (images / "uploads" / "pwn.png").exists()
    for host in ("localhost:8765", "[::1]:8765", "127.0.0.1"):
        assert client.get("/api/info", headers={"host": host}).status_code == 200, host
    r = client.post(
        "/api/segment",
        json={"id": "a.png", "points": POINTS},
        headers={"origin": LOCAL, "sec-fetch-site": "same-origin"},
    )
    assert r.status_code == 200, r.text
    # a server the user exposed (--host): any host name, still no cross-site writes
    exposed = TestClient(
        server.create_app(
            seg, folder_lib.ImageFolder(str(images), max_pixels=64 * 64),
            max_upload_bytes=20_000, hosts=None,
        ),
        base_url="http://annotation.lab:8765",
    )  # fmt: skip
    assert exposed.get("/api/info").status_code == 200
    r = exposed.post("/api/upload", files=upload, headers={"origin": "http://attacker.example"})
    assert r.status_code == 403


def test_images_sharing_a_name_stem_are_refused_before_their_outputs_mix(client, images):
    """a.png and a.jpg would read and write the same a.annotation.json and a.labels.png:
    opening or saving either is a 409 that names the other; nothing is written."""
    Image.open(images / "a.png").convert("RGB").save(images / "a.jpg")
    for image_id, other in (("a.png", "a.jpg"), ("a.jpg", "a.png")):
        r = client.get("/api/image", params={"id": image_id})
        assert r.status_code == 409 and f"{other} in the same folder" in r.json()["error"]
        r = client.post("/api/save", json={"id": image_id, "revision": 0, "objects": [obj()]})
        assert r.status_code == 409, r.text
    assert not list(images.glob("a.annotation.json")) and not list(images.glob("a.labels.*"))
    os.remove(images / "a.jpg")
    assert client.get("/api/image", params={"id": "a.png"}).status_code == 200


def test_an_image_replaced_on_disk_is_read_again(client, images):
    """The cache knows a file by its size and time: a new a.png of another size is what
    the page gets next, and what a save's label map is sized by."""
    assert client.get("/api/image", params={"id": "a.png"}).json()["width"] == 64
    new = images / "new.png"
    new.write_bytes(png(np.zeros((40, 50), np.uint8)))
    os.replace(new, images / "a.png")
    meta = client.get("/api/image", params={"id": "a.png"}).json()
    assert (meta["width"], meta["height"]) == (50, 40)


def test_a_saved_annotation_that_is_a_link_out_or_not_the_tools_is_refused(
    client, images, tmp_path
):
    (tmp_path / "outside.json").write_text(json.dumps({"revision": 1, "objects": []}))
    os.symlink(tmp_path / "outside.json", images / "a.annotation.json")
    r = client.get("/api/image", params={"id": "a.png"})
    assert r.status_code == 403 and "link out of the folder" in r.json()["error"]
    os.remove(images / "a.annotation.json")
    for text in ("[1, 2]", '{"x": 1}', '{"revision": "1", "objects": []}'):
        (images / "a.annotation.json").write_text(text)
        r = client.get("/api/image", params={"id": "a.png"})
        assert r.status_code == 422 and "not an annotation of this tool" in r.json()["error"]
    (images / "a.annotation.json").write_text("{broken")
    r = client.get("/api/image", params={"id": "a.png"})
    assert r.status_code == 422 and "unreadable" in r.json()["error"]


def test_upload_stores_a_new_image_once(client, images, seg):
    img, _ = ellipse_image(np.random.default_rng(2))
    r = client.post("/api/upload", files={"file": ("new.png", png(img), "image/png")})
    assert r.status_code == 200 and r.json() == {"id": "uploads/new.png"}
    assert (images / "uploads" / "new.png").read_bytes() == png(img)
    before = tree(images)
    for name, data, status, needle in (
        ("new.png", png(img), 409, "exists already"),
        ("bad.png", b"\x89PNG broken", 422, "cannot read"),
        ("huge.png", b"0" * 20_001, 413, "limit"),
        ("x.exe", b"MZ", 400, "expected an image"),
        ("a.labels.png", png(img), 400, "outputs"),
        (".hidden.png", png(img), 400, "expected an image"),
        ("n" * 300 + ".png", png(img), 400, "at most 200 bytes"),
    ):
        r = client.post("/api/upload", files={"file": (name, data, "application/octet-stream")})
        assert r.status_code == status, (name, r.text)
        assert needle in r.json()["error"], (name, r.text)
    assert tree(images) == before
    # a path in the file name is dropped: the upload lands in uploads/, never outside
    r = client.post("/api/upload", files={"file": ("../../escape.png", png(img), "image/png")})
    assert r.json() == {"id": "uploads/escape.png"}
    assert not (images.parent / "escape.png").exists()
    # a file named uploads where the folder would go: a clear refusal, not a 500
    root2 = images.parent / "other"
    root2.mkdir()
    (root2 / "uploads").write_text("")
    other = local_client(seg, root2)
    r = other.post("/api/upload", files={"file": ("n.png", png(img), "image/png")})
    assert r.status_code == 409 and "a file named uploads" in r.json()["error"]


def test_uploaded_dicom_files_stay_single_files(client, images):
    """Two DICOM files uploaded are two images, not one series folder `uploads`."""
    pytest.importorskip("pydicom")
    for k in (1, 2):
        img, _ = ellipse_image(np.random.default_rng(k))
        dicom_file(images / f"d{k}.dcm", img)
        data = (images / f"d{k}.dcm").read_bytes()
        os.remove(images / f"d{k}.dcm")
        r = client.post("/api/upload", files={"file": (f"d{k}.dcm", data, "application/dicom")})
        assert r.status_code == 200, r.text
    ids = {i["id"]: i["kind"] for i in client.get("/api/images").json()["images"]}
    assert ids["uploads/d1.dcm"] == ids["uploads/d2.dcm"] == "dicom" and "uploads" not in ids


def test_a_model_error_is_a_message_and_the_server_keeps_running(seg, images, monkeypatch):
    folder = folder_lib.ImageFolder(str(images), max_pixels=64 * 64)
    app = server.create_app(seg, folder, max_upload_bytes=1)
    client = TestClient(app, raise_server_exceptions=False, base_url=LOCAL)

    def boom(*a, **k):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(seg, "segment", boom)
    r = client.post("/api/segment", json={"id": "a.png", "points": POINTS})
    assert r.status_code == 500 and "out of memory (simulated)" in r.json()["error"]
    monkeypatch.undo()
    assert client.post("/api/segment", json={"id": "a.png", "points": POINTS}).status_code == 200


def test_volumes_have_slices_and_save_as_nifti_with_the_affine(seg, tmp_path):
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(3)
    vol = np.stack([ellipse_image(rng)[0] for _ in range(3)], axis=2).astype(np.int16) * 4
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-10, 5, 30)
    root = tmp_path / "vols"
    root.mkdir()
    nib.save(nib.Nifti1Image(vol, affine), root / "case.nii.gz")
    c = TestClient(
        server.create_app(
            seg, folder_lib.ImageFolder(str(root), max_pixels=10**6), max_upload_bytes=1
        ),
        base_url=LOCAL,
    )
    meta = c.get("/api/image", params={"id": "case.nii.gz"}).json()
    assert meta["n_slices"] == 3 and meta["spacing"] == pytest.approx([0.8, 0.8])
    r = c.post("/api/save", json={"id": "case.nii.gz", "revision": 0, "objects": [obj(z=1)]})
    assert r.status_code == 200 and "case.labels.nii.gz" in r.json()["files"]
    out = nib.load(root / "case.labels.nii.gz")
    np.testing.assert_allclose(out.affine, affine)
    lab = np.asarray(out.dataobj)
    assert lab.shape == vol.shape and lab[..., 0].max() == 0 and lab[..., 2].max() == 0
    assert lab[..., 1].max() == 1


def test_nan_background_is_refused_unless_the_tool_reads_it_as_the_minimum(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.stack([ellipse_image(np.random.default_rng(4))[0]] * 2, axis=2).astype(np.float32)
    vol[:3] = np.nan  # SPM's background
    root = tmp_path / "vols"
    root.mkdir()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "spm.nii")
    with pytest.raises(folder_lib.FolderError, match="NaN/inf intensities") as e:
        folder_lib.ImageFolder(str(root), max_pixels=10**6).load("spm.nii")
    assert e.value.status == 422 and str(root) not in str(e.value)
    loaded = folder_lib.ImageFolder(str(root), max_pixels=10**6, nonfinite="min").load("spm.nii")
    assert loaded.n_slices == 2 and loaded.source["nonfinite_filled"] == int(np.isnan(vol).sum())
    with pytest.raises(folder_lib.FolderError, match="nonfinite must be one of"):
        folder_lib.ImageFolder(str(root), max_pixels=10**6, nonfinite="zero")
    with pytest.raises(folder_lib.FolderError, match="8192 pixels, more than"):  # its header
        folder_lib.ImageFolder(str(root), max_pixels=8000).load("spm.nii")


def test_a_dicom_series_folder_is_one_volume_saved_as_nifti_beside_it(seg, tmp_path):
    nib = pytest.importorskip("nibabel")
    from dlset_jax import readers

    root = tmp_path / "scans"
    root.mkdir()
    pix, masks, _, _ = dicom_series(root / "case1", n=4, readme=False)
    dicom_series(root / "mixed", n=2, seed=1)  # a README inside: its files are not one volume
    dicom_series(tmp_path / "outside", n=2, readme=False)
    (root / "linked").mkdir()
    for name in os.listdir(tmp_path / "outside"):  # links out of the folder: not served
        os.symlink(tmp_path / "outside" / name, root / "linked" / name)
    images = folder_lib.ImageFolder(str(root), max_pixels=10**6)
    listed = {d["id"]: d["kind"] for d in images.list()}
    assert listed["case1"] == "dicom_series"
    assert not any(i.startswith("case1/") for i in listed)  # its slices are not images
    assert "mixed" not in listed and not any(i.startswith("linked") for i in listed)
    for bad in ("mixed", "linked"):
        with pytest.raises(folder_lib.FolderError):
            images.resolve(bad)
    c = TestClient(server.create_app(seg, images, max_upload_bytes=1), base_url=LOCAL)
    meta = c.get("/api/image", params={"id": "case1"}).json()
    assert meta["n_slices"] == 4
    pts = [[float(x), float(y)] for x, y in targets.extreme_points(masks[2])]
    r = c.post("/api/save", json={"id": "case1", "revision": 0, "objects": [obj(points=pts, z=2)]})
    assert r.status_code == 200, r.text
    assert r.json()["files"] == ["case1.annotation.json", "case1.labels.nii.gz"]
    out = nib.load(root / "case1.labels.nii.gz")
    series = readers.read_dicom_series(str(root / "case1"))
    np.testing.assert_allclose(out.affine, series["affine"], atol=1e-5)
    lab = np.asarray(out.dataobj)
    want = seg.segment(pix[2], [np.array(pts)]).objects[0].mask
    np.testing.assert_array_equal(readers.volume_slice(lab, 2, 2, rot90=True) > 0, want)
    assert not lab[..., [0, 1, 3]].any()
    assert {d["id"]: d["annotated"] for d in images.list()}["case1"]
    small = folder_lib.ImageFolder(str(root), max_pixels=64 * 64 * 3)  # the series has 4 slices
    with pytest.raises(folder_lib.FolderError, match="16384 pixels, more than") as e:
        small.load("case1")
    assert e.value.status == 413


def test_dicom_saves_a_dicom_seg_that_references_the_source(seg, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    hd = pytest.importorskip("highdicom")
    root = tmp_path / "dcm"
    root.mkdir()
    img, _ = ellipse_image(np.random.default_rng(4))
    dicom_file(root / "im.dcm", img)
    c = TestClient(
        server.create_app(
            seg, folder_lib.ImageFolder(str(root), max_pixels=10**6), max_upload_bytes=1
        ),
        base_url=LOCAL,
    )
    r = c.post("/api/save", json={"id": "im.dcm", "revision": 0, "objects": [obj("liver")]})
    assert r.status_code == 200, r.text
    assert r.json()["files"] == ["im.annotation.json", "im.seg.dcm"]
    out = hd.seg.segread(root / "im.seg.dcm")
    src = pydicom.dcmread(root / "im.dcm")
    assert out.get_segment_description(1).segment_label == "liver"
    ref = out.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    got = out.get_pixels_by_source_instance(
        source_sop_instance_uids=[src.SOPInstanceUID], segment_numbers=[1]
    )[0, ..., 0]
    want = seg.segment(img, np.asarray(POINTS, float)).objects[0].mask
    np.testing.assert_array_equal(got.astype(bool), want)
    # a DICOM without study / series attributes cannot be referenced: 422, nothing saved
    dicom_file(root / "bare.dcm", img, study=False)
    before = tree(root)
    r = c.post("/api/save", json={"id": "bare.dcm", "revision": 0, "objects": [obj()]})
    assert r.status_code == 422 and "StudyInstanceUID" in r.json()["error"], r.text
    assert tree(root) == before
    # no objects: a Segmentation of no segment is not a DICOM object (400, not a 500)
    r = c.post("/api/save", json={"id": "im.dcm", "revision": 1, "objects": []})
    assert r.status_code == 400 and "at least one segment" in r.json()["error"], r.text


# ----------------------------------------------------------------- corrective clicks


def test_corrections_are_refused_by_a_model_without_click_channels(client, images):
    before = tree(images)
    body = {"id": "a.png", "slice": 0, "points": POINTS, "corrections": [[30, 30, 1]]}
    r = client.post("/api/segment", json=body)
    assert r.status_code == 400 and "takes no corrective clicks" in r.json()["error"]
    r = client.post(
        "/api/save",
        json={"id": "a.png", "revision": 0, "objects": [obj(corrections=[[30, 30, 1]])]},
    )
    assert r.status_code == 400 and "takes no corrective clicks" in r.json()["error"]
    assert tree(images) == before


@pytest.fixture(scope="module")
def click_seg(random_click_model):
    return seglib.Segmenter.from_workdir(str(random_click_model), bucket_size=2)


def test_corrections_reach_the_model_and_the_saved_annotation(click_seg, images):
    client = local_client(click_seg, images, max_upload_bytes=1000)
    info = client.get("/api/info").json()
    assert info["model"]["takes_corrections"] and info["limits"]["max_corrections"] == 24
    img = np.asarray(Image.open(images / "a.png"))
    clicks = [[30, 30, 1], [20, 22, -1]]
    r = client.post(
        "/api/segment", json={"id": "a.png", "slice": 0, "points": POINTS, "corrections": clicks}
    )
    assert r.status_code == 200, r.text
    want = click_seg.segment(img, [POINTS], corrections=[clicks]).objects[0]
    assert r.json()["area_px"] == want.area_px
    r = client.post(
        "/api/save", json={"id": "a.png", "revision": 0, "objects": [obj(corrections=clicks)]}
    )
    assert r.status_code == 200, r.text
    labels = np.asarray(Image.open(images / "a.labels.png"))
    np.testing.assert_array_equal(labels == 1, want.mask)
    doc = json.loads((images / "a.annotation.json").read_text())
    assert doc["objects"][0]["corrections"] == clicks
    for bad, needle in (([[300, 3, 1]], "lies outside the image"), ([[3, 3, 0]], "has sign 0")):
        body = {"id": "a.png", "slice": 0, "points": POINTS, "corrections": bad}
        r = client.post("/api/segment", json=body)
        assert r.status_code == 400 and needle in r.json()["error"], r.text
    # a save names the object by its place in the request, also for the model's checks
    small = [[20, 30], [30, 30], [25, 25], [25, 35]]
    before = tree(images)
    objects = [obj(), obj(points=small, corrections=[[60, 60, 1]])]
    r = client.post("/api/save", json={"id": "a.png", "revision": 1, "objects": objects})
    assert r.status_code == 400 and "object 2: positive click 1" in r.json()["error"], r.text
    assert tree(images) == before


# ----------------------------------------------------------------- 3-D objects


def propagated(z=2, extent=(1, 3), corrections_on=None, **kw):
    out = {**obj(points=kw.pop("points", POINTS), z=z, **kw), "propagate": True}
    out["extent"] = None if extent is None else list(extent)
    out["corrections_on"] = corrections_on or {}
    return out


@pytest.fixture
def volume_folder(tmp_path):
    """A NIfTI volume of five ellipses (its slices, as the tool shows them, are
    `np.rot90(vol[..., z])`: the images themselves) and a 2-D image beside it."""
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(5)
    imgs = [ellipse_image(rng, center=(32, 30), axes=(9 + 2 * z, 7 + z))[0] for z in range(5)]
    vol = np.stack([np.rot90(im, -1) for im in imgs], axis=2).astype(np.int16)
    root = tmp_path / "vols"
    root.mkdir()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "v.nii")
    (root / "flat.png").write_bytes(png(imgs[0]))
    return root


def test_an_object_propagated_through_a_volume_is_saved_on_every_slice_it_reaches(
    click_seg, volume_folder
):
    nib = pytest.importorskip("nibabel")
    from dlset_jax import volume

    images = folder_lib.ImageFolder(str(volume_folder), max_pixels=10**6)
    c = TestClient(server.create_app(click_seg, images, max_upload_bytes=1), base_url=LOCAL)
    frames = images.load("v.nii").frames
    on = {"3": [[30, 31, 1], [60, 60, -1]], "1": [[5, 6, -1]]}  # JSON keys are strings
    own = [[31, 30, 1]]
    body = {"id": "v.nii", **propagated(corrections=own, corrections_on=on)}
    r = c.post("/api/segment", json=body)
    assert r.status_code == 200, r.text
    corr = {2: own, **{int(z): v for z, v in on.items()}}
    want = volume.propagate(
        click_seg, frames, 2, np.asarray(POINTS), extent=(1, 3), corrections=corr
    )
    out = r.json()
    assert [s["slice"] for s in out["slices"]] == [f["slice"] for f in want.slices]
    for s in out["slices"]:
        assert s["area_px"] == want.labels[s["slice"]].sum() > 0
    assert out["stops"] == want.stops and out["area_px"] == want.labels[2].sum()
    r = c.post(
        "/api/save",
        json={
            "id": "v.nii",
            "revision": 0,
            "objects": [propagated(corrections=own, corrections_on=on)],
        },
    )
    assert r.status_code == 200, r.text
    lab = np.asarray(nib.load(volume_folder / "v.labels.nii.gz").dataobj)
    for z in range(5):
        np.testing.assert_array_equal(np.rot90(lab[..., z]) > 0, want.labels[z])
    assert [f["slice"] for f in want.slices] == [1, 2, 3]  # the extent, every slice
    assert not lab[..., [0, 4]].any()
    saved = c.get("/api/image", params={"id": "v.nii"}).json()["annotation"]["objects"][0]
    assert saved["propagate"] and saved["extent"] == [1, 3] and saved["corrections_on"] == on


@pytest.mark.parametrize(
    "image_id,bad,needle",
    [
        ("flat.png", propagated(z=0, extent=None), "propagation needs a volume"),
        ("v.nii", {**propagated(), "propagate": False}, "act through propagation"),
        ("v.nii", propagated(extent=(3, 4)), "lies outside the extent (3, 4)"),
        ("v.nii", propagated(extent=(1, 7)), "extent (1, 7)"),
        ("v.nii", propagated(extent=(3, None)), "lies outside the extent (3, None)"),
        ("v.nii", propagated(corrections_on={"4": [[3, 3, 1]]}), "slice 4: outside the extent"),
        ("v.nii", propagated(corrections_on={"2": [[3, 3, 1]]}), 'go in "corrections"'),
        ("v.nii", propagated(corrections_on={"9": [[3, 3, 1]]}), "slice 9"),
        ("v.nii", propagated(corrections_on={"3": [[3, 99, 1]]}), "outside the image"),
        ("v.nii", {**propagated(), "edits_on": {"2": [[3, 3, 1, 1]]}}, 'go in "edits"'),
        ("v.nii", {**propagated(), "edits_on": {"5": [[3, 3, 1, 1]]}}, "slice 5, out of range"),
    ],
)
def test_bad_3d_objects_are_refused_and_write_nothing(
    click_seg, volume_folder, image_id, bad, needle
):
    images = folder_lib.ImageFolder(str(volume_folder), max_pixels=10**6)
    c = TestClient(server.create_app(click_seg, images, max_upload_bytes=1), base_url=LOCAL)
    before = tree(volume_folder)
    r = c.post("/api/segment", json={"id": image_id, **bad})
    assert r.status_code == 400 and needle in r.json()["error"], r.text
    r = c.post("/api/save", json={"id": image_id, "revision": 0, "objects": [bad]})
    assert r.status_code == 400 and needle in r.json()["error"], r.text
    assert tree(volume_folder) == before


def test_clicks_on_other_slices_are_refused_by_a_model_without_click_channels(seg, volume_folder):
    images = folder_lib.ImageFolder(str(volume_folder), max_pixels=10**6)
    c = TestClient(server.create_app(seg, images, max_upload_bytes=1), base_url=LOCAL)
    before = tree(volume_folder)
    bad = propagated(corrections_on={"3": [[30, 31, 1]]})
    for path, body in (
        ("/api/segment", {"id": "v.nii", **bad}),
        ("/api/save", {"id": "v.nii", "revision": 0, "objects": [propagated(), bad]}),
    ):
        r = c.post(path, json=body)
        assert r.status_code == 400 and "takes no corrective clicks" in r.json()["error"], r.text
        assert not re.match(r"object \d+: object", r.json()["error"]), r.text
    assert tree(volume_folder) == before
    r = c.post("/api/segment", json={"id": "v.nii", **propagated(extent=None)})
    assert r.status_code == 200 and r.json()["stops"], r.text


@pytest.fixture
def ellipsoid_folder(tmp_path):
    """A uint8 NIfTI volume (X, Y, Z) = (40, 48, 36) of a noisy ellipsoid (uint8: the
    tool shows its values as they are) and a 2-D image beside it."""
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(3)
    x, y, z = np.meshgrid(*(np.arange(n) for n in (40, 48, 36)), indexing="ij")
    inside = ((x - 19) / 12) ** 2 + ((y - 25) / 16) ** 2 + ((z - 17) / 10) ** 2 <= 1
    vol = np.clip(60 + 120 * inside + rng.normal(0, 10, inside.shape), 0, 255).astype(np.uint8)
    root = tmp_path / "ellipsoid"
    root.mkdir()
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 1.0, 2.5, 1.0])), root / "e.nii")
    (root / "flat.png").write_bytes(png(vol[..., 17]))
    return root, vol, inside


def test_a_volume_is_annotated_along_any_axis_and_saved_in_the_files_orientation(
    seg, ellipsoid_folder
):
    nib = pytest.importorskip("nibabel")
    root, vol, inside = ellipsoid_folder
    c = TestClient(
        server.create_app(
            seg, folder_lib.ImageFolder(str(root), max_pixels=10**6), max_upload_bytes=1
        ),
        base_url=LOCAL,
    )

    def cut(a, z):  # slice z along axis a, turned as the tool shows it (indexing by hand)
        return lambda arr: np.rot90(arr[(slice(None),) * a + (z,)])

    zs = {0: 19, 1: 25, 2: 17}  # the ellipsoid's middle along each axis
    objects, masks = [], []
    for a, z in zs.items():
        meta = c.get("/api/image", params={"id": "e.nii", "axis": a}).json()
        frame = cut(a, z)(vol)
        assert meta["volume_shape"] == [40, 48, 36] and meta["n_slices"] == vol.shape[a]
        assert (meta["height"], meta["width"]) == frame.shape
        r = c.get("/api/slice", params={"id": "e.nii", "axis": a, "z": z})
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), frame)
        points = targets.extreme_points(cut(a, z)(inside)).tolist()
        want = seg.segment(frame, [points]).objects[0].mask
        r = c.post("/api/segment", json={"id": "e.nii", "axis": a, "slice": z, "points": points})
        assert r.status_code == 200 and r.json()["area_px"] == want.sum() > 0, r.text
        objects.append({**obj(label=f"along{a}", points=points, z=z), "axis": a})
        masks.append(want)

    # and one object followed through slices 23..27 along axis 1
    from dlset_jax import volume

    points = targets.extreme_points(cut(1, 25)(inside))
    frames = np.stack([cut(1, y)(vol) for y in range(vol.shape[1])])
    followed = volume.propagate(seg, frames, 25, points, extent=(23, 27)).labels
    objects.append({**propagated(z=25, extent=(23, 27), points=points.tolist()), "axis": 1})
    r = c.post("/api/save", json={"id": "e.nii", "revision": 0, "objects": objects})
    assert r.status_code == 200, r.text
    expected = np.zeros(vol.shape, np.uint8)  # painted in order: the later object wins
    planes = [(a, z, m, a + 1) for (a, z), m in zip(zs.items(), masks, strict=True)]
    planes += [(1, y, followed[y], 4) for y in range(23, 28)]  # label 4: "disc"
    for a, z, m, value in planes:
        target = expected[(slice(None),) * a + (z,)]  # a view of the plane
        target[np.rot90(m, -1)] = value
    assert all(followed[y].any() for y in range(23, 28)) and not followed[:23].any()
    lab = np.asarray(nib.load(root / "e.labels.nii.gz").dataobj)
    np.testing.assert_array_equal(lab, expected)
    saved = c.get("/api/image", params={"id": "e.nii", "axis": 0}).json()["annotation"]
    assert [o["axis"] for o in saved["objects"]] == [0, 1, 2, 1]

    for path, params, needle in [
        ("/api/image", {"id": "e.nii", "axis": 3}, "axis must be 0, 1 or 2"),
        ("/api/image", {"id": "flat.png", "axis": 0}, "sliced along axis 2 only"),
        ("/api/slice", {"id": "e.nii", "axis": 1, "z": 48}, "slice 48 out of range (0..47)"),
    ]:
        r = c.get(path, params=params)
        assert r.status_code == 400 and needle in r.json()["error"], r.text
    before = tree(root)
    bad = {**obj(points=POINTS), "axis": 1, "slice": 30}  # x = 50 is outside a 36-wide slice
    for path, body in [
        ("/api/segment", {"id": "e.nii", **bad}),
        ("/api/save", {"id": "e.nii", "revision": 1, "objects": [bad]}),
    ]:
        r = c.post(path, json=body)
        assert r.status_code == 400 and "outside the image" in r.json()["error"], r.text
    r = c.post("/api/segment", json={"id": "e.nii", **bad, "axis": 4})
    assert r.status_code == 400 and "axis" in r.json()["error"], r.text
    assert tree(root) == before


def brute_paint(mask, edits):
    """Brush discs painted pixel by pixel (the independent computation for `brush.paint`)."""
    out = mask.copy()
    for x, y, r, sign in edits:
        for py in range(mask.shape[0]):
            for px in range(mask.shape[1]):
                if (px - x) ** 2 + (py - y) ** 2 <= r * r:
                    out[py, px] = sign > 0
    return out


def test_brush_discs_paint_and_erase_in_order():
    from dlset_jax.app import brush

    rng = np.random.default_rng(7)
    mask = rng.random((23, 31)) < 0.4
    edits = [[3.5, 4, 2.5, 1], [0, 0, 1, -1], [30.4, 22.2, 6, 1], [15, 11, 4.2, -1], [15, 11, 1, 1]]
    got = brush.paint(mask, brush.check(edits, mask.shape, "test"))
    np.testing.assert_array_equal(got, brute_paint(mask, edits))
    assert got is not mask and brush.paint(mask, brush.check([], mask.shape, "t")).tolist() == (
        mask.tolist()
    )
    for bad, needle in [
        ([[1, 2, 3]], "must be [x, y, radius, sign]"),
        ([[1, 2, 0, 1]], "radius 0 not in (0, 64]"),
        ([[1, 2, 65, 1]], "radius 65"),
        ([[1, 2, 3, 0]], "sign must be 1 (paint) or -1 (erase)"),
        ([[31, 2, 3, 1]], "outside the image (31 x 23)"),
        ([[1, -0.6, 3, 1]], "outside the image"),
        ([[float("nan"), 2, 3, 1]], "not finite"),
        ([[1, 1, 1, 1]] * (brush.MAX_EDITS + 1), "more than 4096"),
    ]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            brush.check(bad, mask.shape, "object 1, slice 0")


def test_brush_edits_act_after_the_model_and_are_saved_with_the_clicks(client, images, seg):
    img = np.asarray(Image.open(images / "a.png"))
    model_mask = seg.segment(img, [POINTS]).objects[0].mask
    edits = [[4, 5, 2, 1], [6, 5, 2, 1], [30, 31, 3.5, -1]]  # a part outside, a hole inside
    want = brute_paint(model_mask, edits)
    assert want.sum() != model_mask.sum()
    r = client.post("/api/segment", json={"id": "a.png", **obj(), "edits": edits})
    assert r.status_code == 200 and r.json()["area_px"] == want.sum(), r.text
    # the outline drawn is the painted mask's
    np.testing.assert_array_equal(inside_polylines(r.json()["contours"], want.shape), want)
    r = client.post(
        "/api/save",
        json={"id": "a.png", "revision": 0, "objects": [{**obj(), "edits": edits}]},
    )
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.asarray(Image.open(images / "a.labels.png")) == 1, want)
    doc = client.get("/api/image", params={"id": "a.png"}).json()["annotation"]
    saved = doc["objects"][0]
    assert saved["edits"] == edits and saved["edits_on"] == {}
    (outline,) = doc["outlines"]  # the painted mask's outline
    np.testing.assert_array_equal(inside_polylines(outline["lines"], want.shape), want)


def test_brush_edits_on_the_slices_of_a_propagated_object(seg, volume_folder):
    nib = pytest.importorskip("nibabel")
    from dlset_jax import volume

    images = folder_lib.ImageFolder(str(volume_folder), max_pixels=10**6)
    c = TestClient(server.create_app(seg, images, max_upload_bytes=1), base_url=LOCAL)
    frames = images.load("v.nii").frames
    # a lobe painted on the clicked slice, a disc erased on slice 3, one painted beyond
    # the extent
    own, on = [[46, 30, 4, 1]], {"3": [[31, 30, 3, -1]], "4": [[40, 41, 3, 1]]}
    # the masks the tool keeps: the painted ones where propagation reaches them, each
    # next slice followed from the painted mask (volume.propagate's rule, tested with an
    # exact oracle in test_volume.py), the painting itself done pixel by pixel here
    edits = {2: functools.partial(brute_paint, edits=own), 3: lambda m: brute_paint(m, on["3"])}
    want = volume.propagate(seg, frames, 2, np.asarray(POINTS), extent=(1, 3), edits=edits)
    plain = volume.propagate(seg, frames, 2, np.asarray(POINTS), extent=(1, 3))
    np.testing.assert_array_equal(want.labels[2], brute_paint(plain.labels[2], own))
    assert not want.labels[3][brute_paint(np.zeros_like(want.labels[3]), on["3"])].any()
    assert (want.labels[1] != plain.labels[1]).any()  # clicked from the painted mask
    body = {**propagated(), "edits": own, "edits_on": on}
    r = c.post("/api/segment", json={"id": "v.nii", **body})
    assert r.status_code == 200, r.text
    painted = {z: want.labels[z] for z in (1, 2, 3)}
    painted[4] = brute_paint(np.zeros_like(want.labels[4]), on["4"])  # beyond: painted only
    want = want.labels
    slices = r.json()["slices"]
    assert [(s["slice"], s["source"]) for s in slices] == [
        (1, "propagated"),
        (2, "clicks"),
        (3, "propagated"),
        (4, "painted"),
    ]
    assert [s["area_px"] for s in slices] == [int(painted[z].sum()) for z in (1, 2, 3, 4)]
    assert r.json()["area_px"] == painted[2].sum()
    r = c.post("/api/save", json={"id": "v.nii", "revision": 0, "objects": [body]})
    assert r.status_code == 200, r.text
    lab = np.asarray(nib.load(volume_folder / "v.labels.nii.gz").dataobj)
    for z in range(5):
        np.testing.assert_array_equal(np.rot90(lab[..., z]) > 0, painted.get(z, want[z] & False))
    doc = json.loads((volume_folder / "v.annotation.json").read_text())
    assert [o["slice"] for o in doc["outlines"]] == [1, 2, 3, 4]
    for o in doc["outlines"]:  # on each slice as shown, the saved mask's outline
        got = inside_polylines(o["lines"], painted[o["slice"]].shape)
        np.testing.assert_array_equal(got, painted[o["slice"]])


@pytest.mark.parametrize(
    "bad,needle",
    [
        ({**obj(), "edits": [[3, 3, 2]]}, "object 1, slice 0: brush edit 1 must be"),
        ({**obj(), "edits": [[3, 70, 2, 1]]}, "brush edit 1 at (3, 70) is outside the image"),
        ({**obj(), "edits": [[3, 3, 80, 1]]}, "radius 80"),
        ({**obj(), "edits": [[3, 3, 2, 2]]}, "sign must be 1"),
        ({**obj(), "edits_on": {"1": [[3, 3, 2, 1]]}}, 'set "propagate": true'),
    ],
)
def test_bad_brush_edits_are_refused_and_write_nothing(client, images, bad, needle):
    before = tree(images)
    r = client.post("/api/segment", json={"id": "a.png", **bad})
    assert r.status_code == 400 and needle in r.json()["error"], r.text
    r = client.post("/api/save", json={"id": "a.png", "revision": 0, "objects": [obj(), bad]})
    assert r.status_code == 400 and needle.replace("object 1", "object 2") in r.json()["error"]
    assert tree(images) == before


def test_a_volume_is_read_once_whatever_the_axes_it_is_shown_along(ellipsoid_folder, monkeypatch):
    from dlset_jax import segment_files

    root, vol, _ = ellipsoid_folder
    reads = []
    read_input = segment_files.read_input
    monkeypatch.setattr(
        segment_files,
        "read_input",
        lambda path, *a, **k: reads.append(path) or read_input(path, *a, **k),
    )
    images = folder_lib.ImageFolder(str(root), max_pixels=10**6)
    shown = {a: images.load("e.nii", a) for a in (2, 0, 1, 0, 2)}
    assert len(reads) == 1  # one read of the file for all three axes
    base, base_inp = shown[2].source["volume"], shown[2].source
    for a, im in shown.items():
        assert np.shares_memory(im.frames, base)  # views of the one volume, no copies
        assert im.source["axis"] == a and im.n_slices == vol.shape[a]
        np.testing.assert_array_equal(im.frame(7), np.rot90(vol[(slice(None),) * a + (7,)]))
    # in-plane spacing (rows, columns) from the zooms (0.8, 1.0, 2.5) along each axis
    want = [(2.5, 1.0), (2.5, 0.8), (1.0, 0.8)]
    assert [shown[a].spacing for a in (0, 1, 2)] == [pytest.approx(w) for w in want]
    # a bad axis is refused before anything is read (the file need not even exist)
    for bad in (
        lambda: read_input(str(root / "absent.nii"), "nifti", axis=3),
        lambda: segment_files.along_axis(base_inp, -1),
    ):
        with pytest.raises(segment_files.RequestError, match="axis must be 0, 1 or 2"):
            bad()


def test_model_calls_take_turns_one_at_a_time_in_the_order_asked():
    class Slow:  # a segmenter whose calls wait for `go`, recording who ran when
        takes_corrections = False

        def __init__(self):
            self.go, self.log, self.running = threading.Event(), [], 0

        def segment(self, name):
            self.running += 1
            assert self.running == 1, "two model calls at once"
            self.log.append(name)
            if name == "first":
                self.go.wait(10)
            self.running -= 1
            return name

    slow = Slow()
    turns = server.TakingTurns(slow)
    assert turns.takes_corrections is False  # the rest is the segmenter's own
    threads = [threading.Thread(target=turns.segment, args=("first",))]

    def until(condition):
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.001)

    threads[0].start()
    until(lambda: slow.log)  # "first" holds the model
    for k, name in enumerate(["b", "c", "d"]):
        threads.append(threading.Thread(target=turns.segment, args=(name,)))
        threads[-1].start()
        until(lambda k=k: turns._next == k + 2)  # its ticket taken before the next asks
    slow.go.set()
    for t in threads:
        t.join(10)
    assert slow.log == ["first", "b", "c", "d"]


def test_the_tool_loads_its_model_compiled_for_one_object(random_model):
    wd, _, _ = random_model
    seg = server.load_segmenter(str(wd))
    assert seg.bucket_size == 1 and seg.trace_count == 1  # compiled at load
    img, mask = ellipse_image(np.random.default_rng(2))
    seg.segment(img, [targets.extreme_points(mask)], corrections=[[]])
    assert seg.trace_count == 1  # the first click compiles nothing


@pytest.mark.slow
def test_the_tool_starts_on_localhost_and_answers(random_model, images):
    import subprocess
    import sys
    import urllib.request

    wd, _, _ = random_model
    cmd = [sys.executable, "-m", "dlset_jax.app", f"--workdir={wd}", f"--images={images}"]
    proc = subprocess.Popen(
        [*cmd, "--port=0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while not any(ln.startswith("open http://127.0.0.1:") for ln in lines):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            lines.append(proc.stdout.readline())
        url = lines[-1].split()[1]
        with urllib.request.urlopen(url + "api/images", timeout=30) as r:
            ids = [im["id"] for im in json.loads(r.read())["images"]]
        assert "a.png" in ids and "loading" in lines[0]
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--port=99999", "not an integer in the range [0, 65535]"),
        ("--max_pixels=0", "not a positive integer"),
        ("--max_upload_mb=0", "not a positive integer"),
    ],
)
def test_the_tool_refuses_bad_limits_before_loading_anything(tmp_path, flag, message):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "dlset_jax.app", f"--workdir={tmp_path}", f"--images={tmp_path}"]
    proc = subprocess.run([*cmd, flag], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "loading" not in proc.stdout
