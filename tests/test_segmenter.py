"""Segmenting new images from four clicks: `dlset_jax.segmenter`, `dlset_jax.segment_files`
and the `predict.py` CLI, with the tiny models of `tiny_models.py` (`random_model`, and
the slow `trained_workdir`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from PIL import Image
from tiny_models import (
    RES,
    dicom_file,
    ellipse_image,
    inside_polylines,
    save_checkpoint,
    tiny_config,
    two_ellipses,
)

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "configs"))

import predict as cli  # noqa: E402  (the top-level predict.py)
from dlset_jax import config as config_lib  # noqa: E402
from dlset_jax import files, readers, targets  # noqa: E402
from dlset_jax import segmenter as seglib  # noqa: E402
from dlset_jax.data import pipeline  # noqa: E402


@pytest.fixture(scope="module")
def segmenter(random_model):
    _, config, variables = random_model
    return seglib.Segmenter(config, variables, bucket_size=4)


@pytest.fixture(scope="module")
def trained_segmenter(trained_workdir):
    return seglib.Segmenter.from_workdir(str(trained_workdir))


# ----------------------------------------------------------------- points


def test_check_points_accepts_ordered_points_and_ties():
    pts = [[2, 5], [9, 6], [5, 1], [6, 9]]
    got, warnings = seglib.check_points(pts, (12, 12))
    np.testing.assert_array_equal(got, pts)
    assert warnings == []
    # ties with an extreme are fine (a one-pixel-wide object), with a warning
    _, warnings = seglib.check_points([[3, 2], [3, 4], [3, 2], [3, 4]], (12, 12))
    assert "on one line" in warnings[0]
    # a point well past the one that should be extreme on that side; a miss of up to
    # EXTREME_SLACK px (a click beside a diagonal edge) is fine
    pts = [[2, 50], [90, 50], [120, 10], [50, 90]]
    _, warnings = seglib.check_points(pts, (100, 200))
    assert warnings == [
        "point 2 (top) lies 30 px right of point 1 (right): are these the object's extreme "
        "points, in the order left, right, top, bottom?"
    ]
    _, warnings = seglib.check_points([[2, 50], [90, 50], [92, 10], [50, 90]], (100, 200))
    assert warnings == []
    # left and right on one pixel with the top and bottom beside it: a triangle, not a line
    _, warnings = seglib.check_points([[10, 50], [10, 50], [10, 10], [10, 90]], (100, 200))
    assert "on one line" in warnings[0]
    _, warnings = seglib.check_points([[10, 50], [10, 50], [11, 10], [10, 90]], (100, 200))
    assert warnings == []


@pytest.mark.parametrize(
    "pts,needle",
    [
        ([[2, 5], [12, 6], [5, 1], [6, 9]], "point 1 (right) (x=12, y=6) lies outside the image"),
        ([[2, 5], [9, 6], [5, -0.5], [6, 9]], "point 2 (top) (x=5, y=-0.5) lies outside"),
        ([[9, 6], [2, 5], [5, 1], [6, 9]], "point 0 (left) (x=9, y=6) is to the right of point 1"),
        ([[2, 5], [9, 6], [6, 9], [5, 1]], "point 2 (top) (x=6, y=9) is below point 3"),
        ([[2, 5], [9, 6], [5, 1]], "expected 4 points"),
        ([[2, 5], [9, 6], [5, 1], [6, np.nan]], "finite"),
        ([[4, 4], [4, 4], [4, 4], [4, 4]], "within one pixel of each other"),
        ([[4, 4], [5, 4], [4, 5], [5, 5]], "within one pixel of each other"),
    ],
)
def test_check_points_errors_name_object_and_point(pts, needle):
    with pytest.raises(ValueError) as e:
        seglib.check_points(pts, (12, 12), obj=3)
    assert str(e.value).startswith("object 3: ")
    assert needle in str(e.value)


def _thin_diagonal(h, w, angle_deg, width, length):
    yy, xx = np.mgrid[:h, :w].astype(float)
    t = np.deg2rad(angle_deg)
    u = (xx - w / 2) * np.cos(t) + (yy - h / 2) * np.sin(t)
    v = -(xx - w / 2) * np.sin(t) + (yy - h / 2) * np.cos(t)
    return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)


def test_jittered_human_clicks_on_thin_diagonal_shapes_are_accepted():
    """People click thin or diagonal structures a pixel or two off: the given order
    says which point is which, so none of these is refused (the earlier rule, that
    each point be strictly extreme, refused many of them)."""
    rng = np.random.default_rng(0)
    strictly_extreme_fails = 0
    for k in range(60):
        mask = _thin_diagonal(64, 64, rng.uniform(10, 80), rng.uniform(2, 5), rng.uniform(25, 50))
        pts = targets.extreme_points(mask) + rng.integers(-2, 3, (4, 2))
        pts = np.clip(pts, 0, 63)
        got, _ = seglib.check_points(pts, mask.shape, obj=k)
        np.testing.assert_array_equal(got, pts)
        strict = (
            pts[0, 0] == pts[:, 0].min()
            and pts[1, 0] == pts[:, 0].max()
            and pts[2, 1] == pts[:, 1].min()
            and pts[3, 1] == pts[:, 1].max()
        )
        strictly_extreme_fails += not strict
    assert strictly_extreme_fails >= 10  # the case the old rule refused does occur


def test_check_points_reorder():
    ordered = np.array([[2, 5], [9, 6], [5, 1], [6, 9]], float)
    shuffled = ordered[[3, 0, 2, 1]]
    got, _ = seglib.check_points(shuffled, (12, 12), reorder=True)
    np.testing.assert_array_equal(got, ordered)
    with pytest.raises(ValueError, match="reorder=True"):
        seglib.check_points(shuffled, (12, 12))
    # two points share the smallest x: which one is "left" is ambiguous
    ambiguous = np.array([[2, 5], [9, 6], [2, 1], [6, 9]], float)[[1, 0, 2, 3]]
    with pytest.raises(ValueError, match="cannot be recovered unambiguously"):
        seglib.check_points(ambiguous, (12, 12), reorder=True)


# ----------------------------------------------------------------- the image contract


def test_prepare_image_channels_and_intensities():
    u8 = np.arange(64, dtype=np.uint8).reshape(8, 8)
    out, facts = seglib.prepare_image(u8, ("grey",))
    assert out.shape == (8, 8, 1) and out.dtype == np.uint8 and facts["kind"] == "grey"
    np.testing.assert_array_equal(out[..., 0], u8)
    # a float (or int) image already in [0, 255] is used as it is: same as uint8
    for other in (u8.astype(np.float32), u8.astype(np.int32), u8.astype(np.uint16)):
        got, facts = seglib.prepare_image(other, ("grey",))
        np.testing.assert_array_equal(got, out)
        assert facts["intensity"].startswith("as stored")
    f, facts = seglib.prepare_image(
        np.linspace(-1000, 3000, 64, dtype=np.float32).reshape(8, 8), ("grey",)
    )
    assert f.dtype == np.uint8 and f.min() == 0 and f.max() == 255
    assert "percentiles" in facts["intensity"]
    # [0, 1] floats are not whole numbers: stretched, not read as nearly black
    g, _ = seglib.prepare_image(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), ("grey",))
    assert g.max() == 255
    # grey given as three equal channels is grey; replicated for a model that saw RGB
    grey3 = np.repeat(u8[..., None], 3, -1)
    np.testing.assert_array_equal(seglib.prepare_image(grey3, ("grey",))[0], out)
    assert seglib.prepare_image(u8, ("grey", "rgb"))[0].shape == (8, 8, 3)
    rgb = np.stack([u8, u8[::-1], u8.T], -1)
    with pytest.raises(ValueError, match="trained on grey images only and was given a rgb"):
        seglib.prepare_image(rgb, ("grey",))
    with pytest.raises(ValueError, match="trained on rgb images only and was given a grey"):
        seglib.prepare_image(u8, ("rgb",))
    for c in (2, 4):
        with pytest.raises(ValueError, match="ambiguous"):
            seglib.prepare_image(np.zeros((8, 8, c), np.uint8))
    with pytest.raises(ValueError, match="channels"):
        seglib.prepare_image(np.zeros((8, 8, 5)))
    with pytest.raises(ValueError, match="NaN"):
        seglib.prepare_image(np.full((8, 8), np.nan))
    for shape in ((0, 0), (1, 8), (8, 1, 3)):  # the shape as given, and what is wrong
        with pytest.raises(ValueError, match=rf"shape \({shape[0]}, {shape[1]}.*too small"):
            seglib.prepare_image(np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W\) grey or \(H, W, 3\) RGB, got shape \(8,\)"):
        seglib.prepare_image(np.zeros(8, np.uint8))


@pytest.mark.parametrize("contrast", [1.0, 0.1])
def test_preprocess_is_the_pipelines_eval_preprocessing(random_model, contrast):
    """Crop, normalisation and points equal `pipeline.process_object` (evaluation),
    also for a faint image, which the config's contrast floor stretches."""
    from dlset_jax.data import synthetic

    ex = synthetic.prostate_slice(synthetic.example_rng(0, "test", 0))
    image, mask = ex["image"], ex["masks"][0]
    image = np.round(100 + contrast * (image.astype(np.float64) - 100)).astype(np.uint8)
    _, config, variables = random_model
    config = config.copy_and_resolve_references()
    config.data.contrast_floor = 64.0  # configs/default.py's
    segmenter = seglib.Segmenter(config, variables, bucket_size=4)
    ref = pipeline.process_object(image, mask, pipeline.CropOptions.from_config(segmenter.config))
    pts, _ = seglib.check_points(targets.extreme_points(mask), image.shape)
    got = segmenter.preprocess(seglib.prepare_image(image, ("grey",))[0], pts)
    np.testing.assert_array_equal(got["box"], ref["box"])
    np.testing.assert_array_equal(got["image"], ref["image"])
    np.testing.assert_allclose(got["points"], ref["points"])
    res = config.data.resolution
    plain = targets.normalize_image(targets.crop_and_resize(image, got["box"], res, order=1))
    assert np.array_equal(got["image"], plain) == (contrast == 1.0)


