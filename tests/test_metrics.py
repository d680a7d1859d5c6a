"""Tests for dlset_jax.metrics.

Reference implementation: medpy (``medpy.metric.binary``: dc, jc, hd, hd95,
assd, ravd).  medpy is an established, widely used implementation of exactly
these definitions (contour = mask XOR its 4-connected erosion, Euclidean
distance transform with ``voxelspacing``, pooled 95th percentile, pooled mean
for ASSD), so agreement with it on random blobs and ellipses, isotropic and
anisotropic spacing, pins our own code to the standard definitions.  Cases
medpy does not cover (empty masks, boundary F-measure) are checked against
analytic values and a brute-force O(n^2) numpy matching.
"""

import math

import numpy as np
import pytest
from scipy import ndimage

medpy_binary = pytest.importorskip("medpy.metric.binary")

from conftest import brute_contour  # noqa: E402

from dlset_jax import metrics as M  # noqa: E402


# --------------------------------------------------------------------------
# Shape generators
# --------------------------------------------------------------------------
def blob(rng, shape=(48, 56), sigma=3.0, q=0.6):
    """Random smooth blob(s): thresholded Gaussian-filtered noise."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    m = f > np.quantile(f, q)
    if not m.any():
        m[shape[0] // 2, shape[1] // 2] = True
    return m


def ellipse(shape, cy, cx, ry, rx, theta=0.0):
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    c, s = math.cos(theta), math.sin(theta)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def disc(shape, cy, cx, r):
    return ellipse(shape, cy, cx, r, r)


def random_ellipse(rng, shape=(64, 64)):
    return ellipse(
        shape,
        cy=rng.uniform(20, 44),
        cx=rng.uniform(20, 44),
        ry=rng.uniform(5, 18),
        rx=rng.uniform(5, 18),
        theta=rng.uniform(0, math.pi),
    )


def random_pairs(seed, n=6):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        pairs.append((blob(rng), blob(rng)))
        g = random_ellipse(rng)
        p = ndimage.shift(g.astype(float), rng.uniform(-3, 3, 2), order=0) > 0.5
        p = ndimage.binary_dilation(p, iterations=int(rng.integers(0, 3)))
        if not p.any():
            p = g.copy()
        pairs.append((p, g))
    return pairs


SPACINGS = [None, (1.0, 1.0), (0.6, 1.7), (2.5, 0.4)]


# --------------------------------------------------------------------------
# Against medpy
# --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_overlap_and_volume_match_medpy(seed):
    for p, g in random_pairs(seed):
        assert M.dice(p, g) == pytest.approx(medpy_binary.dc(p, g), abs=1e-12)
        assert M.iou(p, g) == pytest.approx(medpy_binary.jc(p, g), abs=1e-12)
        assert M.rvd(p, g) == pytest.approx(100 * medpy_binary.ravd(p, g), abs=1e-9)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_distances_match_medpy(spacing):
    for p, g in random_pairs(7, n=4):
        kw = {} if spacing is None else {"voxelspacing": spacing}
        assert M.hausdorff(p, g, spacing) == pytest.approx(medpy_binary.hd(p, g, **kw), rel=1e-12)
        assert M.hd95(p, g, spacing) == pytest.approx(medpy_binary.hd95(p, g, **kw), rel=1e-12)
        assert M.abd(p, g, spacing) == pytest.approx(medpy_binary.assd(p, g, **kw), rel=1e-12)


def test_object_metrics_matches_medpy_and_individual_functions():
    sp = (0.8, 1.3)
    for p, g in random_pairs(3, n=3):
        r = M.object_metrics(p, g, spacing=sp)
        assert set(r) >= {"dsc", "iou", "rvd", "hd", "hd95", "abd", "bf_1", "bf_2"}
        assert r["dsc"] == pytest.approx(medpy_binary.dc(p, g))
        assert r["iou"] == pytest.approx(medpy_binary.jc(p, g))
        assert r["rvd"] == pytest.approx(100 * medpy_binary.ravd(p, g))
        assert r["hd"] == pytest.approx(medpy_binary.hd(p, g, voxelspacing=sp))
        assert r["hd95"] == pytest.approx(medpy_binary.hd95(p, g, voxelspacing=sp))
        assert r["abd"] == pytest.approx(medpy_binary.assd(p, g, voxelspacing=sp))
        for t in (1, 2):
            prec, rec, f = M.boundary_fmeasure(p, g, t)
            assert (r[f"bf_{t}_precision"], r[f"bf_{t}_recall"], r[f"bf_{t}"]) == (prec, rec, f)
        assert all(isinstance(v, float) for v in r.values())


def test_masks_touching_image_border_match_medpy():
    g = np.zeros((30, 30), bool)
    g[:12, :20] = True  # touches top and left edges
    p = np.zeros((30, 30), bool)
    p[3:30, 5:30] = True  # touches bottom and right edges
    for sp in (None, (0.7, 1.9)):
        kw = {} if sp is None else {"voxelspacing": sp}
        assert M.hausdorff(p, g, sp) == pytest.approx(medpy_binary.hd(p, g, **kw))
        assert M.hd95(p, g, sp) == pytest.approx(medpy_binary.hd95(p, g, **kw))
        assert M.abd(p, g, sp) == pytest.approx(medpy_binary.assd(p, g, **kw))


def test_zero_one_integer_masks_accepted():
    rng = np.random.default_rng(5)
    p, g = blob(rng), blob(rng)
    assert M.object_metrics(p.astype(np.uint8), g.astype(np.float32)) == M.object_metrics(p, g)


# --------------------------------------------------------------------------
# Contour definition
# --------------------------------------------------------------------------
def test_contour_is_four_neighbour_boundary():
    m = np.zeros((7, 7), bool)
    m[1:6, 1:6] = True
    c = M.contour(m)
    expected = m.copy()
    expected[2:5, 2:5] = False
    np.testing.assert_array_equal(c, expected)
    # Diagonal-only exposure does not make a contour pixel (4-connectivity).
    m2 = np.ones((5, 5), bool)
    m2[0, 0] = False
    c2 = M.contour(m2)
    assert not c2[1, 1]
    # Image edge counts as outside.
    assert c2[0, 1] and c2[4, 4]
    # Same as medpy's surface definition: mask XOR 4-connected erosion.
    rng = np.random.default_rng(2)
    b = blob(rng)
    ref = b ^ ndimage.binary_erosion(b, structure=ndimage.generate_binary_structure(2, 1))
    np.testing.assert_array_equal(M.contour(b), ref)


# --------------------------------------------------------------------------
# Analytic cases
# --------------------------------------------------------------------------
@pytest.mark.parametrize("r1,r2", [(8, 14), (10, 11), (5, 20)])
def test_concentric_discs_hd_is_radius_difference(r1, r2):
    shape = (64, 64)
    a, b = disc(shape, 31.3, 32.1, r1), disc(shape, 31.3, 32.1, r2)
    hd = M.hausdorff(a, b)
    assert abs(hd - (r2 - r1)) <= 1.0
    assert M.hd95(a, b) <= hd + 1e-12
    assert abs(M.abd(a, b) - (r2 - r1)) <= 1.0


@pytest.mark.parametrize("spacing", [None, (0.5, 2.0), (1.3, 0.7)])
def test_mask_vs_itself(spacing):
    rng = np.random.default_rng(11)
    m = blob(rng)
    r = M.object_metrics(m, m, spacing=spacing)
    assert r["dsc"] == 1.0 and r["iou"] == 1.0 and r["rvd"] == 0.0
    assert r["hd"] == 0.0 and r["hd95"] == 0.0 and r["abd"] == 0.0
    for t in (1, 2):
        assert r[f"bf_{t}"] == 1.0
        assert r[f"bf_{t}_precision"] == 1.0 and r[f"bf_{t}_recall"] == 1.0
    assert M.boundary_fmeasure(m, m, tolerance=0) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("spacing", [None, (0.5, 2.0), (1.6, 0.3)])
def test_shifted_square_hd_is_one_spacing(axis, spacing):
    a = np.zeros((32, 32), bool)
    a[8:20, 10:22] = True
    b = np.roll(a, 1, axis=axis)
    s = 1.0 if spacing is None else spacing[axis]
    assert M.hausdorff(a, b, spacing) == pytest.approx(s)
    assert M.hausdorff(b, a, spacing) == pytest.approx(s)
    # 1-px shift: every contour pixel is within 1 px of the other contour.
    assert M.boundary_fmeasure(a, b, tolerance=1) == (1.0, 1.0, 1.0)
    # But not within 0 px (the leading and trailing edges move).
    p0, r0, f0 = M.boundary_fmeasure(a, b, tolerance=0)
    assert 0 < p0 < 1 and 0 < r0 < 1 and 0 < f0 < 1


def test_rvd_sign_and_percent():
    g = np.zeros((20, 20), bool)
    g[5:15, 5:15] = True  # 100 px
    p = np.zeros_like(g)
    p[5:15, 5:13] = True  # 80 px
    assert M.rvd(p, g) == pytest.approx(-20.0)
    assert M.rvd(g, p) == pytest.approx(25.0)
    assert M.dice(p, g) == pytest.approx(160 / 180)
    assert M.iou(p, g) == pytest.approx(0.8)


def test_distances_symmetric():
    for p, g in random_pairs(4, n=2):
        for f in (M.hausdorff, M.hd95, M.abd):
            assert f(p, g, (0.9, 1.4)) == pytest.approx(f(g, p, (0.9, 1.4)))


def test_cropping_does_not_change_distances():
    rng = np.random.default_rng(9)
    p, g = blob(rng, (40, 40)), blob(rng, (40, 40))
    big_p = np.zeros((200, 180), bool)
    big_g = np.zeros((200, 180), bool)
    big_p[70:110, 90:130] = p
    big_g[70:110, 90:130] = g
    for f in (M.hausdorff, M.hd95, M.abd):
        assert f(big_p, big_g, (0.5, 0.8)) == pytest.approx(f(p, g, (0.5, 0.8)), rel=1e-12)


# --------------------------------------------------------------------------
# Boundary F vs brute force
# --------------------------------------------------------------------------
def brute_bf(p, g, tol):
    cp = np.argwhere(brute_contour(p)).astype(float)
    cg = np.argwhere(brute_contour(g)).astype(float)
    d = np.sqrt(((cp[:, None, :] - cg[None, :, :]) ** 2).sum(-1))  # O(n^2)
    prec = float(np.mean(d.min(axis=1) <= tol + 1e-9))
    rec = float(np.mean(d.min(axis=0) <= tol + 1e-9))
    f = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return prec, rec, f


@pytest.mark.parametrize("tol", [0, 1, 1.5, 2, 3])
def test_boundary_f_matches_brute_force(tol):
    rng = np.random.default_rng(123)
    for _ in range(6):
        p = blob(rng, (24, 28), sigma=2.0, q=rng.uniform(0.4, 0.8))
        g = blob(rng, (24, 28), sigma=2.0, q=rng.uniform(0.4, 0.8))
        np.testing.assert_array_equal(M.contour(p), brute_contour(p))
        got = M.boundary_fmeasure(p, g, tolerance=tol)
        np.testing.assert_allclose(got, brute_bf(p, g, tol), atol=1e-12)


def test_boundary_f_far_apart_is_zero():
    a = np.zeros((40, 40), bool)
    b = np.zeros((40, 40), bool)
    a[2:8, 2:8] = True
    b[30:36, 30:36] = True
    assert M.boundary_fmeasure(a, b, 2) == (0.0, 0.0, 0.0)


def test_boundary_f_monotone_in_tolerance():
    rng = np.random.default_rng(8)
    p, g = blob(rng), blob(rng)
    fs = [M.boundary_fmeasure(p, g, t)[2] for t in (0, 1, 2, 4, 8)]
    assert fs == sorted(fs)


# --------------------------------------------------------------------------
# Empty cases
# --------------------------------------------------------------------------
def test_both_empty():
    z = np.zeros((10, 12), bool)
    r = M.object_metrics(z, z, spacing=(0.5, 0.5))
    assert r["dsc"] == 1.0 and r["iou"] == 1.0 and r["rvd"] == 0.0
    assert r["hd"] == 0.0 and r["hd95"] == 0.0 and r["abd"] == 0.0
    assert r["bf_1"] == 1.0 and r["bf_1_precision"] == 1.0 and r["bf_1_recall"] == 1.0
    assert M.surface_distances(z, z) is None


def test_exactly_one_empty():
    z = np.zeros((10, 12), bool)
    m = z.copy()
    m[2:6, 3:8] = True
    rp = M.object_metrics(z, m)  # empty prediction
    assert rp["dsc"] == 0.0 and rp["iou"] == 0.0 and rp["rvd"] == -100.0
    assert rp["hd"] == rp["hd95"] == rp["abd"] == math.inf
    assert (rp["bf_1_precision"], rp["bf_1_recall"], rp["bf_1"]) == (1.0, 0.0, 0.0)
    rg = M.object_metrics(m, z)  # empty ground truth
    assert rg["dsc"] == 0.0 and rg["rvd"] == math.inf
    assert rg["hd"] == rg["hd95"] == rg["abd"] == math.inf
    assert (rg["bf_1_precision"], rg["bf_1_recall"], rg["bf_1"]) == (0.0, 1.0, 0.0)
    for r in (rp, rg):
        assert not any(math.isnan(v) for v in r.values())


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------
def test_shape_errors_name_shapes():
    a = np.zeros((5, 6), bool)
    with pytest.raises(ValueError, match=r"\(5, 6\).*\(6, 5\)"):
        M.dice(a, np.zeros((6, 5), bool))
    with pytest.raises(ValueError, match=r"\(2, 5, 6\)"):
        M.hausdorff(np.zeros((2, 5, 6), bool), np.zeros((2, 5, 6), bool))
    with pytest.raises(ValueError, match=r"\(30,\)"):
        M.object_metrics(np.zeros(30, bool), np.zeros(30, bool))


@pytest.mark.parametrize(
    "bad",
    [(0.0, 1.0), (-1.0, 1.0), (1.0,), (1.0, 1.0, 1.0), (float("nan"), 1.0), (1.0, float("inf"))],
)
def test_bad_spacing_raises(bad):
    a = np.zeros((5, 6), bool)
    a[1:3, 1:3] = True
    with pytest.raises(ValueError, match="spacing"):
        M.hausdorff(a, a, spacing=bad)
    with pytest.raises(ValueError, match="spacing"):
        M.object_metrics(a, a, spacing=bad)


def test_non_binary_and_bad_tolerance_raise():
    a = np.zeros((5, 6))
    b = a.copy()
    b[1, 1] = 0.5
    with pytest.raises(ValueError, match="0 and 1"):
        M.dice(b, a)
    with pytest.raises(ValueError, match="tolerance"):
        M.boundary_fmeasure(a, a, tolerance=-1)
    with pytest.raises(ValueError):
        M.batch_object_metrics([(a,)])


# --------------------------------------------------------------------------
# Batch, summary, table
# --------------------------------------------------------------------------
def test_batch_object_metrics():
    pairs = random_pairs(21, n=2)
    items = [(p, g) for p, g in pairs[:2]] + [(p, g, (0.5, 0.7)) for p, g in pairs[2:]]
    out = M.batch_object_metrics(items)
    assert len(out) == len(items)
    assert out[0] == M.object_metrics(*pairs[0])
    assert out[-1] == M.object_metrics(*pairs[-1], spacing=(0.5, 0.7))


def test_summarize_overall_and_per_class():
    pairs = random_pairs(31, n=3)
    records = []
    for i, (p, g) in enumerate(pairs):
        r = M.object_metrics(p, g, spacing=(0.5, 0.5))
        r["class"] = "cup" if i % 2 else "disc"
        r["case_id"] = f"c{i}"  # non-numeric extras are ignored
        records.append(r)
    s = M.summarize(records)
    assert s["group_key"] == "class"
    assert set(s["groups"]) == {"cup", "disc"}
    for k in ("dsc", "iou", "rvd", "hd", "hd95", "abd", "bf_1", "bf_2"):
        vals = np.array([r[k] for r in records])
        assert s["overall"][k]["mean"] == pytest.approx(vals.mean())
        assert s["overall"][k]["std"] == pytest.approx(vals.std())
        assert s["overall"][k]["n"] == len(records)
        cup = np.array([r[k] for r in records if r["class"] == "cup"])
        assert s["groups"]["cup"][k]["mean"] == pytest.approx(cup.mean())
        assert s["groups"]["cup"][k]["std"] == pytest.approx(cup.std())
    assert "case_id" not in s["overall"] and "class" not in s["overall"]
    assert list(s["overall"])[:6] == ["dsc", "iou", "rvd", "hd", "hd95", "abd"]
    # ddof=1 and no grouping
    s1 = M.summarize([{k: v for k, v in r.items() if k != "class"} for r in records], ddof=1)
    assert s1["groups"] == {} and s1["group_key"] is None
    assert s1["overall"]["dsc"]["std"] == pytest.approx(np.std([r["dsc"] for r in records], ddof=1))


def test_summarize_handles_inf_consistently():
    recs = [{"hd": 2.0}, {"hd": 4.0}, {"hd": math.inf}]
    s = M.summarize(recs)
    assert s["overall"]["hd"] == {"mean": 3.0, "std": 1.0, "n": 3, "n_nonfinite": 1}
    sp = M.summarize(recs, nonfinite="propagate")
    assert sp["overall"]["hd"]["mean"] == math.inf
    s_all = M.summarize([{"hd": math.inf}])
    assert s_all["overall"]["hd"]["mean"] == math.inf
    with pytest.raises(ValueError, match="NaN"):
        M.summarize([{"hd": float("nan")}])
    with pytest.raises(ValueError, match="nonfinite"):
        M.summarize(recs, nonfinite="drop")
    table = M.format_table(s)
    assert "3.0 ± 1.0 (1/3 inf)" in table


def test_format_table_shape_and_units():
    recs = [
        {"dsc": 0.96, "rvd": -2.0, "hd": 6.0, "abd": 1.0, "bf_1": 0.9, "class": "CUP"},
        {"dsc": 0.97, "rvd": -4.0, "hd": 8.0, "abd": 1.2, "bf_1": 0.8, "class": "DISC"},
    ]
    t = M.format_table(M.summarize(recs, group_key=None))
    lines = t.strip().splitlines()
    assert lines[0] == "| Metric | overall | CUP | DISC |"
    assert "| DSC (%) | 96.5 ± 0.5 | 96.0 ± 0.0 | 97.0 ± 0.0 |" in lines
    assert "| RVD (%) | -3.0 ± 1.0 | -2.0 ± 0.0 | -4.0 ± 0.0 |" in lines
    assert "| HD (mm) | 7.0 ± 1.0 | 6.0 ± 0.0 | 8.0 ± 0.0 |" in lines
    assert "| ABD (mm) | 1.1 ± 0.1 | 1.0 ± 0.0 | 1.2 ± 0.0 |" in lines
    assert "| BF@1px (%) | 85.0 ± 5.0 | 90.0 ± 0.0 | 80.0 ± 0.0 |" in lines
    t2 = M.format_table(
        M.summarize([{k: v for k, v in r.items() if k != "class"} for r in recs]),
        metrics=["dsc", "hd"],
        distance_unit="px",
        decimals=2,
    )
    assert t2.strip().splitlines() == [
        "| Metric | mean ± std |",
        "|---|:---:|",
        "| DSC (%) | 96.50 ± 0.50 |",
        "| HD (px) | 7.00 ± 1.00 |",
    ]


# --------------------------------------------------------------------------
# edge strength at a contour
# --------------------------------------------------------------------------
def test_edge_strength_is_the_slope_on_a_ramp_and_peaks_on_a_step():
    yy, xx = np.mgrid[:40, :50].astype(np.float64)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 12:35] = True
    # a linear ramp: the gradient magnitude is its slope wherever the kernel fits
    ramp = 3.0 * xx + 4.0 * yy
    assert M.edge_strength(ramp, mask) == pytest.approx(5.0, rel=0.03)
    # a vertical step at column 25: the mask whose right side is the step scores
    # highest; the same mask moved 3 px off the step scores far lower
    step = np.where(xx >= 25, 100.0, 0.0)
    on = np.zeros_like(mask)
    on[5:35, 10:25] = True
    off = np.roll(on, -3, axis=1)
    assert M.edge_strength(step, on) > 3 * M.edge_strength(step, off)
    assert math.isnan(M.edge_strength(step, np.zeros_like(mask)))
    with pytest.raises(ValueError, match="same"):
        M.edge_strength(step[:, :-1], on)


def test_edge_strength_averages_both_sides_of_the_boundary():
    rng = np.random.default_rng(0)
    img = rng.random((30, 30)) * 255
    mask = np.zeros((30, 30), bool)
    mask[3:20, 0:17] = True  # touching the image border
    mask[8:12, 6:10] = False  # a hole: its rim is boundary too
    cross = ndimage.generate_binary_structure(2, 1)
    inner = mask & ~ndimage.binary_erosion(mask, cross, border_value=0)
    outer = ndimage.binary_dilation(mask, cross) & ~mask
    grad = ndimage.gaussian_gradient_magnitude(img, 0.7)
    assert M.edge_strength(img, mask) == pytest.approx(grad[inner | outer].mean(), rel=1e-12)


def test_volume_overlap_counts_voxels_over_all_slices():
    rng = np.random.default_rng(3)
    p, g = rng.random((2, 5, 9, 7)) < 0.4
    inter, ps, gs = (p & g).sum(), p.sum(), g.sum()
    got = M.volume_overlap(p, g)
    assert got["dsc"] == pytest.approx(2 * inter / (ps + gs))
    assert got["iou"] == pytest.approx(inter / (p | g).sum())
    assert got["rvd"] == pytest.approx(100 * (ps - gs) / gs)
    assert M.volume_overlap(p[0], g[0])["dsc"] == pytest.approx(M.dice(p[0], g[0]))
    with pytest.raises(ValueError, match="one shape"):
        M.volume_overlap(p, g[:4])
    with pytest.raises(ValueError, match="one shape"):
        M.volume_overlap(p[None], g[None])
