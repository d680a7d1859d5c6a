"""Tests for dlset_jax.guidance against independent numpy computations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlset_jax import config as config_lib
from dlset_jax import guidance as G

H, W = 24, 32


# ------------------------------------------------------------------ heatmap
def np_heatmap(points, h, w, sigma, fwhm=True):
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    m = np.zeros((h, w))
    for x, y in points:
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        g = np.exp(-4 * math.log(2) * r2 / sigma**2) if fwhm else np.exp(-r2 / (2 * sigma**2))
        m = np.maximum(m, g)
    return 255 * (m - m.min()) / (m.max() - m.min() + 1e-10)


POINTS = np.array([[3.0, 12.0], [28.0, 10.0], [15.0, 2.0], [17.0, 21.0]], np.float32)


@pytest.mark.parametrize("fwhm", [True, False])
def test_heatmap_matches_numpy_and_peaks_at_points(fwhm):
    hm = np.asarray(G.gaussian_heatmap(POINTS, H, W, sigma=6.0, fwhm=fwhm))
    assert hm.shape == (H, W) and hm.dtype == np.float32
    np.testing.assert_allclose(hm, np_heatmap(POINTS, H, W, 6.0, fwhm), atol=1e-3)
    xi, yi = POINTS[:, 0].astype(int), POINTS[:, 1].astype(int)
    np.testing.assert_allclose(hm[yi, xi], 255.0, rtol=1e-6)
    assert hm.min() >= 0 and hm.max() <= 255.0 + 1e-4


def test_heatmap_sigma_meaning():
    p = np.array([[10.0, 10.0]] * 4, np.float32)
    big_h, big_w = 40, 80  # min of the map ~0
    hm = np.asarray(G.gaussian_heatmap(p, big_h, big_w, sigma=10.0, fwhm=True))
    np.testing.assert_allclose(hm[10, 15], 127.5, rtol=1e-4)  # half max at FWHM / 2
    hm = np.asarray(G.gaussian_heatmap(p, big_h, big_w, sigma=10.0, fwhm=False))
    np.testing.assert_allclose(hm[10, 20], 255 * math.exp(-0.5), rtol=1e-4)


# ------------------------------------------------------------------ confidence map
def np_segment_distance_dense(h, w, a, b, n=4001):
    """Independent: minimum distance to densely sampled points of the segment."""
    t = np.linspace(0.0, 1.0, n)
    sx = a[0] + t * (b[0] - a[0])
    sy = a[1] + t * (b[1] - a[1])
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    d2 = (xx[..., None] - sx) ** 2 + (yy[..., None] - sy) ** 2
    return np.sqrt(d2.min(-1))


def np_cm(points, h, w, variant):
    p = np.asarray(points, np.float64)
    ds = []
    for a, b in ((p[0], p[1]), (p[2], p[3])):
        sig = max(0.5 * np.hypot(*(b - a)), 0.5)
        ds.append(np_segment_distance_dense(h, w, a, b) / sig)
    d1 = np.minimum(*ds)
    if variant == "paper":
        return 1 / (1 + d1 + np.hypot(*ds))
    return 1 / (1 + d1 * (np.abs(ds[0]) + np.abs(ds[1])))


@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_confidence_map_matches_bruteforce(variant):
    pts = POINTS + np.array([0.3, -0.2], np.float32)  # fractional points too
    cm = np.asarray(G.confidence_map(pts, H, W, variant=variant))
    assert cm.shape == (H, W) and cm.dtype == np.float32
    np.testing.assert_allclose(cm, np_cm(pts, H, W, variant), rtol=2e-3, atol=1e-4)
    assert (cm > 0).all() and (cm <= 1.0).all()


def test_confidence_map_values_on_segments():
    # axis-aligned cross: s1 is row 10 from x=4..24, s2 is column 14 from y=2..20
    pts = np.array([[4, 10], [24, 10], [14, 2], [14, 20]], np.float32)
    paper = np.asarray(G.confidence_map(pts, H, W, "paper"))
    authors = np.asarray(G.confidence_map(pts, H, W, "authors"))
    assert paper[10, 14] == pytest.approx(1.0, abs=1e-6)  # intersection
    np.testing.assert_allclose(authors[10, 4:25], 1.0, atol=1e-6)  # d1 = 0 on s1
    np.testing.assert_allclose(authors[2:21, 14], 1.0, atol=1e-6)
    # paper on s1 at x=20: d_s1 = 0, d_s2 = 6 / 9 -> 1 / (1 + 0 + 2/3)
    assert paper[10, 20] == pytest.approx(1 / (1 + 6 / 9), rel=1e-5)
    # beyond the end of s1 the distance is to the end point: (x=27, y=10) -> 3 px
    sig1, sig2 = 10.0, 9.0
    d1s, d2s = 3 / sig1, math.hypot(13, 0) / sig2
    assert paper[10, 27] == pytest.approx(1 / (1 + min(d1s, d2s) + math.hypot(d1s, d2s)), rel=1e-5)


# ------------------------------------------------------------------ guidance channel
# The paper's guidance (data.guidance, data.sigma, data.cm_variant of the schema).
PAPER = config_lib.base_config().data
SIGMA = float(PAPER.sigma)


def test_paper_values_are_the_documented_ones():
    # docs/method.md: DEXTR heatmap with sigma 10 px, plus the CM of eq. 3
    assert (PAPER.guidance, SIGMA, PAPER.cm_variant) == ("heatmap+cm", 10.0, "paper")


@pytest.mark.parametrize(
    "mode,variant", [("heatmap", "paper"), ("heatmap+cm", "paper"), ("heatmap+cm", "authors")]
)
def test_guidance_channel_matches_independent_formula(mode, variant):
    """heatmap in [0, 255] (+ 255 * CM) in ONE channel, from the plain numpy formulas."""
    pts = np.array([[3.0, 30.0], [60.0, 25.5], [31.0, 2.0], [28.0, 61.0]], np.float32)
    for p in (pts, pts[[0, 0, 2, 3]], pts + 0.37):  # also a zero-length s1, fractional points
        g = np.asarray(G.guidance_channel(p, 64, 64, mode, SIGMA, variant))
        assert g.shape == (64, 64, 1) and g.dtype == np.float32
        want = np_heatmap(p, 64, 64, SIGMA)
        if mode == "heatmap+cm":
            want = want + 255.0 * np_cm(p, 64, 64, variant)
        np.testing.assert_allclose(g[..., 0], want, rtol=2e-3, atol=2e-2)
        assert g.max() <= (255.0 if mode == "heatmap" else 510.0) + 1e-3


def test_guidance_channel_modes():
    hm = np_heatmap(POINTS, H, W, SIGMA)
    g0 = np.asarray(G.guidance_channel(POINTS, H, W, "heatmap", SIGMA, "paper"))
    g1 = np.asarray(G.guidance_channel(POINTS, H, W, "heatmap+cm", SIGMA, "authors"))
    g2 = np.asarray(G.guidance_channel(POINTS, H, W, "heatmap+cm", SIGMA, "paper"))
    assert g0.shape == (H, W, 1) and g1.shape == (H, W, 1) and g1.dtype == np.float32
    # "heatmap" ignores the CM variant; the CM adds 255 * CM, each variant its own
    np.testing.assert_allclose(g0[..., 0], hm, atol=1e-3)
    np.testing.assert_array_equal(g0, G.guidance_channel(POINTS, H, W, "heatmap", SIGMA, "authors"))
    np.testing.assert_allclose(g1[..., 0] - hm, 255 * np_cm(POINTS, H, W, "authors"), atol=0.1)
    np.testing.assert_allclose(g2[..., 0] - hm, 255 * np_cm(POINTS, H, W, "paper"), atol=0.1)
    assert not np.allclose(g1, g2, atol=1.0)
    # fwhm=False reads sigma as a standard deviation
    g3 = np.asarray(G.guidance_channel(POINTS, H, W, "heatmap", SIGMA, "paper", fwhm=False))
    np.testing.assert_allclose(g3[..., 0], np_heatmap(POINTS, H, W, SIGMA, fwhm=False), atol=1e-3)
    assert g0.max() <= 255.0 + 1e-3 and g1.max() <= 510.0 + 1e-3


def test_batched_vmap_jit_equal_loop(rng):
    pts = rng.uniform(-5, 35, size=(3, 2, 4, 2)).astype(np.float32)
    f = lambda p: G.guidance_channel(p, H, W, "heatmap+cm", 8.0, "paper")
    jf = jax.jit(f)
    # jit == eager
    np.testing.assert_allclose(jf(pts[0, 0]), f(pts[0, 0]), rtol=1e-5, atol=1e-4)
    loop = np.stack([np.stack([jf(q) for q in row]) for row in pts])
    batched = np.asarray(jf(pts))  # leading batch dims broadcast
    assert batched.shape == (3, 2, H, W, 1)
    np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-4)
    vm = np.asarray(jax.jit(jax.vmap(jax.vmap(f)))(pts))
    np.testing.assert_allclose(vm, loop, rtol=1e-5, atol=1e-4)
    # and each one is the independent formula
    want = np_heatmap(pts[1, 0], H, W, 8.0) + 255 * np_cm(pts[1, 0], H, W, "paper")
    np.testing.assert_allclose(batched[1, 0, ..., 0], want, rtol=2e-3, atol=2e-2)


_VALUE_AND_GRAD = {
    v: jax.jit(
        jax.value_and_grad(
            lambda p, v=v: jnp.sum(G.guidance_channel(p, H, W, "heatmap+cm", SIGMA, v))
        )
    )
    for v in G.CM_VARIANTS
}


@pytest.mark.parametrize(
    "pts",
    [
        np.full((4, 2), 7.0, np.float32),  # degenerate: all four equal
        np.array([[-40, 5], [-10, 5], [-20, -30], [-20, -3]], np.float32),  # outside
        np.array([[5, 200], [9, 200], [7, 200], [7, 200]], np.float32),  # far, partly degenerate
        np.array([[3, 12], [28, 12], [15, 12], [15, 12]], np.float32),  # s2 zero length on s1
    ],
)
@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_no_nan_inf_values_or_gradients(pts, variant):
    val = np.asarray(G.guidance_channel(pts, H, W, "heatmap+cm", SIGMA, variant))
    assert np.isfinite(val).all()
    total, grad = _VALUE_AND_GRAD[variant](jnp.asarray(pts))
    assert np.isfinite(float(total)) and np.isfinite(np.asarray(grad)).all()
    cm = np.asarray(G.confidence_map(pts, H, W, variant))
    assert (cm > 0).all() and (cm <= 1).all()


def test_guidance_errors():
    with pytest.raises(ValueError, match="unknown mode"):
        G.guidance_channel(POINTS, H, W, "cm", SIGMA, "paper")
    with pytest.raises(ValueError, match="unknown variant"):
        G.guidance_channel(POINTS, H, W, "heatmap+cm", SIGMA, "khan")
    with pytest.raises(ValueError, match="unknown variant"):
        G.confidence_map(POINTS, H, W, variant="khan")
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        G.gaussian_heatmap(POINTS[:3], H, W, SIGMA)
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        G.confidence_map(np.zeros((4, 3)), H, W, "paper")
    with pytest.raises(ValueError, match="height"):
        G.gaussian_heatmap(POINTS, 0, W, SIGMA)
    with pytest.raises(ValueError, match="width"):
        G.guidance_channel(POINTS, H, 2.5, "heatmap", SIGMA, "paper")
    with pytest.raises(ValueError, match="sigma"):
        G.gaussian_heatmap(POINTS, H, W, sigma=0.0)
    with pytest.raises(ValueError, match="sigma"):
        G.guidance_channel(POINTS, H, W, "heatmap", float("inf"), "paper")
    for fn in (G.gaussian_heatmap, G.confidence_map, G.guidance_channel):  # no defaults
        with pytest.raises(TypeError):
            fn(POINTS, H, W)