# ----------------------------------------------------------------- the API


def test_segment_outputs(segmenter, rng):
    from dlset_jax import inference

    img, (m1, m2) = two_ellipses(rng)
    pts = [targets.extreme_points(m) for m in (m1, m2)]
    res = segmenter.segment(
        img,
        pts,
        spacing=(0.5, 0.25),
        classes=["a", "b"],
        return_trajectory=True,
        return_network_outputs=True,
    )
    assert res.image_shape == img.shape
    steps = segmenter.config.levelset.steps
    for k, o in enumerate(res.objects):
        assert o.index == k and o.class_name == "ab"[k]
        assert o.mask.shape == o.phi.shape == o.baseline_mask.shape == img.shape
        np.testing.assert_array_equal(o.mask, o.phi <= res.threshold)
        np.testing.assert_array_equal(
            o.box, targets.crop_box(pts[k], img.shape, relax=segmenter.config.data.relax)
        )
        y0, x0, y1, x1 = o.box
        outside = np.ones(img.shape, bool)
        outside[max(y0, 0) : y1, max(x0, 0) : x1] = False
        assert (o.phi[outside] == inference.BACKGROUND_PHI).all()
        np.testing.assert_array_equal(o.baseline_mask, targets.polygon_mask(pts[k], img.shape))
        assert o.trajectory.shape == (steps + 1, RES, RES)
        np.testing.assert_allclose(o.trajectory[0], o.network["phi0"], atol=1e-5)
        np.testing.assert_allclose(o.trajectory[-1], o.network["phi_t"], atol=1e-5)
        assert o.network["motion"].shape == (RES, RES, 2)
        assert o.area_px == int(o.mask.sum()) and o.area_mm2 == pytest.approx(o.area_px * 0.125)
    labels = res.label_map()
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}


def test_batched_equals_one_by_one(segmenter, rng):
    img, (m1, m2) = two_ellipses(rng)
    pts = [targets.extreme_points(m) for m in (m1, m2, m1[:, ::-1])]
    together = segmenter.segment(img, pts)
    for k, p in enumerate(pts):
        alone = segmenter.segment(img, [p]).objects[0]
        np.testing.assert_allclose(together.objects[k].phi, alone.phi, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(together.objects[k].mask, alone.mask)


def test_repeated_calls_do_not_recompile(segmenter, rng):
    img, (m1, m2) = two_ellipses(rng)
    p1, p2 = (targets.extreme_points(m) for m in (m1, m2))
    segmenter.segment(img, [p1])
    start = segmenter.trace_count  # 1: compiled by this call or an earlier test
    assert start == 1
    for objs, traj in (([p1, p2], False), ([p2], True), ([p1, p2, p1], False), ([p1] * 4, True)):
        res = segmenter.segment(img, objs, return_trajectory=traj, return_network_outputs=traj)
        assert not res.timings["compiled"] and res.timings["batch"] == 4
    other = rng.integers(0, 255, (40, 50), dtype=np.uint8)  # another image size: same crops
    segmenter.segment(other, [[[3, 20], [45, 22], [20, 2], [25, 37]]])
    assert segmenter.trace_count == start
    res = segmenter.segment(img, [p1] * 5)  # more than a bucket: the next size (8), once
    assert res.timings["compiled"] and res.timings["batch"] == 8
    segmenter.segment(img, [p2] * 7)
    assert segmenter.trace_count == start + 1


def test_grey_rgb_and_float_inputs_agree(segmenter, rng):
    img, (m1, _) = two_ellipses(rng)
    pts = [targets.extreme_points(m1)]
    grey = segmenter.segment(img, pts).objects[0]
    rgb = segmenter.segment(np.repeat(img[..., None], 3, -1), pts).objects[0]
    np.testing.assert_allclose(grey.phi, rgb.phi, atol=1e-5)
    # a float image goes through the percentile mapping, like non-uint8 files in the builders
    f = img.astype(np.float32) * 3.7 - 100
    via_float = segmenter.segment(f, pts).objects[0]
    via_u8 = segmenter.segment(readers.intensity_to_uint8(f), pts).objects[0]
    np.testing.assert_allclose(via_float.phi, via_u8.phi, atol=1e-5)


def test_segment_rejects_bad_calls(segmenter):
    img = np.zeros((20, 20), np.uint8)
    good = [[2, 10], [17, 10], [10, 2], [10, 17]]
    with pytest.raises(ValueError, match="object 2: point 3 \\(bottom\\)"):
        segmenter.segment(img, [good, [[2, 10], [17, 10], [10, 2], [10, 25]]])
    with pytest.raises(ValueError, match="no objects"):
        segmenter.segment(img, [])
    with pytest.raises(ValueError, match="class names"):
        segmenter.segment(img, [good], classes=["a", "b"])
    with pytest.raises(ValueError, match="spacing"):
        segmenter.segment(img, [good], spacing=(0, 1))
    assert len(segmenter.segment(img, np.asarray(good)).objects) == 1  # one (4, 2) array


def test_from_workdir_and_mismatch(random_model, tmp_path):
    from dlset_jax import checkpoint

    wd, config, variables = random_model
    seg = seglib.Segmenter.from_workdir(str(wd))
    assert seg.step == 1 and seg.resolution == RES
    assert seg.config.clicks.honour_width == 0.0  # the run's (the schema's default)
    wider = seglib.Segmenter.from_workdir(str(wd), honour_width=4.0)
    assert wider.config.clicks.honour_width == 4.0 and seg.config.clicks.honour_width == 0.0
    with pytest.raises(config_lib.ConfigError, match="honour_width must be >= 0"):
        seglib.Segmenter.from_workdir(str(wd), honour_width=-1.0)
    both = seglib.Segmenter.from_workdir(str(wd), honour_width=2.0, points_width=5.0)
    assert (both.config.clicks.honour_width, both.config.clicks.points_width) == (2.0, 5.0)
    assert seg.config.clicks.points_width == 0.0
    with pytest.raises(config_lib.ConfigError, match="points_width must be >= 0"):
        seglib.Segmenter.from_workdir(str(wd), points_width=-1.0)
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 7"):
        seglib.Segmenter.from_workdir(str(wd), step=7)
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        seglib.Segmenter.from_workdir(str(tmp_path / "nothing"))
    bad = tmp_path / "bad"
    save_checkpoint(bad, tiny_config(**{"model.width": 8}), variables)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="does not match the model"):
        seglib.Segmenter.from_workdir(str(bad))


