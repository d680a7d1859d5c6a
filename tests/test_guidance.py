"""Tests for dlset_jax.guidance against independent numpy computations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlset_jax import guidance as G

H, W = 24, 32


def random_mask(rng, h=H, w=W):
    """A random blob: union of a few rectangles and discs (plus noise)."""
    m = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        r = rng.integers(2, 8)
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    m |= rng.random((h, w)) < 0.02
    return m


def np_extreme_points(m):
    """Reference: first pixel in scan order among ties."""
    ys, xs = np.nonzero(m)
    out = []
    for sel in (xs == xs.min(), xs == xs.max()):
        out.append((xs[sel][0], ys[sel].min()))
    for sel in (ys == ys.min(), ys == ys.max()):
        out.append((xs[sel].min(), ys[sel][0]))
    return np.array(out, np.float32)


# ------------------------------------------------------------------ extreme points
def test_extreme_points_match_numpy(rng):
    for _ in range(10):
        m = random_mask(rng)
        got = np.asarray(G.extreme_points(m))
        assert got.dtype == np.float32 and got.shape == (4, 2)
        np.testing.assert_array_equal(got, np_extreme_points(m))
    # int and float masks are read as the same foreground
    m = random_mask(rng)
    np.testing.assert_array_equal(G.extreme_points(m.astype(np.uint8)), np_extreme_points(m))
    np.testing.assert_array_equal(
        G.extreme_points(m.astype(np.float32) * 0.9), np_extreme_points(m)
    )


def test_extreme_points_random_ties_are_valid_and_vary():
    m = np.zeros((H, W), bool)
    m[4:15, 6:20] = True  # every side is a tie of many pixels
    seen = set()
    for i in range(8):
        p = np.asarray(G.extreme_points(m, jax.random.key(i)))
        x, y = p[:, 0].astype(int), p[:, 1].astype(int)
        assert m[y, x].all()
        assert x[0] == 6 and x[1] == 19 and y[2] == 4 and y[3] == 14
        seen.add(tuple(p.ravel()))
    assert len(seen) > 1
    np.testing.assert_array_equal(
        G.extreme_points(m, jax.random.key(3)), G.extreme_points(m, jax.random.key(3))
    )


def test_extreme_points_jitter_bounded_clipped_deterministic():
    m = np.zeros((H, W), bool)
    m[0:10, 25:32] = True  # touches the top and right borders: clipping matters
    pert = 4
    clipped_somewhere = False
    for i in range(20):
        key = jax.random.key(i)
        base = np.asarray(G.extreme_points(m, key, 0))
        jit = np.asarray(G.extreme_points(m, key, pert))
        np.testing.assert_array_equal(jit, np.round(jit))  # integer shifts
        assert np.abs(jit - base).max() <= pert
        assert (jit[:, 0] >= 0).all() and (jit[:, 0] <= W - 1).all()
        assert (jit[:, 1] >= 0).all() and (jit[:, 1] <= H - 1).all()
        clipped_somewhere |= bool((jit[:, 1] == 0).any() or (jit[:, 0] == W - 1).any())
        np.testing.assert_array_equal(jit, G.extreme_points(m, key, pert))
    assert clipped_somewhere


def test_extreme_points_jit_and_vmap(rng):
    masks = np.stack([random_mask(rng) for _ in range(4)])
    keys = jax.random.split(jax.random.key(0), 4)
    # jit == eager (pert traced under jit)
    np.testing.assert_array_equal(jax.jit(G.extreme_points)(masks[0]), G.extreme_points(masks[0]))
    f = jax.jit(G.extreme_points)
    loop = np.stack([f(m, k, 3) for m, k in zip(masks, keys)])
    np.testing.assert_array_equal(loop[1], G.extreme_points(masks[1], keys[1], 3))
    # vmap == python loop
    batched = jax.jit(jax.vmap(G.extreme_points, in_axes=(0, 0, None)))(masks, keys, 3)
    np.testing.assert_array_equal(batched, loop)
    # an empty mask cannot be detected under tracing: defined result, no error
    np.testing.assert_array_equal(jax.jit(G.extreme_points)(np.zeros((H, W), bool)), 0.0)


def test_extreme_points_errors():
    with pytest.raises(ValueError, match="empty mask"):
        G.extreme_points(np.zeros((H, W), bool))
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        G.extreme_points(np.ones((2, 3, 4), bool))
    with pytest.raises(ValueError, match="pert"):
        G.extreme_points(np.ones((H, W), bool), pert=2)  # no key
    with pytest.raises(ValueError, match="pert"):
        G.extreme_points(np.ones((H, W), bool), jax.random.key(0), pert=-1)


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
def test_guidance_channel_modes():
    hm = G.gaussian_heatmap(POINTS, H, W, sigma=10.0)
    cm = G.confidence_map(POINTS, H, W, "authors")
    g0 = np.asarray(G.guidance_channel(POINTS, H, W, mode="heatmap"))
    g1 = np.asarray(G.guidance_channel(POINTS, H, W, mode="heatmap+cm", cm_variant="authors"))
    assert g0.shape == (H, W, 1) and g1.shape == (H, W, 1) and g1.dtype == np.float32
    np.testing.assert_allclose(g0[..., 0], hm, rtol=1e-6)
    np.testing.assert_allclose(g1[..., 0], np.asarray(hm) + 255 * np.asarray(cm), rtol=1e-5)
    assert g0.max() <= 255.0 + 1e-3 and g1.max() <= 510.0 + 1e-3


def test_batched_vmap_jit_equal_loop(rng):
    pts = rng.uniform(-5, 35, size=(3, 2, 4, 2)).astype(np.float32)
    f = lambda p: G.guidance_channel(p, H, W, mode="heatmap+cm", sigma=8.0)
    jf = jax.jit(f)
    # jit == eager
    np.testing.assert_allclose(jf(pts[0, 0]), f(pts[0, 0]), rtol=1e-5, atol=1e-4)
    loop = np.stack([np.stack([jf(q) for q in row]) for row in pts])
    batched = np.asarray(jf(pts))  # leading batch dims broadcast
    assert batched.shape == (3, 2, H, W, 1)
    np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-4)
    vm = np.asarray(jax.jit(jax.vmap(jax.vmap(f)))(pts))
    np.testing.assert_allclose(vm, loop, rtol=1e-5, atol=1e-4)


_VALUE_AND_GRAD = {
    v: jax.jit(
        jax.value_and_grad(
            lambda p, v=v: jnp.sum(G.guidance_channel(p, H, W, "heatmap+cm", cm_variant=v))
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
    val = np.asarray(G.guidance_channel(pts, H, W, "heatmap+cm", cm_variant=variant))
    assert np.isfinite(val).all()
    total, grad = _VALUE_AND_GRAD[variant](jnp.asarray(pts))
    assert np.isfinite(float(total)) and np.isfinite(np.asarray(grad)).all()
    cm = np.asarray(G.confidence_map(pts, H, W, variant))
    assert (cm > 0).all() and (cm <= 1).all()


def test_guidance_errors():
    with pytest.raises(ValueError, match="unknown mode"):
        G.guidance_channel(POINTS, H, W, mode="cm")
    with pytest.raises(ValueError, match="unknown variant"):
        G.confidence_map(POINTS, H, W, variant="khan")
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        G.gaussian_heatmap(POINTS[:3], H, W)
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        G.confidence_map(np.zeros((4, 3)), H, W)
    with pytest.raises(ValueError, match="height"):
        G.gaussian_heatmap(POINTS, 0, W)
    with pytest.raises(ValueError, match="sigma"):
        G.gaussian_heatmap(POINTS, H, W, sigma=0.0)
