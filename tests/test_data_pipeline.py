"""The grain input pipeline: agreement with the core, determinism, resumption, eval elements."""

import pathlib

import numpy as np
import pytest

from dlset_jax import targets
from dlset_jax.data import pipeline

RES = 64
KW = dict(
    resolution=RES,
    relax=10,
    dt_max=30.0,
    guidance_mode="heatmap+cm",
    cm_variant="paper",
    sigma=10.0,
)


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
# Agreement with the functional core
# --------------------------------------------------------------------------
def _random_masks():
    rng = np.random.default_rng(0)
    out = []
    for _ in range(6):
        m = np.zeros((30, 40), bool)
        y0, x0 = rng.integers(0, 15), rng.integers(0, 20)
        m[y0 : y0 + rng.integers(3, 15), x0 : x0 + rng.integers(3, 20)] = (
            True  # rectangles: many ties
        )
        m &= rng.uniform(size=m.shape) < 0.8
        if m.any():
            out.append(m)
    return out


def test_extreme_points_agree_with_core():
    jax = pytest.importorskip("jax")
    from dlset_jax import guidance

    for m in _random_masks():
        np.testing.assert_array_equal(
            pipeline.extreme_points_np(m), np.asarray(guidance.extreme_points(m))
        )
        # Random ties + jitter: the same rule (point on the extreme line, jitter <= pert).
        rng = np.random.default_rng(1)
        for pert in (0, 3):
            p = pipeline.extreme_points_np(m, rng, pert)
            q = np.asarray(guidance.extreme_points(m, jax.random.PRNGKey(0), pert))
            ys, xs = np.nonzero(m)
            exact = np.array([[xs.min(), 0], [xs.max(), 0], [0, ys.min()], [0, ys.max()]], float)
            for pts in (p, q):
                for i, axis in ((0, 0), (1, 0), (2, 1), (3, 1)):
                    assert abs(pts[i, axis] - exact[i, axis]) <= pert
                if pert == 0:  # the free coordinate is a foreground pixel on the extreme line
                    for x, y in pts:
                        assert m[int(y), int(x)]