def test_from_workdir_uses_the_threshold_chosen_on_validation(random_model, tmp_path, rng):
    _, config, variables = random_model
    wd = tmp_path / "swept"
    save_checkpoint(wd, config, variables)
    seg = seglib.Segmenter.from_workdir(str(wd))
    assert seg.threshold == config.levelset.threshold == 0.0
    assert seg.threshold_source == "config levelset.threshold"
    (wd / "eval").mkdir()
    (wd / "eval" / "threshold.json").write_text(json.dumps({"chosen": -2.0, "mean_dsc": {}}))
    seg = seglib.Segmenter.from_workdir(str(wd))
    assert seg.threshold == -2.0 and seg.threshold_source.endswith("threshold.json")
    img, (m1, _) = two_ellipses(rng)
    res = seg.segment(img, [targets.extreme_points(m1)])
    assert res.threshold == -2.0 and res.threshold_source.endswith("threshold.json")
    o = res.objects[0]
    np.testing.assert_array_equal(o.mask, o.phi <= -2.0)
    given = seglib.Segmenter.from_workdir(str(wd), threshold=1.5)
    assert given.threshold == 1.5 and given.threshold_source == "given"
    for bad in (float("nan"), float("inf")):  # not an empty mask without a word
        with pytest.raises(ValueError, match="threshold must be a finite number"):
            seglib.Segmenter.from_workdir(str(wd), threshold=bad)


def test_the_answer_contains_its_four_points_when_asked(random_model, rng):
    """`clicks.points_width`: the level set is lowered around each extreme point until
    the point is in the mask, whatever the network answered."""
    _, config, variables = random_model
    img, (m1, m2) = two_ellipses(rng)
    pts = [targets.extreme_points(m).astype(int) for m in (m1, m2)]
    plain = seglib.Segmenter(config, variables, bucket_size=2).segment(img, pts)
    # a threshold below the network's level set at every point: none of them is inside
    low = min(float(o.phi[p[:, 1], p[:, 0]].min()) for o, p in zip(plain.objects, pts)) - 1.0
    c = config.copy_and_resolve_references()
    c.clicks.points_width = 3.0
    for cfg, inside in ((config, False), (c, True)):
        res = seglib.Segmenter(cfg, variables, bucket_size=2, threshold=low).segment(img, pts)
        for o, p in zip(res.objects, pts):
            assert (o.mask[p[:, 1], p[:, 0]] == inside).all()
    # points a program derived (a neighbouring slice's answer) are guidance only
    seg = seglib.Segmenter(c, variables, bucket_size=2, threshold=low)
    derived = seg.segment(img, pts, honour_points=False)
    for o, p in zip(derived.objects, plain.objects):
        np.testing.assert_allclose(o.phi_window, p.phi_window, atol=1e-6)


def test_objects_keep_only_their_window(segmenter):
    """Memory grows with the objects, not the image: per object only its box window."""
    h, w = 3000, 2600
    img = np.zeros((h, w), np.uint8)
    centres = [(100, 120), (2900, 2500), (1500, 1300)]
    pts = []
    for cy, cx in centres:
        img[cy - 20 : cy + 21, cx - 15 : cx + 16] = 200
        pts.append([[cx - 15, cy], [cx + 15, cy], [cx, cy - 20], [cx, cy + 20]])
    res = segmenter.segment(img, pts)
    for o in res.objects:
        y0, x0, y1, x1 = o.window
        assert o.phi_window.shape == (y1 - y0, x1 - x0)
        assert o.phi_window.size < 100 * 100  # the box, not the 7.8 M pixel image
        full = o.mask
        assert full.shape == (h, w) and full[y0:y1, x0:x1].sum() == full.sum()
    labels = res.label_map()
    for o in res.objects:
        np.testing.assert_array_equal(labels == o.index + 1, o.mask)


def test_empty_mask_and_collinear_clicks_are_reported(segmenter):
    img = np.zeros((40, 60), np.uint8)
    res = segmenter.segment(img, [[[5, 20], [50, 20], [28, 20], [30, 20]]])
    assert any("one line" in w for w in res.objects[0].warnings)
    assert res.objects[0].summary()["warnings"] == res.objects[0].warnings


# ----------------------------------------------------------------- CLI errors


def _run_cli(capsys, *argv):
    code = cli.run_cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _cli_in(capsys, workdir, image, out, *extra):
    """predict.py on `image` with `workdir`, writing to `out`, plus `extra` flags."""
    return _run_cli(capsys, "--workdir", workdir, "--image", image, *extra, "--out_dir", out)


def _png(path, arr):
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def ellipse_png(tmp_path):
    rng = np.random.default_rng(5)
    img, mask = ellipse_image(rng)
    pts = targets.extreme_points(mask)
    text = " ".join(f"{x:g},{y:g}" for x, y in pts)
    return _png(tmp_path / "im.png", img), text, mask


def _assert_one_line_error(code, err, needle, out_dir):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("predict.py: error: ") and needle in lines[0], lines[0]
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_cli_unusable_outputs_are_refused_before_anything_is_read(capsys, tmp_path, ellipse_png):
    """An empty --out_dir, an --out_dir below a file, and a --prefix holding a folder
    are one-line errors, given before the model is loaded (the workdir does not exist)."""
    from dlset_jax import segment_files

    img, pts, _ = ellipse_png
    (tmp_path / "a_file").write_text("")
    cases = {
        "": "--out_dir is empty",
        str(tmp_path / "a_file" / "out"): "exists and is not a folder",
    }
    for out_dir, needle in cases.items():
        code, _, err = _run_cli(
            capsys, "--workdir", tmp_path / "nope", "--image", img, "--points", pts,
            "--out_dir", out_dir,
        )  # fmt: skip
        assert code == 1 and needle in err, err
    out = tmp_path / "out"
    for prefix in ("sub/name", ".hidden"):
        code, _, err = _cli_in(
            capsys, tmp_path / "nope", img, out, "--points", pts, "--prefix", prefix
        )
        _assert_one_line_error(code, err, "--prefix must be a plain file name", out)
    # a folder named `.` is named by its own name, not written as hidden files
    assert segment_files.file_stem(".") == os.path.basename(os.getcwd())


def test_cli_missing_checkpoint(capsys, tmp_path, ellipse_png):
    img, pts, _ = ellipse_png
    out = tmp_path / "out"
    code, _, err = _run_cli(
        capsys, "--workdir", tmp_path / "nope", "--image", img, "--points", pts, "--out_dir", out
    )
    _assert_one_line_error(code, err, "no checkpoints/", out)


def test_cli_unreadable_input(capsys, tmp_path, random_model, ellipse_png):
    _, pts, _ = ellipse_png
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    out = tmp_path / "out"
    code, _, err = _run_cli(
        capsys, "--workdir", random_model[0], "--image", bad, "--points", pts, "--out_dir", out
    )
    _assert_one_line_error(code, err, "cannot read image", out)
    code, _, err = _cli_in(capsys, random_model[0], tmp_path / "x.txt", out, "--points", pts)
    _assert_one_line_error(code, err, "cannot read", out)


def test_cli_bad_points(capsys, tmp_path, random_model, ellipse_png):
    img, _, _ = ellipse_png
    out = tmp_path / "out"
    code, _, err = _cli_in(capsys, random_model[0], img, out, "--points", "5,30 60,30 30,5 30,70")
    _assert_one_line_error(code, err, "object 1: point 3 (bottom) (x=30, y=70) lies outside", out)
    code, _, err = _cli_in(capsys, random_model[0], img, out, "--points", "5,30 60,30 30,5")
    _assert_one_line_error(code, err, "expected four x,y pairs", out)
    pf = tmp_path / "p.csv"
    pf.write_text("x1,y1,x2,y2,x3,y3,x4\n1,2,3,4,5,6,7\n")
    code, _, err = _run_cli(
        capsys, "--workdir", random_model[0], "--image", img, "--points_file", pf, "--out_dir", out
    )
    _assert_one_line_error(code, err, "missing y4", out)


def test_cli_config_mismatch_subprocess(tmp_path, random_model, ellipse_png):
    """In a real process: exit status 1, exactly one line on stderr, no files."""
    img, pts, _ = ellipse_png
    bad = tmp_path / "bad"
    save_checkpoint(bad, tiny_config(**{"model.depth": 34}), random_model[2])
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "predict.py"),
            "--workdir",
            str(bad),
            "--image",
            str(img),
            "--points",
            pts,
            "--out_dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 1, proc.stderr
    _assert_one_line_error(proc.returncode, proc.stderr, "does not match the model", out)


