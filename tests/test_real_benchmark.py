"""The real-image benchmark's pieces: clicks, objects, tables (no model needed)."""

import numpy as np
import pytest

from dlset_jax import real_benchmark, targets


def test_clicks_are_exact_or_jittered_within_bounds():
    m = np.zeros((40, 50), bool)
    m[10:30, 5:45] = True
    exact = real_benchmark.clicks(m, 0, np.random.default_rng(0))
    np.testing.assert_array_equal(exact, targets.extreme_points(m))
    rng = np.random.default_rng(1)
    moved = np.stack([real_benchmark.clicks(m, 2, rng) for _ in range(200)])
    d = moved - exact
    assert np.abs(d).max() == 2 and (d == np.round(d)).all()
    assert set(np.unique(d)) == {-2, -1, 0, 1, 2}
    assert (moved[..., 0] <= 49).all() and (moved[..., 1] <= 39).all() and (moved >= 0).all()
    # where an extreme side is a run of pixels, the tie rule picks along it
    np.testing.assert_array_equal(
        real_benchmark.clicks(m, 0, rng, ties="middle"), [[5, 20], [44, 20], [25, 10], [25, 29]]
    )


def test_table_and_verdict_name_structures_below_the_polygon():
    from dlset_jax import metrics

    def rec(cls, dsc, base):
        return {"class": cls, "dsc": dsc, "baseline_dsc": base, "hd95": 1.0, "rvd": 0.0}

    records = [rec("a", 0.9, 0.8), rec("a", 0.8, 0.7), rec("b", 0.7, 0.75)]
    result = {0: {"records": records, "summary": metrics.summarize(records)}}
    table = real_benchmark.table(result)
    assert "| a | 2 | 85.0 ± 5.0 | 75.0 ± 5.0 |" in table and "| **all** | 3 |" in table
    (line,) = real_benchmark.verdict(result)
    assert line.startswith("exact clicks: DSC 0.800") and line.endswith("polygon: b")
    for r, (model, label) in zip(records, ((6.0, 5.0), (4.0, 5.0), (8.0, 2.0)), strict=True):
        r.update(edge=model, edge_label=label, edge_polygon=1.0)
    _, edges = real_benchmark.verdict(result)
    assert edges.endswith(
        "model 6.0, label 4.0, polygon 1.0; the model's contour lies on "
        "stronger edges than the label's in 2 of 3 objects"
    )


@pytest.mark.skipif(not real_benchmark.available(), reason="mricron-data is not installed")
def test_test_objects_are_the_aal_test_split(tmp_path):
    objs = real_benchmark.test_objects(str(tmp_path))
    assert len(objs) == 60  # the deep grey test slabs (docs/data.md)
    assert {o["class"].split("_")[0] for o in objs} == {
        "Caudate",
        "Putamen",
        "Pallidum",
        "Thalamus",
        "Hippocampus",
    }
    assert all(o["image"].dtype == np.uint8 and o["mask"].any() for o in objs)


def test_with_contrast_squeezes_about_the_slice_mean():
    img = np.array([[0, 100], [200, 100]], np.uint8)  # mean 100
    objs = [{"image": img, "mask": img > 150, "id": "a"}]
    (faint,) = real_benchmark.with_contrast(objs, 0.15)
    np.testing.assert_array_equal(faint["image"], [[85, 100], [115, 100]])
    assert faint["image"].dtype == np.uint8 and faint["mask"] is objs[0]["mask"]
    np.testing.assert_array_equal(real_benchmark.with_contrast(objs, 1.0)[0]["image"], img)
    (strong,) = real_benchmark.with_contrast(objs, 3.0)  # clipped to [0, 255]
    np.testing.assert_array_equal(strong["image"], [[0, 100], [255, 100]])
    with pytest.raises(ValueError, match="contrast must be > 0"):
        real_benchmark.with_contrast(objs, 0.0)


def test_with_speckle_multiplies_one_field_per_slice():
    img = np.full((64, 64), 100, np.uint8)
    other = np.full((64, 64), 50, np.uint8)
    objs = [
        {"image": img, "mask": img > 0, "id": "s1/0"},
        {"image": img, "mask": img > 0, "id": "s1/1"},
        {"image": other, "mask": other > 0, "id": "s2/0"},
    ]
    a, b, c = real_benchmark.with_speckle(objs, 1)
    assert a["image"].dtype == np.uint8 and a["mask"] is objs[0]["mask"]
    np.testing.assert_array_equal(a["image"], b["image"])  # one field per slice
    f1 = a["image"] / 100.0
    f2 = c["image"] / 50.0
    assert not np.allclose(f1, f2, atol=0.05)  # another slice, another field
    # single-look amplitude, mean square 1: mean ~0.886, coefficient of variation ~0.52
    assert abs(np.mean(f1**2) - 1) < 0.05 and 0.45 < f1.std() / f1.mean() < 0.6
    again = real_benchmark.with_speckle(objs, 1)
    np.testing.assert_array_equal(again[2]["image"], c["image"])  # reproducible
    four = real_benchmark.with_speckle(objs, 4)[0]["image"] / 100.0
    assert four.std() / four.mean() < 0.7 * f1.std() / f1.mean()
    with pytest.raises(ValueError, match="looks must be >= 1"):
        real_benchmark.with_speckle(objs, 0)
    with pytest.raises(ValueError, match="corr must be > 0"):
        real_benchmark.with_speckle(objs, 1, corr=0.0)


def test_bmode_display_is_the_log_compressed_amplitude():
    x = np.array([1.0, 10.0, 100.0, 1000.0, 0.0, 3.0])
    med = np.median(x)
    want = np.clip(0.5 + 20 * np.log10(np.maximum(x, 1e-6 * med) / med) / 40.0, 0, 1)
    np.testing.assert_allclose(real_benchmark.bmode_display(x, 40.0, 0.5), want, atol=1e-12)
    # the median at the level; a decade of amplitude (20 dB) is half of a 40 dB range
    np.testing.assert_allclose(
        real_benchmark.bmode_display(np.array([0.4, 4.0, 40.0]), 40.0, 0.3), [0.0, 0.3, 0.8]
    )
    with pytest.raises(ValueError, match="dynamic_range_db must be > 0"):
        real_benchmark.bmode_display(x, 0.0, 0.5)


def test_with_speckle_as_a_bmode_display():
    # two halves of a slice whose reflectivity differs tenfold (20 dB)
    img = np.full((64, 128), 20, np.uint8)
    img[:, 64:] = 200
    objs = [{"image": img, "mask": img > 100, "id": "s1/0"}]
    raw = real_benchmark.with_speckle(objs, 1)[0]["image"].astype(float)
    (shown,) = real_benchmark.with_speckle(objs, 1, display_db=40.0)
    d = shown["image"].astype(float) / 255
    assert shown["image"].dtype == np.uint8 and shown["mask"] is objs[0]["mask"]
    # the same field, log-compressed: the median at mid grey, 20 dB = half the range
    assert abs(np.median(d) - 0.5) < 0.02
    assert d[:, 64:].mean() - d[:, :64].mean() == pytest.approx(0.5, abs=0.03)
    # the raw speckle's spread grows with the reflectivity, the display's does not
    assert raw[:, 64:].std() > 5 * raw[:, :64].std()
    assert 0.8 < d[:, 64:].std() / d[:, :64].std() < 1.25
    with pytest.raises(ValueError, match="display_db must be > 0"):
        real_benchmark.with_speckle(objs, 1, display_db=0.0)