@pytest.mark.parametrize(
    "mode,variant", [("heatmap", "paper"), ("heatmap+cm", "paper"), ("heatmap+cm", "authors")]
)
def test_guidance_agrees_with_core(mode, variant):
    pytest.importorskip("jax")
    from dlset_jax import guidance

    pts = np.array([[3.0, 30.0], [60.0, 25.5], [31.0, 2.0], [28.0, 61.0]], np.float32)
    for p in (pts, pts[[0, 0, 2, 3]]):  # also a zero-length segment
        a = pipeline.guidance_channel_np(p, 64, 64, mode, 10.0, variant)
        b = np.asarray(
            guidance.guidance_channel(p, 64, 64, mode=mode, sigma=10.0, cm_variant=variant)
        )
        assert a.shape == b.shape == (64, 64, 1)
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_train_batch_matches_core_targets(fundus):
    it = pipeline.make_train_loader(fundus, batch_size=4, pert=5, augment=True, seed=0, **KW)
    b = next(it)
    assert b.keys() == set(pipeline.TRAIN_KEYS)
    shapes = {
        "image": (4, RES, RES, 3),
        "guidance": (4, RES, RES, 1),
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
        sdt, dt = targets.signed_distance(m, dt_max=30.0)
        np.testing.assert_array_equal(b["sdt"][i, ..., 0], sdt)
        np.testing.assert_array_equal(b["dt"][i, ..., 0], dt)
        np.testing.assert_array_equal(b["direction"][i], targets.direction_field(dt))
        g = pipeline.guidance_channel_np(b["points"][i], RES, RES, "heatmap+cm", 10.0, "paper")
        np.testing.assert_allclose(b["guidance"][i], g, rtol=1e-6)
    assert set(b["class_id"].tolist()) <= {0, 1}


# --------------------------------------------------------------------------
# Determinism and resumption
# --------------------------------------------------------------------------
def test_train_loader_deterministic_for_seed(fundus):
    a = _take(pipeline.make_train_loader(fundus, batch_size=3, augment=True, seed=7, **KW), 5)
    b = _take(pipeline.make_train_loader(fundus, batch_size=3, augment=True, seed=7, **KW), 5)
    c = _take(pipeline.make_train_loader(fundus, batch_size=3, augment=True, seed=8, **KW), 5)
    _assert_batches_equal(a, b)
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_train_loader_resumes_exactly(fundus):
    kw = dict(
        batch_size=5, augment=True, seed=3, num_epochs=3, **KW
    )  # 12 objects: batches cross epochs
    full = _take(pipeline.make_train_loader(fundus, **kw), 6)
    it = pipeline.make_train_loader(fundus, **kw)
    _take(it, 2)
    state = it.get_state()
    resumed = pipeline.make_train_loader(fundus, **kw)
    resumed.set_state(state)
    _assert_batches_equal(full[2:], _take(resumed, 4))
    # The epochs are finite: 3 * 12 objects // 5 = 7 batches.
    assert len(list(pipeline.make_train_loader(fundus, **kw))) == 7


def test_train_loader_num_steps_and_shards(fundus):
    it = pipeline.make_train_loader(fundus, batch_size=2, seed=0, num_steps=3, **KW)
    assert len(list(it)) == 3
    shards = [
        pipeline.make_train_loader(
            fundus, batch_size=3, seed=0, shard_index=i, shard_count=2, augment=True, **KW
        )
        for i in range(2)
    ]
    whole = pipeline.make_train_loader(fundus, batch_size=6, seed=0, augment=True, **KW)
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
        batches = list(pipeline.make_eval_iterator(src, batch_size=5, **KW))
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
                pts = pipeline.extreme_points_np(rec["masks"][k])
                box = targets.crop_box(pts, (h, w), relax=10)
                np.testing.assert_array_equal(b["box"][i], box)
                np.testing.assert_allclose(b["points"][i], targets.points_to_crop(pts, box, RES))
                np.testing.assert_array_equal(
                    b["mask"][i, ..., 0],
                    targets.crop_and_resize(rec["masks"][k], box, RES, order=0) > 0.5,
                )


def test_eval_is_deterministic_and_normalised(prostate_test):
    a = list(pipeline.make_eval_iterator(prostate_test, batch_size=2, **KW))
    b = list(pipeline.make_eval_iterator(prostate_test, batch_size=2, **KW))
    _assert_batches_equal(a, b)
    img = a[0]["image"]
    raw = img * pipeline.IMAGENET_STD + pipeline.IMAGENET_MEAN
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
    batches = list(pipeline.make_train_loader(objs, batch_size=2, seed=0, num_epochs=2, **KW))
    assert len(batches) == 2
    ev = list(pipeline.make_eval_iterator(src, batch_size=4, **KW))
    assert ev[0]["valid"].sum() == 2


def test_bad_arguments(fundus):
    with pytest.raises(ValueError, match="guidance_mode"):
        pipeline.make_train_loader(fundus, batch_size=2, **{**KW, "guidance_mode": "cm"})
    with pytest.raises(ValueError, match="shard_index"):
        pipeline.make_train_loader(fundus, batch_size=2, shard_index=2, shard_count=2, **KW)
    with pytest.raises(ValueError, match="no objects"):
        pipeline.make_eval_iterator(
            _ListSource([_record(np.zeros((1, 9, 9)), [0])]), batch_size=1, **KW
        )


# --------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------
def test_multiworker_loading_matches_and_resumes(fundus):
    """worker_count=2 (spawned processes) yields the single-process batches; its state resumes."""
    kw = dict(batch_size=3, augment=True, seed=5, **KW)
    ref = _take(pipeline.make_train_loader(fundus, **kw), 5)
    it = pipeline.make_train_loader(fundus, worker_count=2, **kw)
    try:
        got = _take(it, 3)
        state = it.get_state()
    finally:
        it.close()
    _assert_batches_equal(ref[:3], got)
    # (A multi-worker state restores into a loader with the same worker_count.)
    again = pipeline.make_train_loader(fundus, worker_count=2, **kw)
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