def test_write_outputs_is_all_or_nothing(tmp_path, monkeypatch):
    calls = []
    real = os.replace

    def flaky(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise OSError("disk full")
        real(a, b)

    monkeypatch.setattr(files.os, "replace", flaky)
    with pytest.raises(OSError):
        files.atomic_write_files(str(tmp_path), {"a.png": b"1", "b.png": b"2", "c.json": b"3"})
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers in ([], ["a.png"])  # the temporary files are gone either way
    assert not any(n.endswith(".tmp") for n in leftovers)


def test_read_points_file_formats(tmp_path):
    pts = [[1, 5], [9, 5], [5, 1], [5, 9]]
    j = tmp_path / "p.json"
    j.write_text(json.dumps([{"points": pts, "class": "disc", "slice": 3}]))
    jl = tmp_path / "p.jsonl"
    jl.write_text(
        json.dumps({"points": pts, "class": "a"})
        + "\n\n"
        + json.dumps({"points": pts, "label": 2})
        + "\n"
    )
    c = tmp_path / "p.csv"
    c.write_text("class,slice,x1,y1,x2,y2,x3,y3,x4,y4\ncup,4,1,5,9,5,5,1,5,9\n")
    (a,) = readers.read_points_file(str(j))
    assert a["class"] == "disc" and a["slice"] == 3 and a["points"].tolist() == pts
    b = readers.read_points_file(str(jl))
    assert [o["class"] for o in b] == ["a", None] and b[1]["label"] == 2
    (d,) = readers.read_points_file(str(c))
    assert d["class"] == "cup" and d["slice"] == 4 and d["points"].tolist() == pts


def test_read_click_files_with_a_kind_column(tmp_path):
    c = tmp_path / "clicks.csv"
    c.write_text(
        "object,kind,x,y,slice,class\n"
        "a,extreme,1,5,2,cup\na,extreme,9,5,2,cup\nb,extreme,11,15,3,\n"
        "a,extreme,5,1,2,cup\na,extreme,5,9,2,cup\na,positive,4,4,2,cup\n"
        "b,extreme,19,15,3,\nb,extreme,15,11,3,\nb,extreme,15,19,3,\n"
        "a,negative,8,8,2,cup\n"
    )
    a, b = readers.read_points_file(str(c))
    assert a["points"].tolist() == [[1, 5], [9, 5], [5, 1], [5, 9]] and a["slice"] == 2
    assert a["class"] == "cup" and a["corrections"].tolist() == [[4, 4, 1], [8, 8, -1]]
    assert b["slice"] == 3 and b["class"] is None and b["corrections"].shape == (0, 3)
    assert a["corrections_on"] == {} and b["corrections_on"] == {}
    c.write_text(  # corrective clicks on other slices of a volume, for propagation
        "object,kind,x,y,slice\n"
        "a,positive,6,6,4\na,extreme,1,5,2\na,extreme,9,5,2\na,extreme,5,1,2\n"
        "a,extreme,5,9,2\na,negative,3,3,\na,negative,7,7,1\na,positive,2,2,4\n"
    )
    (a,) = readers.read_points_file(str(c))
    assert a["slice"] == 2 and a["corrections"].tolist() == [[3, 3, -1]]
    assert {z: v.tolist() for z, v in a["corrections_on"].items()} == {
        1: [[7, 7, -1]],
        4: [[6, 6, 1], [2, 2, 1]],
    }
    j = tmp_path / "p.json"
    pts = a["points"].tolist()
    j.write_text(
        json.dumps(
            [{"points": pts, "corrections": [{"x": 4, "y": 4, "kind": "positive"}, [8, 8, -1]]}]
        )
    )
    (o,) = readers.read_points_file(str(j))
    assert o["corrections"].tolist() == [[4, 4, 1], [8, 8, -1]]
    # a byte-order mark before the header, as Excel writes "CSV UTF-8"
    c.write_bytes("\ufeffx1,y1,x2,y2,x3,y3,x4,y4\n1,5,9,5,5,1,5,9\n".encode())
    (o,) = readers.read_points_file(str(c))
    assert o["points"].tolist() == [[1, 5], [9, 5], [5, 1], [5, 9]]
    bad = {
        "object,kind,x,y\na,extreme,1,1\na,extreme,2,2\n": "has 2 extreme points",
        "object,kind,x,y\na,middle,1,1\n": "kind must be one of extreme, positive, negative",
        "object,kind,x,y,slice\na,extreme,1,1,2\na,extreme,2,2,3\n": "share its slice",
        "object,kind,x\na,extreme,1\n": "missing y",
        "object,kind,x,y\na,positive,one,1\n": "line 2: x and y must be numbers",
        "object,kind,x,y\na,extreme,1,1,9\n": "line 2: 5 values, the header names 4 columns",
        "x1,y1,x2,y2,x3,y3,x4,y4\n1,5,9,5,5,1,5,9,7\n": "line 2: 9 values, the header names 8",
        "x1,y1,x2,y2,x3,y3,x4,y4\n\n1,5,9,5,5,1\n": "line 3: no value for x4,y4",
        "object,kind,x,y,slice\n"
        + "".join(f"b,extreme,{x},{y},two\n" for x, y in ((1, 5), (9, 5), (5, 1), (5, 9))): (
            r"line 2 \(object 'b'\): slice must be an integer, got 'two'"
        ),
    }
    for text, needle in bad.items():
        c.write_text(text)
        with pytest.raises(readers.DataError, match=needle):
            readers.read_points_file(str(c))
    j.write_text(json.dumps([{"points": pts, "corrections": [{"x": 1, "y": 1, "kind": "up"}]}]))
    with pytest.raises(readers.DataError, match="kind must be 'positive' or 'negative'"):
        readers.read_points_file(str(j))


def test_cli_corrections_need_a_model_that_takes_them(capsys, tmp_path, random_model, ellipse_png):
    img, pts, _ = ellipse_png
    (x1, y1), (x2, y2), (x3, y3), (x4, y4) = (p.split(",") for p in pts.split())
    c = tmp_path / "clicks.csv"
    rows = [f"o,extreme,{x},{y}" for x, y in ((x1, y1), (x2, y2), (x3, y3), (x4, y4))]
    c.write_text("object,kind,x,y\n" + "\n".join(rows + ["o,positive,30,30"]) + "\n")
    out = tmp_path / "out"
    code, _, err = _run_cli(
        capsys, "--workdir", random_model[0], "--image", img, "--points_file", c, "--out_dir", out
    )
    _assert_one_line_error(code, err, "object 1: this model takes no corrective clicks", out)
    c.write_text("object,kind,x,y\n" + "\n".join(rows + ["o,positive,300,30"]) + "\n")
    code, _, err = _run_cli(
        capsys, "--workdir", random_model[0], "--image", img, "--points_file", c, "--out_dir", out
    )
    _assert_one_line_error(
        code, err, "object 1: corrective click 1 (x=300, y=30) lies outside", out
    )


# ----------------------------------------------------------------- trained model (slow)


@pytest.mark.slow
def test_dsc_clearly_above_four_point_baseline(trained_segmenter):
    """Held-out ellipses (not in the training set): mean DSC well above the polygon's."""
    seg = trained_segmenter
    rng = np.random.default_rng(123)
    dsc, base = [], []
    for _ in range(3):
        img, (m1, m2) = two_ellipses(rng)
        img1, m3 = ellipse_image(rng, 64, 96)
        for image, masks in ((img, [m1, m2]), (img1, [m3])):
            res = seg.segment(image, [targets.extreme_points(m) for m in masks])
            for rec in seglib.score_objects(res, masks):
                dsc.append(rec["dsc"])
                base.append(rec["baseline_dsc"])
    dsc, base = np.array(dsc), np.array(base)
    print(
        f"DSC {dsc.mean():.3f} +- {dsc.std():.3f}, four-point polygon {base.mean():.3f} "
        f"+- {base.std():.3f} over {len(dsc)} objects"
    )
    assert dsc.mean() > base.mean() + 0.05
    assert (dsc > base).mean() >= 0.8


def test_cli_an_object_covered_by_a_later_one_is_warned_about(
    capsys, tmp_path, random_model, ellipse_png
):
    """The same object clicked twice: the label map holds the later one only, and the
    summary and the printed report say that object 1 is not in it."""
    img, pts, _ = ellipse_png
    out = tmp_path / "out"
    code, stdout, err = _cli_in(capsys, random_model[0], img, out, "--points", pts, "--points", pts)
    assert code == 0, err
    labels = np.asarray(Image.open(next(out.glob("*_mask.png"))))
    assert set(np.unique(labels)) == {0, 2}
    s = json.loads(next(out.glob("*_summary.json")).read_text())
    first, second = s["objects"]
    assert first["area_px"] > 0 and any("not in the mask file" in w for w in first["warnings"])
    assert not any("not in the mask file" in w for w in second["warnings"])
    assert "not in the mask file" in stdout


@pytest.mark.slow
def test_cli_png_end_to_end(capsys, tmp_path, trained_workdir):
    rng = np.random.default_rng(7)
    img, (m1, m2) = two_ellipses(rng)
    gt = np.zeros(img.shape, np.uint8)
    gt[m1], gt[m2] = 1, 2
    image, gtp = _png(tmp_path / "two.png", img), _png(tmp_path / "two_gt.png", gt)
    args = []
    for k, m in enumerate((m1, m2)):
        args += [
            "--points",
            " ".join(f"{x:g},{y:g}" for x, y in targets.extreme_points(m)),
            "--class",
            f"blob{k}",
        ]
    out = tmp_path / "out"
    code, stdout, err = _cli_in(
        capsys, trained_workdir, image, out, *args, "--spacing", "0.5,0.4", "--ground_truth", gtp
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "two_mask.png",
        "two_overlay.png",
        "two_summary.json",
    ]
    labels = np.asarray(Image.open(out / "two_mask.png"))
    assert labels.shape == img.shape and set(np.unique(labels)) == {0, 1, 2}
    overlay = np.asarray(Image.open(out / "two_overlay.png"))
    assert overlay.ndim == 3 and overlay.shape[0] >= 2 * img.shape[0]
    s = json.loads((out / "two_summary.json").read_text())
    assert [o["class"] for o in s["objects"]] == ["blob0", "blob1"]
    for o in s["objects"]:
        assert o["area_mm2"] == pytest.approx(o["area_px"] * 0.2)
        assert o["area_px"] == int((labels == o["object"]).sum())
    assert s["spacing_mm"] == [0.5, 0.4] and s["timings"]["total_s"] > 0
    assert s["threshold"] == 0.0 and s["threshold_source"] == "config levelset.threshold"
    assert s["intensity"] == "as stored (uint8)"
    assert len(s["metrics"]) == 2 and all(m["units"] == "mm" for m in s["metrics"])
    assert all(m["dsc"] > m["baseline_dsc"] for m in s["metrics"])
    assert "DSC" in stdout


def _volume(rng, n=3):
    """(image volume, label volume, slices' masks): slice k shows np.rot90(vol[:, :, k])."""
    imgs, masks = zip(*(ellipse_image(rng) for _ in range(n)))
    vol = np.stack([np.rot90(i, k=-1) for i in imgs], axis=-1)  # uint8: used as it is
    lab = np.stack([np.rot90(m, k=-1) for m in masks], axis=-1).astype(np.uint8)
    return vol, lab, masks


@pytest.mark.slow
def test_cli_nifti_in_nifti_out_keeps_affine(capsys, tmp_path, trained_workdir, trained_segmenter):
    import nibabel as nib

    rng = np.random.default_rng(11)
    vol, lab, masks = _volume(rng)
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array(
        [
            [0.7 * c, -0.8 * s, 0, -20.5],
            [0.7 * s, 0.8 * c, 0, 13.0],
            [0, 0, 2.5, -7.25],
            [0, 0, 0, 1],
        ]
    )
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "case.nii.gz")
    nib.save(nib.Nifti1Image(lab, affine), tmp_path / "case_gt.nii.gz")
    rows = ["x1,y1,x2,y2,x3,y3,x4,y4,class,slice,label"]
    for k in (0, 2):
        p = targets.extreme_points(masks[k])
        rows.append(",".join(f"{v:g}" for v in p.ravel()) + f",blob,{k},1")
    (tmp_path / "clicks.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    code, _, err = _cli_in(
        capsys,
        trained_workdir,
        tmp_path / "case.nii.gz",
        out,
        "--points_file",
        tmp_path / "clicks.csv",
        "--ground_truth",
        tmp_path / "case_gt.nii.gz",
    )
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "case_mask.nii.gz",
        "case_overlay_slice000.png",
        "case_overlay_slice002.png",
        "case_summary.json",
    ]
    got = nib.load(out / "case_mask.nii.gz")
    np.testing.assert_allclose(got.affine, affine, atol=1e-6)
    np.testing.assert_allclose(got.header.get_zooms(), (0.7, 0.8, 2.5), rtol=1e-6)
    labels = np.asarray(got.dataobj)
    assert labels.shape == vol.shape and not labels[..., 1].any()
    assert set(np.unique(labels[..., 0])) == {0, 1} and set(np.unique(labels[..., 2])) == {0, 2}
    seg = trained_segmenter
    for k in (0, 2):  # in voxel space: the write-back undoes the slice rotation
        pred, gt = labels[..., k] > 0, lab[..., k] > 0
        assert 2 * (pred & gt).sum() / (pred.sum() + gt.sum()) > 0.8
        api = seg.segment(np.rot90(vol[..., k]), [targets.extreme_points(masks[k])]).objects[0]
        np.testing.assert_array_equal(pred, np.rot90(api.mask, k=-1))
    summ = json.loads((out / "case_summary.json").read_text())
    assert summ["spacing_mm"] == pytest.approx([0.8, 0.7])  # rows, cols of the rotated slice
    assert [o["slice"] for o in summ["objects"]] == [0, 2]
    assert [m["slice"] for m in summ["metrics"]] == [0, 2]


