"""The grain input pipeline: per-object examples, determinism, resumption, eval elements."""

import dataclasses
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from dlset_jax import config as config_lib
from dlset_jax import guidance, inference, targets
from dlset_jax.data import pipeline

RES = 64
CONFIG = config_lib.base_config()
CONFIG.data.resolution = RES
# The schema's crop options at RES (relax 10, pert 5, dt_max 30, fixed margins), without
# augmentation unless a test asks for it.
OPTS = dataclasses.replace(pipeline.CropOptions.from_config(CONFIG), augment=False)
AUG = dataclasses.replace(OPTS, augment=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def fundus(data_dir):
    return pipeline.load_source("synthetic_fundus/tiny", data_dir, "train")


@pytest.fixture(scope="module")
def prostate_test(data_dir):
    return pipeline.load_source("synthetic_prostate/tiny", data_dir, "test")


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# --------------------------------------------------------------------------
# Crop options
# --------------------------------------------------------------------------
def test_crop_options_from_config_and_validation():
    c = config_lib.base_config()
    c.data.update(
        dict(
            resolution=96,
            relax=7,
            relax_fraction=0.2,
            pert=3,
            pert_fraction=0.1,
            dt_max=12.0,
            augment=False,
            augment_scale=(0.5, 2.0),
            augment_rotation=15.0,
            augment_flip=False,
        )
    )
    # positional: resolution, relax, relax_fraction, pert, pert_fraction, dt_max,
    # augment, scale_range, max_rotation_deg, flip
    expected = pipeline.CropOptions(96, 7, 0.2, 3, 0.1, 12.0, False, (0.5, 2.0), 15.0, False)
    assert pipeline.CropOptions.from_config(c) == expected
    for field, bad, msg in (
        ("resolution", 1, "resolution"),
        ("relax", -1, "relax"),
        ("pert", 2.5, "pert"),
        ("relax_fraction", 1.5, "relax_fraction"),
        ("pert_fraction", -0.1, "pert_fraction"),
        ("dt_max", 0.0, "dt_max"),
    ):
        with pytest.raises(ValueError, match=msg):
            dataclasses.replace(OPTS, **{field: bad})


# --------------------------------------------------------------------------
# Per-object examples
# --------------------------------------------------------------------------
def _square(side, margin=60):
    """A square object of `side` px in an image with `margin` px around it."""
    n = side + 2 * margin
    mask = np.zeros((n, n), bool)
    mask[margin : margin + side, margin : margin + side] = True
    image = np.where(mask, 200, 30).astype(np.uint8)[..., None]
    return image, mask


def _image_points(out, res):
    """The example's clicks back in image px."""
    return inference.crop_to_image_points(out["points"], out["box"], res)


def test_eval_example_is_the_crop_around_the_exact_points():
    image, mask = _square(30)
    mask[60, 70:75] = False  # ties on the top row start at x = 75
    out = pipeline.process_object(image, mask, OPTS)
    assert set(out) == set(pipeline.TRAIN_KEYS) - {"class_id"} | {"box"}
    pts = targets.extreme_points(mask)
    inputs = targets.crop_inputs(image, pts, relax=10, relax_fraction=0.0, resolution=RES)
    np.testing.assert_array_equal(out["box"], inputs["box"])
    np.testing.assert_array_equal(out["box"], [50, 50, 100, 100])
    np.testing.assert_array_equal(out["image"], inputs["image"])
    np.testing.assert_array_equal(out["points"], inputs["points"])
    np.testing.assert_allclose(_image_points(out, RES), pts, atol=1e-4)
    mcrop = targets.crop_and_resize(mask, out["box"], RES, order=0) > 0.5
    np.testing.assert_array_equal(out["mask"][..., 0], mcrop)
    sdt, dt = targets.signed_distance(mcrop, OPTS.dt_max)
    np.testing.assert_array_equal(out["sdt"][..., 0], sdt)
    np.testing.assert_array_equal(out["dt"][..., 0], dt)
    np.testing.assert_array_equal(out["direction"], targets.direction_field(dt))
    # evaluation never jitters, whatever pert says
    again = pipeline.process_object(image, mask, dataclasses.replace(OPTS, pert=9))
    np.testing.assert_array_equal(again["points"], out["points"])


def _jitter(side, pert, pert_fraction, seeds=40):
    """The largest |click - exact extreme coordinate| over training examples (no
    augmentation), along the coordinate the extreme fixes (x of left/right, y of
    top/bottom), and along the free one beyond the object's side."""
    image, mask = _square(side)
    opts = dataclasses.replace(OPTS, pert=pert, pert_fraction=pert_fraction)
    lo, hi = 60, 60 + side - 1
    fixed = np.array([[lo, 0], [hi, 0], [0, lo], [0, hi]], np.float64)
    worst = 0.0
    for s in range(seeds):
        out = pipeline.process_object(image, mask, opts, np.random.default_rng(s))
        p = _image_points(out, RES)
        for i, axis in ((0, 0), (1, 0), (2, 1), (3, 1)):
            worst = max(worst, abs(p[i, axis] - fixed[i, axis]))
            free = p[i, 1 - axis]
            worst = max(worst, lo - free, free - hi)
    return worst


def test_training_jitter_scales_with_the_object():
    # fixed: at most pert px whatever the object's size
    assert 1.5 < _jitter(100, 2, 0.0) <= 2 + 1e-3
    # with a fraction: up to scaled_margin of the object's box (0.08 * 100 = 8 px) ...
    big = _jitter(100, 2, 0.08)
    assert 5 < big <= 8 + 1e-3
    # ... and at least pert px for a small one (round(0.08 * 12) = 1 < 2)
    assert 1.5 < _jitter(12, 2, 0.08) <= 2 + 1e-3
    corners = np.array([[60, 60], [159, 159]])
    assert targets.scaled_margin(corners, 2, 0.08) == 8


def _share(side, relax, relax_fraction):
    image, mask = _square(side)
    opts = dataclasses.replace(OPTS, relax=relax, relax_fraction=relax_fraction)
    out = pipeline.process_object(image, mask, opts)
    box = out["box"]
    margin = targets.scaled_margin(targets.extreme_points(mask), relax, relax_fraction)
    assert box[2] - box[0] == side + 2 * margin
    return float(out["mask"].mean())


def test_crop_margin_scales_with_the_object():
    """With relax_fraction the object fills the same share of the crop at every size."""
    sides = (12, 30, 100)
    scaled = [_share(s, 2, 0.25) for s in sides]
    np.testing.assert_allclose(scaled, (1 / 1.5) ** 2, atol=0.03)
    fixed = [_share(s, 10, 0.0) for s in sides]  # the authors' 10 px
    assert fixed[0] < 0.3 and fixed[2] > 0.6


def test_train_batch_matches_core_targets(fundus):
    it = pipeline.make_train_loader(fundus, AUG, batch_size=4, seed=0)
    b = next(it)
    assert b.keys() == set(pipeline.TRAIN_KEYS) and "guidance" not in b
    shapes = {
        "image": (4, RES, RES, 3),
        "mask": (4, RES, RES, 1),
        "sdt": (4, RES, RES, 1),
        "dt": (4, RES, RES, 1),
        "direction": (4, RES, RES, 2),
        "points": (4, 4, 2),
        "class_id": (4,),
    }
    for k, s in shapes.items():
        assert b[k].shape == s, k
        assert b[k].dtype == (np.int32 if k == "class_id" else np.float32), k
    assert set(np.unique(b["mask"])) <= {0.0, 1.0}
    for i in range(4):
        m = b["mask"][i, ..., 0]
        sdt, dt = targets.signed_distance(m, dt_max=OPTS.dt_max)
        np.testing.assert_array_equal(b["sdt"][i, ..., 0], sdt)
        np.testing.assert_array_equal(b["dt"][i, ..., 0], dt)
        np.testing.assert_array_equal(b["direction"][i], targets.direction_field(dt))
    assert set(b["class_id"].tolist()) <= {0, 1}
    # The guidance channel is built from the batch's points on the device, by the one
    # implementation (tested against the paper's formulas in test_guidance.py).
    x = np.asarray(
        inference.model_inputs(jnp.asarray(b["image"]), jnp.asarray(b["points"]), CONFIG)
    )
    assert x.shape == (4, RES, RES, 4)
    np.testing.assert_array_equal(x[..., :3], b["image"])
    g = guidance.guidance_channel(b["points"], RES, RES, "heatmap+cm", 10.0, "paper")
    np.testing.assert_allclose(x[..., 3:], np.asarray(g) / 255.0, rtol=1e-6)
    # the clicks lie in the crop (jittered by at most pert px, at least 10 px of margin)
    assert (b["points"] > 0).all() and (b["points"] < RES - 1).all()


# --------------------------------------------------------------------------
# Determinism and resumption
# --------------------------------------------------------------------------
def test_train_loader_deterministic_for_seed(fundus):
    a = _take(pipeline.make_train_loader(fundus, AUG, batch_size=3, seed=7), 5)
    b = _take(pipeline.make_train_loader(fundus, AUG, batch_size=3, seed=7), 5)
    c = _take(pipeline.make_train_loader(fundus, AUG, batch_size=3, seed=8), 5)
    _assert_batches_equal(a, b)
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_train_loader_resumes_exactly(fundus):
    kw = dict(batch_size=5, seed=3, num_epochs=3)  # 12 objects: batches cross epochs
    full = _take(pipeline.make_train_loader(fundus, AUG, **kw), 6)
    it = pipeline.make_train_loader(fundus, AUG, **kw)
    _take(it, 2)
    state = it.get_state()
    resumed = pipeline.make_train_loader(fundus, AUG, **kw)
    resumed.set_state(state)
    _assert_batches_equal(full[2:], _take(resumed, 4))
    # The epochs are finite: 3 * 12 objects // 5 = 7 batches.
    assert len(list(pipeline.make_train_loader(fundus, AUG, **kw))) == 7


def test_train_loader_num_steps_and_shards(fundus):
    it = pipeline.make_train_loader(fundus, OPTS, batch_size=2, seed=0, num_steps=3)
    assert len(list(it)) == 3
    shards = [
        pipeline.make_train_loader(fundus, AUG, batch_size=3, seed=0, shard_index=i, shard_count=2)
        for i in range(2)
    ]
    whole = pipeline.make_train_loader(fundus, AUG, batch_size=6, seed=0)
    # Two processes with 3 rows each see exactly the global batches of one process
    # with 6 rows, augmentation and jitter included.
    for _ in range(3):
        a, b, w = next(shards[0]), next(shards[1]), next(whole)
        for k in w:
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), w[k])


