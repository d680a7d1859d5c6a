"""Synthetic generators and their TFDS builders (tiny configs)."""

import numpy as np
import pytest

from dlset_jax.data import synthetic


@pytest.mark.parametrize("gen", [synthetic.prostate_slice, synthetic.fundus_crop])
def test_generator_deterministic_per_seed(gen):
    a = gen(synthetic.example_rng(3, "train", 5))
    b = gen(synthetic.example_rng(3, "train", 5))
    c = gen(synthetic.example_rng(4, "train", 5))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["image"], c["image"]) or a["image"].shape != c["image"].shape


def test_prostate_slice_contents():
    for i in range(4):
        ex = synthetic.prostate_slice(synthetic.example_rng(0, "test", i))
        h, w, c = ex["image"].shape
        assert c == 1 and ex["image"].dtype == np.uint8 and 160 <= h <= 192 and h == w
        assert ex["masks"].shape == (1, h, w) and ex["masks"].dtype == np.uint8
        assert set(np.unique(ex["masks"])) <= {0, 1}
        area = ex["masks"].sum()
        assert 100 < area < 0.5 * h * w
        np.testing.assert_array_equal(ex["classes"], [0])
        assert ex["spacing"].dtype == np.float32 and np.all(
            (ex["spacing"] >= 0.6) & (ex["spacing"] <= 1.0)
        )
        # The object does not touch the border (extreme points + relax fit).
        m = ex["masks"][0]
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())


def test_fundus_crop_nested_classes():
    for i in range(3):
        ex = synthetic.fundus_crop(synthetic.example_rng(0, "validation", i))
        h, w, c = ex["image"].shape
        assert c == 3 and ex["image"].dtype == np.uint8
        disc, cup = ex["masks"]
        assert cup.sum() > 50 and disc.sum() > cup.sum()
        assert np.all(cup <= disc), "cup must lie inside the disc"
        np.testing.assert_array_equal(ex["classes"], [0, 1])


def test_generated_images_are_not_trivial():
    """Edges are blurred and the object is not separable by a global threshold."""
    ex = synthetic.prostate_slice(synthetic.example_rng(0, "train", 1))
    img, m = ex["image"][..., 0].astype(float), ex["masks"][0].astype(bool)
    best = max(
        2 * np.sum((img > t) & m) / (np.sum(img > t) + m.sum())
        for t in np.linspace(img.min(), img.max(), 64)
    )
    assert best < 0.8  # a threshold alone does not segment the gland


@pytest.mark.parametrize(
    "name,channels,classes",
    [
        ("synthetic_prostate", 1, ["prostate"]),
        ("synthetic_fundus", 3, ["optic_disc", "optic_cup"]),
    ],
)
def test_synthetic_builders_build_and_read(tmp_path, name, channels, classes):
    from dlset_jax.data import builders

    b = builders.BUILDERS[name](config="tiny", data_dir=str(tmp_path), file_format="array_record")
    b.download_and_prepare()
    assert {s: b.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
        "train": 6,
        "validation": 2,
        "test": 2,
    }
    assert b.info.metadata["class_names"] == classes
    ds = b.as_data_source()
    gen = synthetic.prostate_slice if channels == 1 else synthetic.fundus_crop
    for i in range(len(ds["train"])):
        e = ds["train"][i]
        h, w, c = e["image"].shape
        assert c == channels and e["image"].dtype == np.uint8
        assert e["masks"].shape[1:] == (h, w) and e["masks"].dtype == np.uint8
        assert e["classes"].dtype == np.int32 and e["masks"].shape[0] == len(e["classes"])
        assert e["spacing"].shape == (2,) and e["spacing"].dtype == np.float32
        # Stored example == generator output (exact ground truth, deterministic).
        idx = int(e["id"].decode().split("_")[1])
        ref = gen(synthetic.example_rng(0, "train", idx))
        np.testing.assert_array_equal(e["image"], ref["image"])
        np.testing.assert_array_equal(e["masks"], ref["masks"])
        np.testing.assert_array_equal(e["spacing"], ref["spacing"])