@pytest.mark.slow
def test_cli_propagates_a_structure_through_the_volume(capsys, tmp_path, trained_workdir):
    import nibabel as nib

    from dlset_jax import volume

    # an ellipse through slices 1..5 of 7, shrinking away from slice 3
    imgs, masks = [], []
    for z in range(7):
        size = max(0.0, 1 - abs(z - 3) / 3.2)
        img, m = ellipse_image(
            np.random.default_rng(z), center=(32, 30), axes=(16 * size + 1e-3, 11 * size + 1e-3)
        )
        imgs.append(img)
        masks.append(m)
    vol = np.stack([np.rot90(i, k=-1) for i in imgs], axis=-1)
    nib.save(nib.Nifti1Image(vol, np.diag([0.9, 0.9, 2.0, 1.0])), tmp_path / "v.nii.gz")
    pts = " ".join(f"{x:g},{y:g}" for x, y in targets.extreme_points(masks[3]))
    out = tmp_path / "out"
    args = ("--slice", "3", "--points", pts, "--propagate")
    code, printed, err = _cli_in(
        capsys, trained_workdir, tmp_path / "v.nii.gz", out, *args, "--extent", "2,4"
    )
    assert code == 0, err
    labels = np.asarray(nib.load(out / "v_mask.nii.gz").dataobj)
    assert labels[..., 2:5].any(axis=(0, 1)).all()
    assert not labels[..., :2].any() and not labels[..., 5:].any()
    summ = json.loads((out / "v_summary.json").read_text())
    prop = summ["objects"][0]["propagation"]
    assert prop["extent"] == [2, 4] and prop["stops"] == {"below": "extent", "above": "extent"}
    assert [f["slice"] for f in prop["slices"]] == [2, 3, 4]
    total = sum(f["area_px"] for f in prop["slices"])
    assert f"  through slices 2..4 (3 slices, {total} px); below: extent; above: extent" in (
        printed.splitlines()
    )
    for f in prop["slices"]:  # each slice's outline holds exactly its saved pixels, as shown
        shown = np.rot90(labels[..., f["slice"]]) > 0
        np.testing.assert_array_equal(inside_polylines(f["contours"], shown.shape), shown)
    # the same as the library call
    seg = seglib.Segmenter.from_workdir(str(trained_workdir))
    res = volume.propagate(seg, np.stack(imgs), 3, targets.extreme_points(masks[3]), extent=(2, 4))
    for z in range(7):
        np.testing.assert_array_equal(labels[..., z] > 0, np.rot90(res.labels[z], k=-1))
    for z in (2, 3, 4):
        pred = res.labels[z]
        assert 2 * (pred & masks[z]).sum() / (pred.sum() + masks[z].sum()) > 0.7
    # without an extent: on until the object vanishes or the volume ends, as the library
    # call does (where the tiny model loses the object on the noisy end slices depends
    # on its weights, which differ between CPUs; the stop rule itself is test_volume's)
    code, _, err = _cli_in(capsys, trained_workdir, tmp_path / "v.nii.gz", tmp_path / "o2", *args)
    assert code == 0, err
    prop = json.loads((tmp_path / "o2" / "v_summary.json").read_text())["objects"][0]["propagation"]
    res = volume.propagate(seg, np.stack(imgs), 3, targets.extreme_points(masks[3]))
    assert prop["extent"] is None and prop["stops"] == res.stops
    assert [f["slice"] for f in prop["slices"]] == [f["slice"] for f in res.slices]
    for stop in res.stops.values():
        assert stop == "volume edge" or stop.startswith("vanished"), stop
    labels = np.asarray(nib.load(tmp_path / "o2" / "v_mask.nii.gz").dataobj)
    for z in range(7):
        np.testing.assert_array_equal(labels[..., z] > 0, np.rot90(res.labels[z], k=-1))
    # one end named (`2,`): that side stops there, the other where the object ends
    o3 = tmp_path / "o3"
    code, _, err = _cli_in(
        capsys, trained_workdir, tmp_path / "v.nii.gz", o3, *args, "--extent", "2,"
    )
    assert code == 0, err
    prop = json.loads((o3 / "v_summary.json").read_text())["objects"][0]["propagation"]
    res = volume.propagate(
        seg, np.stack(imgs), 3, targets.extreme_points(masks[3]), extent=(2, None)
    )
    assert prop["extent"] == [2, None] and prop["stops"]["below"] == "extent"
    assert prop["stops"] == res.stops
    labels = np.asarray(nib.load(o3 / "v_mask.nii.gz").dataobj)
    for z in range(7):
        np.testing.assert_array_equal(labels[..., z] > 0, np.rot90(res.labels[z], k=-1))