# --------------------------------------------------------------------------
# Evaluation elements
# --------------------------------------------------------------------------
def test_eval_elements_carry_full_resolution_data(prostate_test, fundus):
    for src, n_obj in ((prostate_test, 2), (fundus, 12)):
        batches = list(pipeline.make_eval_iterator(src, OPTS, batch_size=5))
        assert len(batches) == -(-n_obj // 5)
        assert all(b["image"].shape == (5, RES, RES, 3) for b in batches)
        valid = np.concatenate([b["valid"] for b in batches])
        assert valid.sum() == n_obj and valid[:n_obj].all()
        for b in batches:
            for i in np.flatnonzero(b["valid"]):
                rec = src[int(b["record_index"][i])]
                k = int(b["object_index"][i])
                h, w = b["image_shape"][i]
                assert (h, w) == rec["image"].shape[:2]
                full = b["full_mask"][i]
                np.testing.assert_array_equal(full[:h, :w], rec["masks"][k])
                assert not full[h:].any() and not full[:, w:].any()
                np.testing.assert_array_equal(b["spacing"][i], rec["spacing"])
                assert b["id"][i] == rec["id"].decode()
                assert b["class_id"][i] == rec["classes"][k]
                # Exact extreme points (eval: no jitter) and the crop box from them.
                pts = targets.extreme_points(rec["masks"][k])
                box = targets.crop_box(pts, (h, w), relax=OPTS.relax)
                np.testing.assert_array_equal(b["box"][i], box)
                np.testing.assert_allclose(b["points"][i], targets.points_to_crop(pts, box, RES))
                np.testing.assert_array_equal(
                    b["mask"][i, ..., 0],
                    targets.crop_and_resize(rec["masks"][k], box, RES, order=0) > 0.5,
                )


def test_eval_is_deterministic_and_normalised(prostate_test):
    a = list(pipeline.make_eval_iterator(prostate_test, OPTS, batch_size=2))
    b = list(pipeline.make_eval_iterator(prostate_test, OPTS, batch_size=2))
    _assert_batches_equal(a, b)
    img = a[0]["image"]
    raw = img * targets.IMAGENET_STD + targets.IMAGENET_MEAN
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    np.testing.assert_allclose(raw[..., 0], raw[..., 1], atol=1e-5)  # grey replicated


# --------------------------------------------------------------------------
# Objects without foreground, bad arguments
# --------------------------------------------------------------------------
class _ListSource:
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


def _record(masks, classes):
    h, w = masks.shape[1:]
    return {
        "image": np.full((h, w, 1), 100, np.uint8),
        "masks": masks.astype(np.uint8),
        "classes": np.asarray(classes, np.int32),
        "spacing": np.ones(2, np.float32),
        "id": b"r",
    }


def test_empty_objects_are_skipped_and_counted():
    m = np.zeros((3, 40, 40), np.uint8)
    m[0, 10:20, 10:25] = 1  # object; m[1] is empty; m[2] object
    m[2, 5:30, 20:30] = 1
    src = _ListSource(
        [_record(m, [0, 1, 0]), _record(np.zeros((0, 40, 40)), []), _record(m[1:2], [1])]
    )
    objs = pipeline.ObjectSource(src)
    assert (
        len(objs) == 2
        and objs.stats["empty_objects"] == 2
        and objs.stats["records_without_objects"] == 1
    )
    np.testing.assert_array_equal(objs.index, [[0, 0], [0, 2]])
    batches = list(pipeline.make_train_loader(objs, OPTS, batch_size=2, seed=0, num_epochs=2))
    assert len(batches) == 2
    ev = list(pipeline.make_eval_iterator(src, OPTS, batch_size=4))
    assert ev[0]["valid"].sum() == 2


def test_bad_arguments(fundus):
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.make_train_loader(fundus, OPTS, batch_size=0, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.make_eval_iterator(fundus, OPTS, batch_size=2.0)
    with pytest.raises(ValueError, match="shard_index"):
        pipeline.make_train_loader(fundus, OPTS, batch_size=2, seed=0, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="shard_index"):
        pipeline.make_eval_iterator(fundus, OPTS, batch_size=2, shard_index=-1, shard_count=2)
    with pytest.raises(ValueError, match="no objects"):
        pipeline.make_eval_iterator(
            _ListSource([_record(np.zeros((1, 9, 9)), [0])]), OPTS, batch_size=1
        )
    with pytest.raises(TypeError):  # the options and the seed have no defaults
        pipeline.make_train_loader(fundus, OPTS, batch_size=2)


# --------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------
def test_multiworker_loading_matches_and_resumes(fundus):
    """worker_count=2 (spawned processes) yields the single-process batches; its state resumes."""
    kw = dict(batch_size=3, seed=5)
    ref = _take(pipeline.make_train_loader(fundus, AUG, **kw), 5)
    it = pipeline.make_train_loader(fundus, AUG, worker_count=2, **kw)
    try:
        got = _take(it, 3)
        state = it.get_state()
    finally:
        it.close()
    _assert_batches_equal(ref[:3], got)
    # (A multi-worker state restores into a loader with the same worker_count.)
    again = pipeline.make_train_loader(fundus, AUG, worker_count=2, **kw)
    try:
        again.set_state(state)
        _assert_batches_equal(ref[3:], _take(again, 2))
    finally:
        again.close()


def test_show_pipeline_script_writes_png(data_dir, tmp_path):
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location(
        "show_pipeline",
        pathlib.Path(__file__).resolve().parent.parent / "scripts" / "show_pipeline.py",
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "grid.png"
    mod.main(
        [
            "--datasets",
            "synthetic_prostate/tiny,synthetic_fundus/tiny",
            "--data_dir",
            str(data_dir),
            "--n",
            "2",
            "--per_row",
            "2",
            "--resolution",
            "32",
            "--out",
            str(out),
        ]
    )
    im = np.asarray(Image.open(out))
    assert im.ndim == 3 and im.shape[1] >= 2 * 3 * 32 and im.shape[0] > 2 * 32


def test_load_split_reads_the_configured_data_set(data_dir, prostate_test):
    c = config_lib.base_config()
    c.data.update(dict(name="synthetic_prostate", builder_config="tiny", data_dir=str(data_dir)))
    c.data.build = False
    src = pipeline.load_split(c, "test")
    assert len(src) == len(prostate_test)
    assert [src[i]["id"] for i in range(len(src))] == [
        prostate_test[i]["id"] for i in range(len(src))
    ]
    c.data.builder_config = "huge"
    with pytest.raises(ValueError, match="unknown config"):
        pipeline.load_split(c, "test")
    c.data.builder_config = ""  # the builder's default config: not built here
    with pytest.raises(FileNotFoundError, match="not built"):
        pipeline.load_split(c, "test")


def test_mix_objects_holds_main_once_and_the_extras_as_their_share(data_dir, fundus):
    c = config_lib.base_config()
    c.data.update(
        name="synthetic_fundus",
        builder_config="tiny",
        data_dir=str(data_dir),
        extra_sets=("synthetic_prostate/tiny",),
        extra_share=0.6,
    )
    (prostate,) = pipeline.load_extra_splits(c, "train")
    main, extra = pipeline.ObjectSource(fundus), pipeline.ObjectSource(prostate)
    mix = pipeline.mix_objects(main, [extra], 0.6)
    n_extra = round(0.6 / 0.4 * len(main))  # 12 fundus objects -> 18 prostates
    assert len(mix) == len(main) + n_extra and n_extra > len(extra)  # repeated cyclically
    src, idx = mix.index[:, 0], mix.index[:, 1]
    assert sorted(idx[src == 0].tolist()) == list(range(len(main)))
    assert np.bincount(idx[src == 1]).tolist() == [
        sum(1 for j in range(n_extra) if j % len(extra) == k) for k in range(len(extra))
    ]
    # element i is the named source's element
    i = int(np.flatnonzero(src == 1)[len(extra) + 1])
    assert mix[i]["id"] == extra[1]["id"] and np.array_equal(mix[i]["image"], extra[1]["image"])
    # two extras share equally (odd counts: the first gets the one left over)
    two = pipeline.mix_objects(main, [extra, extra], 0.5)
    assert np.bincount(two.index[:, 0]).tolist() == [12, 6, 6]
    assert len(pipeline.mix_objects(main, [extra], 0.0)) == len(main)
    with pytest.raises(ValueError, match="extra_share must be in"):
        pipeline.mix_objects(main, [extra], 1.0)
    # the loader takes a mix: batches of both sets, grey ones replicated to RGB
    it = pipeline.make_train_loader(mix, AUG, batch_size=6, seed=0)
    batch = next(it)
    assert batch["image"].shape == (6, OPTS.resolution, OPTS.resolution, 3)