def test_cli_propagation_input_errors(capsys, tmp_path, random_model, ellipse_png):
    import nibabel as nib

    img, pts, _ = ellipse_png
    out = tmp_path / "out"
    code, _, err = _cli_in(capsys, random_model[0], img, out, "--points", pts, "--propagate")
    _assert_one_line_error(
        code,
        err,
        "--propagate needs a volume (NIfTI, a DICOM series folder), got a 2-D image (",
        out,
    )
    vol = np.zeros((64, 64, 5), np.uint8)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    base = ("--points", pts, "--slice", "2")
    for flags_, needle in (
        (("--extent", "1,3"), "without --propagate"),
        (("--page", "1"), "--page selects a page of a multi-page image file; a NIfTI volume"),
        (("--propagate", "--extent", "3,4"), "extent (3, 4) must hold the clicked slice 2"),
        (("--propagate", "--extent", "x"), "--extent must be FIRST,LAST"),
        (("--propagate", "--extent", ","), "--extent must be FIRST,LAST"),
        (("--propagate", "--extent", "3,"), "extent (3, None) must hold the clicked slice 2"),
    ):
        code, _, err = _cli_in(capsys, random_model[0], tmp_path / "v.nii.gz", out, *base, *flags_)
        _assert_one_line_error(code, err, needle, out)


def test_cli_scores_a_propagated_structure_through_the_volume(capsys, tmp_path, random_model):
    """With --propagate and a ground-truth volume, each structure is scored through the
    volume (not only on its clicked slice), against the 3-D connected part of a binary
    mask that holds the clicked slice's truth (here: not the second blob beside it),
    or against its label value in a label volume; the figures are those of the written
    label volume."""
    import nibabel as nib

    imgs, masks, others = [], [], []
    for z in range(6):  # an ellipse on slices 1..4, a second blob on slices 0..5
        img, m = ellipse_image(np.random.default_rng(z), center=(30, 24), axes=(12, 8))
        m = m if 1 <= z <= 4 else np.zeros_like(m)
        other = np.zeros_like(m)
        other[50:58, 50:58] = True
        imgs.append(np.where(m | other, img, 40).astype(np.uint8))
        masks.append(m)
        others.append(other)

    def to_nifti(slices):  # shown slices -> the NIfTI's array order
        return np.stack([np.rot90(x, k=-1) for x in slices], axis=-1)

    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(to_nifti(imgs), affine), tmp_path / "v.nii.gz")
    binary = to_nifti([m | o for m, o in zip(masks, others, strict=True)]).astype(np.uint8)
    nib.save(nib.Nifti1Image(binary, affine), tmp_path / "gt.nii.gz")
    labelled = to_nifti([2 * m + 5 * o for m, o in zip(masks, others, strict=True)])
    nib.save(nib.Nifti1Image(labelled.astype(np.uint8), affine), tmp_path / "lab.nii.gz")
    pts = " ".join(f"{x:g},{y:g}" for x, y in targets.extreme_points(masks[2]))
    truth = np.stack(masks)
    clicks = {"points": targets.extreme_points(masks[2]).tolist(), "slice": 2, "label": 2}
    clicks.update(first_slice=1, last_slice=4)
    (tmp_path / "p.json").write_text(json.dumps(clicks))  # names the object's label value
    for gt_file, flags_ in (
        ("gt.nii.gz", ("--points", pts, "--slice", "2", "--extent", "1,4")),
        ("lab.nii.gz", ("--points_file", tmp_path / "p.json")),
    ):
        out = tmp_path / gt_file.split(".")[0]
        code, printed, err = _cli_in(
            capsys,
            random_model[0],
            tmp_path / "v.nii.gz",
            out,
            *flags_,
            "--propagate",
            "--ground_truth",
            tmp_path / gt_file,
        )
        assert code == 0, err
        labels = np.asarray(nib.load(out / "v_mask.nii.gz").dataobj)
        pred = np.stack([np.rot90(labels[..., z]) for z in range(6)]) == 1
        summ = json.loads((out / "v_summary.json").read_text())
        assert summ["objects"][0]["propagation"]["extent"] == [1, 4]  # from either source
        (vm,) = summ["volume_metrics"]
        inter = int((pred & truth).sum())
        assert vm["object"] == 1
        assert vm["dsc"] == pytest.approx(2 * inter / (pred.sum() + truth.sum()))
        assert vm["iou"] == pytest.approx(inter / (pred | truth).sum())
        assert vm["rvd"] == pytest.approx(100 * (pred.sum() - truth.sum()) / truth.sum())
        assert (vm["voxels"], vm["truth_voxels"]) == (int(pred.sum()), int(truth.sum()))
        assert vm["truth_mm3"] == pytest.approx(truth.sum() * 0.5 * 0.5 * 2.0)
        assert vm["truth_slices"] == [1, 4]
        shown = [z for z in range(6) if (pred[z] | truth[z]).any()]
        assert [r["slice"] for r in vm["per_slice"]] == shown
        for r in vm["per_slice"]:
            p, t = pred[r["slice"]], truth[r["slice"]]
            assert (r["area_px"], r["truth_px"]) == (int(p.sum()), int(t.sum()))
            assert r["dsc"] == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()))
        assert [m["slice"] for m in summ["metrics"]] == [2]  # the clicked slice, as before
        assert any(
            line.startswith("object 1 through the volume: DSC ") for line in printed.splitlines()
        )
        assert summ["warnings"] == []
    # a ground truth placed elsewhere (its affine moved by 3 mm) is scored voxel by voxel,
    # and the summary and the report say so
    moved = affine.copy()
    moved[0, 3] = 3.0
    nib.save(nib.Nifti1Image(binary, moved), tmp_path / "moved.nii.gz")
    out = tmp_path / "moved"
    args = ("--points", pts, "--slice", "2", "--ground_truth", tmp_path / "moved.nii.gz")
    code, printed, err = _cli_in(capsys, random_model[0], tmp_path / "v.nii.gz", out, *args)
    assert code == 0, err
    (w,) = json.loads((out / "v_summary.json").read_text())["warnings"]
    assert w.startswith("the ground truth's affine differs from the image's (by up to 3 mm)")
    assert f"warning: {w}" in printed.splitlines()
    # without --propagate nothing is scored through the volume
    code, _, err = _cli_in(
        capsys,
        random_model[0],
        tmp_path / "v.nii.gz",
        tmp_path / "flat",
        "--points",
        pts,
        "--slice",
        "2",
        "--ground_truth",
        tmp_path / "gt.nii.gz",
    )
    assert code == 0, err
    assert "volume_metrics" not in json.loads((tmp_path / "flat" / "v_summary.json").read_text())


def test_volume_ground_truth_is_the_clicked_value_connected_in_3d():
    """A mask whose clicked slice holds one value: the structure through the volume is
    the 3-D connected part of that value under the clicked truth, not a touching
    structure of another value on another slice, nor a separate blob of the same value."""
    from dlset_jax import segment_files

    stack = np.zeros((4, 8, 8), np.int64)
    stack[1:3, 2:5, 2:5] = 3  # the structure, clicked on slice 1
    stack[3, 2:5, 2:5] = 7  # another structure touching it from slice 3
    stack[1:3, 6:8, 6:8] = 3  # a blob of the same value, not connected
    clicked = stack[1] == 3
    clicked[6:8, 6:8] = False
    want = np.zeros(stack.shape, bool)
    want[1:3, 2:5, 2:5] = True
    got = segment_files.volume_ground_truth(stack, 1, {}, 1, clicked)
    np.testing.assert_array_equal(got, want)
    # a label value given: that value everywhere
    got = segment_files.volume_ground_truth(stack, 1, {"label": 7}, 1, clicked)
    np.testing.assert_array_equal(got, stack == 7)


def test_ground_truth_components_touch_through_corners_as_the_builders_objects():
    """A binary mask's object is its 8-connected part (as `readers.objects_from_label_map`
    cuts masks into training objects), and 26-connected through a volume."""
    from dlset_jax import segment_files

    labels = np.zeros((12, 12), np.uint8)
    labels[1:6, 1:6] = labels[6:11, 6:11] = 1  # two squares meeting at one corner
    masks, _, _ = readers.objects_from_label_map(labels, {"object": [1]}, components="all")
    assert len(masks) == 1
    baseline = np.zeros_like(labels, bool)
    baseline[2:4, 2:4] = True  # the clicks' polygon on the first square
    got = segment_files.ground_truth_mask(labels, {}, 1, baseline, "gt.png")
    np.testing.assert_array_equal(got, labels == 1)
    stack = np.zeros((3, 12, 12), np.uint8)
    stack[1] = labels
    stack[2, 11, 11] = 1  # one voxel meeting the clicked slice's mask at a corner
    got = segment_files.volume_ground_truth(stack, 1, {}, 1, labels == 1)
    np.testing.assert_array_equal(got, stack == 1)


def test_cli_slice_and_extent_flags_are_refused_for_objects_of_a_points_file(
    capsys, tmp_path, random_model
):
    """--slice and --extent name the --points objects' slice and extent: with only a
    points file they would be ignored, so they are refused; a file object without a
    slice is told to give the file a slice column."""
    import nibabel as nib

    vol, _, masks = _volume(np.random.default_rng(9), n=3)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii")
    row = ",".join(f"{v:g}" for p in targets.extreme_points(masks[1]) for v in p)
    c = tmp_path / "p.csv"
    c.write_text("x1,y1,x2,y2,x3,y3,x4,y4\n" + row + "\n")
    out = tmp_path / "out"
    for flags_ in (["--slice", "1"], ["--propagate", "--extent", "0,2"]):
        code, _, err = _cli_in(
            capsys, random_model[0], tmp_path / "v.nii", out, "--points_file", c, *flags_
        )
        _assert_one_line_error(code, err, "--slice and --extent apply to the --points objects", out)
    code, _, err = _cli_in(capsys, random_model[0], tmp_path / "v.nii", out, "--points_file", c)
    _assert_one_line_error(code, err, "3 slices: give a slice column in the points file", out)


def test_cli_corrective_clicks_on_other_slices_act_through_propagation(
    capsys, tmp_path, random_click_model
):
    """Clicks on slices 1 and 3 of an object clicked on slice 2: the label volume is
    the library's propagation given those clicks on those slices; refused without
    --propagate, outside the object's extent, outside the volume."""
    import nibabel as nib

    from dlset_jax import volume

    vol, _, masks = _volume(np.random.default_rng(8), n=5)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii")
    pts = targets.extreme_points(masks[2])
    c = tmp_path / "clicks.csv"

    def write(extent, clicks):
        rows = [f"o,extreme,{x:g},{y:g},2" for x, y in pts]
        rows += [f"o,{kind},{x},{y},{z}" for kind, x, y, z in clicks]
        head = "object,kind,x,y,slice"
        if extent is not None:  # the object's first and last slice
            rows = [f"{r},{extent[0]},{extent[1]}" for r in rows]
            head += ",first_slice,last_slice"
        c.write_text(head + "\n" + "\n".join(rows) + "\n")

    clicks = [("positive", 30, 31, 3), ("negative", 5, 6, 1), ("negative", 60, 60, 3)]
    write((1, 3), clicks)
    out = tmp_path / "out"
    code, _, err = _cli_in(
        capsys, random_click_model, tmp_path / "v.nii", out, "--points_file", c, "--propagate"
    )
    assert code == 0, err
    labels = np.asarray(nib.load(out / "v_mask.nii").dataobj)
    seg = seglib.Segmenter.from_workdir(str(random_click_model))
    stack = np.stack([np.rot90(vol[..., z]) for z in range(5)])
    corr = {3: np.array([[30, 31, 1], [60, 60, -1]], float), 1: np.array([[5, 6, -1]], float)}
    want = volume.propagate(seg, stack, 2, pts, extent=(1, 3), corrections=corr).labels
    for z in range(5):
        np.testing.assert_array_equal(np.rot90(labels[..., z]) > 0, want[z])
    assert not labels[..., [0, 4]].any()
    summ = json.loads((out / "v_summary.json").read_text())
    per_slice = {f["slice"]: f for f in summ["objects"][0]["propagation"]["slices"]}
    assert len(per_slice[3]["corrections"]) == 2 and len(per_slice[1]["corrections"]) == 1
    o2 = tmp_path / "o2"
    for extent, more, flags_, needle in (
        (None, clicks, (), "give --propagate"),
        (
            (2, 3),
            clicks,
            ("--propagate",),
            "corrective click on slice 1, outside its extent (2, 3)",
        ),
        ((0, 4), [("positive", 3, 3, 9)], ("--propagate",), "slice 9, out of range (0..4)"),
    ):
        write(extent, more)
        code, _, err = _cli_in(
            capsys, random_click_model, tmp_path / "v.nii", o2, "--points_file", c, *flags_
        )
        _assert_one_line_error(code, err, needle, o2)


def test_read_dicom_applies_its_window_or_says_it_stretched(tmp_path):
    pytest.importorskip("pydicom")
    img = np.random.default_rng(3).integers(0, 256, (20, 24)).astype(np.uint8)
    d = readers.read_dicom(str(dicom_file(tmp_path / "w.dcm", img)))
    np.testing.assert_array_equal(d["image"], img)  # the window gives the stored image back
    assert d["intensity"].startswith("DICOM window") and d["spacing"] == (0.6, 0.6)
    d = readers.read_dicom(str(dicom_file(tmp_path / "n.dcm", img, window=False)))
    assert d["intensity"] is None and d["image"].dtype == np.float32
    np.testing.assert_allclose(d["image"], img.astype(np.float32) * 32 - 100)


def test_read_dicom_monochrome1_is_windowed_then_inverted(tmp_path):
    """MONOCHROME1 (low values bright, as CR / DX radiographs store them): the window is
    defined on the stored values, so the windowed image is inverted, not the reverse."""
    pydicom = pytest.importorskip("pydicom")
    img = np.random.default_rng(4).integers(0, 256, (20, 24)).astype(np.uint8)
    for window in (True, False):
        path = dicom_file(tmp_path / f"m1_{window}.dcm", img, window=window)
        ds = pydicom.dcmread(path)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.save_as(path)
        d = readers.read_dicom(str(path))
        if window:  # the window maps the stored values exactly back to img
            np.testing.assert_array_equal(d["image"], 255 - img)
        else:  # the rescaled values, inverted about their maximum
            rescaled = img.astype(np.float32) * 32 - 100
            np.testing.assert_allclose(d["image"], rescaled.max() - rescaled)


def test_cli_multiframe_dicom_writes_each_clicked_frames_mask(capsys, tmp_path, random_model):
    """A two-frame DICOM with one object on each frame: a label map per frame (the
    objects numbered over the call), not one file that the last frame overwrites."""
    pydicom = pytest.importorskip("pydicom")
    wd, config, variables = random_model
    rng = np.random.default_rng(21)
    (img0, m0), (img1, m1) = ellipse_image(rng), ellipse_image(rng)
    path = dicom_file(tmp_path / "mf.dcm", img0)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = (np.stack([img0, img1]).astype(np.uint16) * 16).tobytes()
    ds.save_as(path)
    rows = [
        ",".join(f"{v:g}" for p in targets.extreme_points(m) for v in p) + f",{i}"
        for i, m in enumerate((m0, m1))
    ]
    clicks = tmp_path / "c.csv"
    clicks.write_text("x1,y1,x2,y2,x3,y3,x4,y4,slice\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    code, _, err = _cli_in(capsys, wd, path, out, "--points_file", clicks)
    assert code == 0, err
    assert not (out / "mf_mask.png").exists()
    seg = seglib.Segmenter(config, variables)
    for k, (img, m) in enumerate(((img0, m0), (img1, m1)), 1):
        labels = np.asarray(Image.open(out / f"mf_mask_slice{k - 1:03d}.png"))
        want = seg.segment(img, [targets.extreme_points(m)]).objects[0].mask
        assert want.any()
        np.testing.assert_array_equal(labels, np.where(want, k, 0))


@pytest.mark.slow
def test_cli_dicom(capsys, tmp_path, trained_workdir, trained_segmenter):
    pytest.importorskip("pydicom")
    rng = np.random.default_rng(13)
    img, mask = ellipse_image(rng)
    pts = " ".join(f"{x:g},{y:g}" for x, y in targets.extreme_points(mask))
    out = tmp_path / "out"
    code, _, err = _cli_in(
        capsys, trained_workdir, dicom_file(tmp_path / "im.dcm", img), out, "--points", pts
    )
    assert code == 0, err
    s = json.loads((out / "im_summary.json").read_text())
    assert s["kind"] == "dicom" and s["spacing_mm"] == [0.6, 0.6]
    assert s["intensity"].startswith("DICOM window")
    (o,) = s["objects"]
    assert o["area_mm2"] == pytest.approx(o["area_px"] * 0.36)
    # the file's window reproduces the uint8 image: the same mask as the API on it
    labels = np.asarray(Image.open(out / "im_mask.png")) > 0
    api = trained_segmenter.segment(img, [targets.extreme_points(mask)]).objects[0]
    np.testing.assert_array_equal(labels, api.mask)
    dsc = 2 * (labels & mask).sum() / (labels.sum() + mask.sum())
    poly = targets.polygon_mask(targets.extreme_points(mask), mask.shape)
    assert dsc > 2 * (poly & mask).sum() / (poly.sum() + mask.sum())


def test_cli_a_label_absent_from_the_ground_truth_names_the_labels_present(
    capsys, tmp_path, random_model, ellipse_png
):
    img, pts, mask = ellipse_png
    labels = mask.astype(np.uint8)
    labels[0, :5] = 2  # a second structure
    gt = _png(tmp_path / "gt.png", labels)
    c = tmp_path / "p.json"
    points = [[float(v) for v in p.split(",")] for p in pts.split()]
    c.write_text(json.dumps([{"points": points, "label": 9}]))
    out = tmp_path / "out"
    args = ("--points_file", c, "--ground_truth", gt)
    code, _, err = _cli_in(capsys, random_model[0], img, out, *args)
    needle = "(label 9 is empty; the labels present: [1, 2]); name one of them"
    _assert_one_line_error(code, err, needle, out)


@pytest.mark.slow
def test_cli_late_failure_leaves_no_files(capsys, tmp_path, trained_workdir, ellipse_png):
    """A ground truth that has nothing for the object fails after segmenting: no outputs."""
    img, pts, _ = ellipse_png
    empty = _png(tmp_path / "gt.png", np.zeros((64, 64), np.uint8))
    out = tmp_path / "out"
    code, _, err = _cli_in(
        capsys, trained_workdir, img, out, "--points", pts, "--ground_truth", empty
    )
    _assert_one_line_error(code, err, "no ground truth for object 1", out)


# ------------------------------------------------------- NaN / inf intensities


def test_fill_nonfinite_reads_them_as_the_lowest_finite_intensity():
    arr = np.array([[3.0, np.nan], [-np.inf, 7.5]], np.float32)
    filled, n = readers.fill_nonfinite(arr, "f.nii", "min")
    np.testing.assert_array_equal(filled, [[3.0, 3.0], [3.0, 7.5]])
    assert n == 2 and filled.dtype == np.float32
    assert np.isnan(arr[0, 1])  # the input is not changed
    with pytest.raises(readers.DataError, match=r"f.nii: 2 NaN/inf .* index \(0, 1\).*min"):
        readers.fill_nonfinite(arr, "f.nii")
    with pytest.raises(readers.DataError, match="no finite intensity"):
        readers.fill_nonfinite(np.full((2, 2), np.nan), "g.nii", "min")
    ints = np.arange(4).reshape(2, 2)
    assert readers.fill_nonfinite(ints, "h.png", "min") == (ints, 0)
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        readers.fill_nonfinite(arr, "f.nii", "zero")


def test_cli_nan_background_refused_then_read_as_the_minimum(capsys, tmp_path, random_model):
    """A volume with NaN outside the anatomy (as SPM writes it): one clear error by
    default; with --nonfinite min the same masks as the volume with the NaN replaced by
    its lowest value by hand, and the summary counts them."""
    import nibabel as nib

    vol, _, masks = _volume(np.random.default_rng(3), n=2)
    vol = vol.astype(np.float32) * 3.5 + 100.0
    nan_vol = vol.copy()
    nan_vol[:4] = np.nan  # a band of rows on every slice, away from the objects
    nib.save(nib.Nifti1Image(nan_vol, np.eye(4)), tmp_path / "spm.nii")
    by_hand = np.where(np.isnan(nan_vol), np.nanmin(nan_vol), nan_vol)
    nib.save(nib.Nifti1Image(by_hand, np.eye(4)), tmp_path / "hand.nii")
    pts = " ".join(f"{x:g},{y:g}" for x, y in targets.extreme_points(masks[1]))
    args = ("--slice", 1, "--points", pts)
    out = tmp_path / "out"
    code, _, err = _cli_in(capsys, random_model[0], tmp_path / "spm.nii", out, *args)
    n = int(np.isnan(nan_vol).sum())
    _assert_one_line_error(code, err, f"{n} NaN/inf intensities", out)
    assert "--nonfinite=min" in err
    code, _, err = _cli_in(
        capsys, random_model[0], tmp_path / "spm.nii", out, *args, "--nonfinite", "min"
    )
    assert code == 0, err
    code, _, err = _cli_in(capsys, random_model[0], tmp_path / "hand.nii", tmp_path / "o2", *args)
    assert code == 0, err
    got = np.asarray(nib.load(out / "spm_mask.nii").dataobj)
    np.testing.assert_array_equal(
        got, np.asarray(nib.load(tmp_path / "o2" / "hand_mask.nii").dataobj)
    )
    assert json.loads((out / "spm_summary.json").read_text())["nonfinite_read_as_min"] == n
    assert (
        json.loads((tmp_path / "o2" / "hand_summary.json").read_text())["nonfinite_read_as_min"]
        == 0
    )


def test_cli_a_2d_nifti_is_a_volume_of_one_slice(capsys, tmp_path, random_model):
    """A 2-D NIfTI (a radiograph) and a one-slice volume need no --slice (with
    --propagate neither); both give the answer for that slice that the same image as a
    PNG gives (the slice shown rotated as every volume slice is), saved on the file's
    grid (a 2-D NIfTI's mask 2-D)."""
    import nibabel as nib

    vol, _, masks = _volume(np.random.default_rng(4), n=1)
    pts = " ".join(f"{x:g},{y:g}" for x, y in targets.extreme_points(masks[0]))
    affine = np.diag([0.6, 0.9, 1.0, 1.0])
    nib.save(nib.Nifti1Image(vol[..., 0], affine), tmp_path / "flat.nii.gz")
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "one.nii.gz")
    png = _png(tmp_path / "same.png", np.rot90(vol[..., 0]).copy())
    code, _, err = _cli_in(capsys, random_model[0], png, tmp_path / "p", "--points", pts)
    assert code == 0, err
    want = np.asarray(Image.open(tmp_path / "p" / "same_mask.png")) > 0
    assert want.any()
    summ = json.loads((tmp_path / "p" / "same_summary.json").read_text())
    (obj,) = summ["objects"]  # the level set's outline holds exactly the mask's pixels
    np.testing.assert_array_equal(inside_polylines(obj["contours"], want.shape), want)
    for name in ("flat", "one"):
        out = tmp_path / name
        code, _, err = _cli_in(
            capsys, random_model[0], tmp_path / f"{name}.nii.gz", out, "--points", pts
        )
        assert code == 0, err
        got = nib.load(out / f"{name}_mask.nii.gz")
        assert got.shape == (vol.shape if name == "one" else vol.shape[:2])  # the input's
        np.testing.assert_allclose(got.affine, affine)
        got = np.asarray(got.dataobj).reshape(vol.shape)
        np.testing.assert_array_equal(np.rot90(got[..., 0]) > 0, want)
        summ = json.loads((out / f"{name}_summary.json").read_text())
        assert summ["spacing_mm"] == pytest.approx([0.9, 0.6])
        # --propagate too: its one slice is where the walk starts and ends
        code, _, err = _cli_in(
            capsys,
            random_model[0],
            tmp_path / f"{name}.nii.gz",
            out,
            "--points",
            pts,
            "--propagate",
        )
        assert code == 0, err
        got = np.asarray(nib.load(out / f"{name}_mask.nii.gz").dataobj).reshape(vol.shape)
        np.testing.assert_array_equal(np.rot90(got[..., 0]) > 0, want)
        prop = json.loads((out / f"{name}_summary.json").read_text())["objects"][0]["propagation"]
        assert [f["slice"] for f in prop["slices"]] == [0]
