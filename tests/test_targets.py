"""Tests for dlset_jax.targets against independent numpy computations."""

import numpy as np
import pytest
from conftest import brute_contour
from scipy import ndimage

from dlset_jax import config as config_lib
from dlset_jax import targets as T

DT_MAX = float(config_lib.base_config().data.dt_max)


def disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


# ------------------------------------------------------------------ SDT
def test_contour_matches_bruteforce(rng):
    for _ in range(5):
        m = ndimage.binary_opening(rng.random((20, 24)) < 0.6)
        m[0, 3] = True  # touches the frame
        np.testing.assert_array_equal(T.contour(m), brute_contour(m))
    ring = disc(30, 30, 15, 15, 10) & ~disc(30, 30, 15, 15, 4)  # hole border included
    c = T.contour(ring)
    np.testing.assert_array_equal(c, brute_contour(ring))
    assert c[15, 15 + 5] and c[15, 15 + 10]


def test_sdt_of_disc_vs_analytic():
    h = w = 72
    cy, cx, r = 35.3, 36.6, 20.0
    m = disc(h, w, cy, cx, r)
    sdt, dt = T.signed_distance(m, dt_max=100.0)
    assert sdt.shape == dt.shape == (h, w) and sdt.dtype == dt.dtype == np.float32
    yy, xx = np.mgrid[:h, :w]
    analytic = np.abs(np.hypot(yy - cy, xx - cx) - r)
    assert np.abs(dt - analytic).max() <= 1.0
    signed = np.where(m, -analytic, analytic)
    assert np.abs(sdt - signed).max() <= 1.0


def test_sdt_sign_and_truncation():
    m = disc(50, 60, 25, 30, 15)
    sdt, dt = T.signed_distance(m, dt_max=5.0)
    c = T.contour(m)
    assert (dt[c] == 0).all() and (sdt[c] == 0).all()
    assert (sdt[m & ~c] < 0).all() and (sdt[~m] > 0).all()
    np.testing.assert_array_equal(np.abs(sdt), np.minimum(dt, 5.0))
    assert sdt.min() == -5.0 and sdt.max() == 5.0 and dt.max() > 5.0
    # dt is the Euclidean distance to the nearest contour pixel
    cy, cx = np.nonzero(c)
    for y, x in [(0, 0), (25, 30), (49, 59), (10, 30)]:
        assert dt[y, x] == pytest.approx(np.hypot(cy - y, cx - x).min(), abs=1e-4)
    # int / float masks give the same result; truncation at the schema's dt_max (30)
    np.testing.assert_array_equal(T.signed_distance(m.astype(np.uint8), 5.0)[0], sdt)
    np.testing.assert_array_equal(T.signed_distance(m * 0.8, 5.0)[0], sdt)
    assert DT_MAX == 30.0
    assert T.signed_distance(disc(100, 100, 50, 50, 45), DT_MAX)[0].min() == -30.0
    with pytest.raises(TypeError):
        T.signed_distance(m)  # no default: the config's data.dt_max is its one home


def test_sdt_full_mask_uses_image_frame():
    sdt, dt = T.signed_distance(np.ones((9, 11), bool), DT_MAX)
    assert dt[0].max() == 0 and dt[:, -1].max() == 0
    assert dt[4, 5] == 4.0 and sdt[4, 5] == -4.0


def test_direction_field_matches_np_gradient(rng):
    dt = rng.random((13, 17)) * 10
    f = T.direction_field(dt)
    assert f.shape == (13, 17, 2) and f.dtype == np.float32
    gy, gx = np.gradient(dt)
    np.testing.assert_allclose(f[..., 0], gy, rtol=1e-6)
    np.testing.assert_allclose(f[..., 1], gx, rtol=1e-6)
    yy, xx = np.mgrid[:6, :7].astype(float)
    f = T.direction_field(3 * xx - 2 * yy)  # channel 0 = y, channel 1 = x
    np.testing.assert_allclose(f[..., 0], -2.0)
    np.testing.assert_allclose(f[..., 1], 3.0)


def test_sdt_and_direction_errors():
    with pytest.raises(ValueError, match="empty mask"):
        T.signed_distance(np.zeros((5, 5), bool), DT_MAX)
    with pytest.raises(ValueError, match=r"\(5, 5, 1\)"):
        T.signed_distance(np.ones((5, 5, 1), bool), DT_MAX)
    with pytest.raises(ValueError, match="dt_max"):
        T.signed_distance(np.ones((5, 5), bool), dt_max=0.0)
    with pytest.raises(ValueError, match="dtype"):
        T.signed_distance(np.full((5, 5), "a"), DT_MAX)
    with pytest.raises(ValueError, match=r"\(2, 5, 5\)"):
        T.direction_field(np.zeros((2, 5, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        T.direction_field(np.zeros((1, 5)))


# ------------------------------------------------------------------ crop geometry
PTS = np.array([[12, 30], [50, 28], [33, 15], [30, 44]], np.float32)  # (x, y) l, r, t, b


def test_crop_box():
    box = T.crop_box(PTS, (60, 80), relax=10)
    assert box.dtype == np.int64 and box.tolist() == [5, 2, 55, 61]
    assert T.crop_box(PTS, (60, 80, 3), relax=0).tolist() == [15, 12, 45, 51]
    # may leave the image
    edge = np.array([[0, 5], [9, 5], [4, 0], [4, 9]], np.float32)
    assert T.crop_box(edge, (10, 10), relax=3).tolist() == [-3, -3, 13, 13]
    # fractional points are widened to whole pixels
    assert T.crop_box(PTS + 0.5, (60, 80), relax=0).tolist() == [15, 12, 46, 52]


def test_crop_box_errors():
    bad = PTS.copy()
    bad[2] = [81.0, -1.0]
    with pytest.raises(ValueError, match=r"#2=\(x=81, y=-1\)"):
        T.crop_box(bad, (60, 80), relax=10)
    with pytest.raises(ValueError, match="outside"):
        T.validate_points([[80, 0]], (60, 80))  # x = W is outside
    T.validate_points([[79, 59], [0, 0]], (60, 80))  # corners are inside
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        T.crop_box(np.zeros((4, 3)), (60, 80), relax=10)
    with pytest.raises(ValueError, match="finite"):
        T.crop_box(np.full((4, 2), np.nan), (60, 80), relax=10)
    with pytest.raises(ValueError, match="relax"):
        T.crop_box(PTS, (60, 80), relax=-1)
    with pytest.raises(ValueError, match="image_shape"):
        T.crop_box(PTS, (60,), relax=10)


def test_crop_identity_and_zero_padding(rng):
    img = rng.random((20, 20)).astype(np.float32)
    np.testing.assert_allclose(T.crop_and_resize(img, np.array([0, 0, 20, 20]), 20), img, atol=1e-6)
    ones = np.ones((10, 10), np.float32)
    crop = T.crop_and_resize(ones, np.array([-5, -5, 15, 15]), 20)
    assert crop.shape == (20, 20) and crop.dtype == np.float32
    np.testing.assert_array_equal(crop[5:15, 5:15], 1.0)
    crop[5:15, 5:15] = 0
    np.testing.assert_array_equal(crop, 0.0)
    # nearest keeps a mask binary; bool input accepted
    m = rng.random((30, 40)) < 0.5
    mc = T.crop_and_resize(m, np.array([-4, 3, 27, 45]), 17, order=0)
    assert set(np.unique(mc)) <= {0.0, 1.0}


def test_crop_multichannel_equals_per_channel(rng):
    img = rng.random((30, 40, 3))
    box = np.array([-3, 5, 25, 44])
    c = T.crop_and_resize(img, box, 16)
    assert c.shape == (16, 16, 3) and c.dtype == np.float32
    for k in range(3):
        np.testing.assert_allclose(c[..., k], T.crop_and_resize(img[..., k], box, 16), rtol=1e-6)


@pytest.mark.parametrize("res", [16, 64])
def test_points_to_crop_hits_the_right_crop_pixels(res):
    h, w = 60, 80
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    box = T.crop_box(PTS, (h, w), relax=10)
    cx_img = T.crop_and_resize(xx, box, res)  # crop pixel -> image x it samples
    cy_img = T.crop_and_resize(yy, box, res)
    cp = T.points_to_crop(PTS, box, res)
    assert cp.shape == (4, 2) and cp.dtype == np.float32
    # reading the coordinate crops at the mapped points gives the image points back
    back_x = ndimage.map_coordinates(cx_img, [cp[:, 1], cp[:, 0]], order=1)
    back_y = ndimage.map_coordinates(cy_img, [cp[:, 1], cp[:, 0]], order=1)
    np.testing.assert_allclose(back_x, PTS[:, 0], atol=1e-3)
    np.testing.assert_allclose(back_y, PTS[:, 1], atol=1e-3)
    # a bright pixel at each point lands on the rounded crop point
    for p, c in zip(PTS, cp):
        spot = np.zeros((h, w), np.float32)
        spot[int(p[1]) - 2 : int(p[1]) + 3, int(p[0]) - 2 : int(p[0]) + 3] = 1.0
        spot = ndimage.gaussian_filter(spot, 3.0)
        crop = T.crop_and_resize(spot, box, res)
        iy, ix = np.unravel_index(np.argmax(crop), crop.shape)
        assert abs(ix - c[0]) <= 1.0 and abs(iy - c[1]) <= 1.0


def test_points_to_crop_closed_form():
    box = np.array([10, 20, 110, 70])  # h = 100, w = 50
    cp = T.points_to_crop(np.array([[20.0, 10.0], [69.0, 109.0]]), box, 200)
    np.testing.assert_allclose(cp, [[1.5, 0.5], [197.5, 198.5]], atol=1e-5)


def smooth(h, w):
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    return (10 * np.sin(xx / 9.0) + 8 * np.cos(yy / 7.0)).astype(np.float32)


@pytest.mark.parametrize("res", [24, 50, 128])
def test_crop_paste_back_round_trip(res):
    h, w = 60, 80
    f = smooth(h, w)
    box = T.crop_box(PTS, (h, w), relax=5)
    y0, x0, y1, x1 = box
    back = T.paste_back(T.crop_and_resize(f, box, res), box, (h, w), background=20.0)
    assert back.shape == (h, w) and back.dtype == np.float32
    inside = np.zeros((h, w), bool)
    inside[y0:y1, x0:x1] = True
    assert (back[~inside] == 20.0).all()
    # interpolation error of a smooth field (second derivative <= 0.3 / px^2)
    err = np.abs(back - f)[y0:y1, x0:x1]
    assert err.max() < (1.2 if res < 40 else 0.1)
    # when downsampling, the outermost half crop pixel is extrapolated (edge
    # replicated): the error there is ~ gradient * step / 2; inside it is small
    m = int(np.ceil(max(y1 - y0, x1 - x0) / res))
    assert err[m:-m, m:-m].max() < (0.2 if res < 40 else 0.1)


def test_paste_back_exact_when_sizes_match_and_clips_to_image(rng):
    h, w = 30, 40
    img = rng.random((h, w)).astype(np.float32)
    box = np.array([-6, 10, 14, 30])  # 20 x 20, leaves the top of the image
    crop = T.crop_and_resize(img, box, 20)
    np.testing.assert_array_equal(crop[:6], 0.0)  # zero padding
    back = T.paste_back(crop, box, (h, w, 3), background=-1.0)
    np.testing.assert_allclose(back[0:14, 10:30], img[0:14, 10:30], atol=1e-6)
    back[0:14, 10:30] = -1.0
    np.testing.assert_array_equal(back, -1.0)
    # a box entirely outside gives pure background
    outside = T.paste_back(crop, np.array([40, 50, 60, 70]), (h, w), background=20.0)
    np.testing.assert_array_equal(outside, 20.0)
    # nearest mode for masks
    m = (rng.random((8, 8)) < 0.5).astype(np.float32)
    near = T.paste_back(m, np.array([0, 0, 20, 20]), (h, w), background=20.0, order=0)
    assert set(np.unique(near)) == {0.0, 1.0, 20.0}


def test_crop_and_paste_errors():
    img = np.zeros((10, 10), np.float32)
    box = np.array([0, 0, 5, 5])
    with pytest.raises(ValueError, match=r"\(1, 10, 10, 1\)"):
        T.crop_and_resize(img[None, ..., None], box, 8)
    with pytest.raises(ValueError, match="empty"):
        T.crop_and_resize(img, np.array([3, 0, 3, 5]), 8)
    with pytest.raises(ValueError, match="box"):
        T.crop_and_resize(img, np.array([0.0, 0.0, 5.0, 5.0]), 8)
    with pytest.raises(ValueError, match="box"):
        T.crop_and_resize(img, np.array([0, 0, 5]), 8)
    with pytest.raises(ValueError, match="resolution"):
        T.crop_and_resize(img, box, 0)
    with pytest.raises(ValueError, match="order"):
        T.crop_and_resize(img, box, 8, order=3)
    with pytest.raises(ValueError, match="dtype"):
        T.crop_and_resize(np.full((4, 4), "a"), box, 8)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        T.points_to_crop(np.zeros(4), box, 8)
    with pytest.raises(ValueError, match=r"\(2, 8, 8\)"):
        T.paste_back(np.zeros((2, 8, 8)), box, (10, 10), background=20.0)
    with pytest.raises(ValueError, match="image_shape"):
        T.paste_back(np.zeros((8, 8)), box, (10, 0), background=20.0)
    with pytest.raises(ValueError, match="order"):
        T.paste_back(np.zeros((8, 8)), box, (10, 10), background=20.0, order=2)
    with pytest.raises(ValueError, match="background"):
        T.paste_back(np.zeros((8, 8)), box, (10, 10), background=np.nan)


# ------------------------------------------------------------------ simulated clicks
def random_mask(rng, h=24, w=32):
    """A random blob: union of a few discs, plus noise pixels."""
    m = np.zeros((h, w), bool)
    for _ in range(rng.integers(1, 4)):
        m |= disc(h, w, rng.integers(0, h), rng.integers(0, w), rng.integers(2, 8))
    m |= rng.random((h, w)) < 0.02
    return m


def brute_extreme_points(m):
    """Loop reference: left = smallest column, at its smallest row; right = largest
    column, smallest row; top = smallest row, smallest column; bottom likewise."""
    h, w = m.shape
    fg = [(x, y) for y in range(h) for x in range(w) if m[y, x]]
    left = min(fg, key=lambda p: (p[0], p[1]))
    right = min(fg, key=lambda p: (-p[0], p[1]))
    top = min(fg, key=lambda p: (p[1], p[0]))
    bottom = min(fg, key=lambda p: (-p[1], p[0]))
    return np.array([left, right, top, bottom], np.float32)


def test_extreme_points_match_bruteforce(rng):
    for _ in range(10):
        m = random_mask(rng)
        got = T.extreme_points(m)
        assert got.dtype == np.float32 and got.shape == (4, 2)
        np.testing.assert_array_equal(got, brute_extreme_points(m))
    # int and float masks are read as the same foreground
    m = random_mask(rng)
    np.testing.assert_array_equal(T.extreme_points(m.astype(np.uint8)), brute_extreme_points(m))
    np.testing.assert_array_equal(
        T.extreme_points(m.astype(np.float32) * 0.9), brute_extreme_points(m)
    )
    # a single pixel: all four points on it
    one = np.zeros((5, 6), bool)
    one[3, 1] = True
    np.testing.assert_array_equal(T.extreme_points(one), [[1, 3]] * 4)


def test_extreme_points_random_ties_are_valid_vary_and_deterministic():
    m = np.zeros((24, 32), bool)
    m[4:15, 6:20] = True  # every side is a tie of many pixels
    m[4, 6:9] = False  # the top row's and left column's candidates are not contiguous to 0
    seen = [set() for _ in range(4)]
    for i in range(200):
        p = T.extreme_points(m, np.random.default_rng(i))
        x, y = p[:, 0].astype(int), p[:, 1].astype(int)
        np.testing.assert_array_equal(p, np.round(p))
        assert m[y, x].all()
        assert x[0] == 6 and x[1] == 19 and y[2] == 4 and y[3] == 14
        for k, free in enumerate((y[0], y[1], x[2], x[3])):
            seen[k].add(int(free))
        # same seed, same clicks
        np.testing.assert_array_equal(p, T.extreme_points(m, np.random.default_rng(i)))
    # uniform among the candidates: in 200 draws every candidate of each tie turns up
    assert seen[0] == set(range(5, 15)) and seen[1] == set(range(4, 15))
    assert seen[2] == set(range(9, 20)) and seen[3] == set(range(6, 20))


def test_extreme_points_tie_rules_pick_the_first_middle_or_last_candidate():
    m = np.zeros((24, 32), bool)
    m[4:15, 6:20] = True
    m[4, 6:9] = False  # left column: rows 5..14; top row: columns 9..19
    # candidates in index order: left rows 5..14, right rows 4..14, top columns 9..19,
    # bottom columns 6..19; first, middle (n // 2) and last of each
    want = {
        "first": [[6, 5], [19, 4], [9, 4], [6, 14]],
        "middle": [[6, 10], [19, 9], [14, 4], [13, 14]],
        "last": [[6, 14], [19, 14], [19, 4], [19, 14]],
    }
    for rule, pts in want.items():
        np.testing.assert_array_equal(T.extreme_points(m, ties=rule), pts)
    np.testing.assert_array_equal(T.extreme_points(m), want["first"])  # the default
    with pytest.raises(ValueError, match="ties must be one of"):
        T.extreme_points(m, ties="centre")


def test_extreme_points_jitter_bounded_clipped_deterministic():
    h, w = 24, 32
    m = np.zeros((h, w), bool)
    m[0:10, 25:32] = True  # touches the top and right borders: clipping matters
    pert = 4
    clipped_somewhere = False
    shifts = []
    for i in range(40):
        base = T.extreme_points(m, np.random.default_rng(i), 0)  # same ties, no jitter
        jit = T.extreme_points(m, np.random.default_rng(i), pert)
        np.testing.assert_array_equal(jit, np.round(jit))  # integer shifts
        assert np.abs(jit - base).max() <= pert
        assert (jit[:, 0] >= 0).all() and (jit[:, 0] <= w - 1).all()
        assert (jit[:, 1] >= 0).all() and (jit[:, 1] <= h - 1).all()
        clipped_somewhere |= bool((jit[:, 1] == 0).any() or (jit[:, 0] == w - 1).any())
        np.testing.assert_array_equal(jit, T.extreme_points(m, np.random.default_rng(i), pert))
        shifts.append((jit - base)[[3], 1])  # the bottom point's y is never clipped here
    assert clipped_somewhere
    shifts = np.concatenate(shifts)
    assert shifts.min() == -pert and shifts.max() == pert  # the whole range [-pert, pert]


def test_extreme_points_errors():
    with pytest.raises(ValueError, match="empty mask"):
        T.extreme_points(np.zeros((24, 32), bool))
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        T.extreme_points(np.ones((2, 3, 4), bool))
    with pytest.raises(ValueError, match="pert"):
        T.extreme_points(np.ones((24, 32), bool), pert=2)  # jitter without an rng


def test_extreme_points_negative_pert_is_an_error():
    with pytest.raises(ValueError, match="pert"):
        T.extreme_points(np.ones((24, 32), bool), np.random.default_rng(0), pert=-1)


def test_extreme_points_use_the_sdts_foreground_rule():
    m = np.zeros((10, 12))
    m[3:6, 4:9] = 0.3  # below 0.5: no foreground for a float mask, as for signed_distance
    with pytest.raises(ValueError, match="empty mask"):
        T.extreme_points(m)
    with pytest.raises(ValueError, match="empty mask"):
        T.signed_distance(m, 30.0)


# ------------------------------------------------------------------ the network's view
def test_imagenet_normalisation(rng):
    np.testing.assert_array_equal(T.IMAGENET_MEAN, np.float32([0.485, 0.456, 0.406]))
    np.testing.assert_array_equal(T.IMAGENET_STD, np.float32([0.229, 0.224, 0.225]))
    rgb = rng.integers(0, 256, (5, 6, 3)).astype(np.uint8)
    out = T.normalize_image(rgb)
    assert out.shape == (5, 6, 3) and out.dtype == np.float32
    for c, (mu, sd) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        np.testing.assert_allclose(out[..., c], (rgb[..., c] / 255.0 - mu) / sd, rtol=1e-5)
    grey = rgb[..., :1]
    g = T.normalize_image(grey)
    assert g.shape == (5, 6, 3)
    for c in range(3):  # grey replicated to 3 channels, then per-channel statistics
        np.testing.assert_allclose(
            g[..., c], (grey[..., 0] / 255.0 - T.IMAGENET_MEAN[c]) / T.IMAGENET_STD[c], rtol=1e-5
        )
    np.testing.assert_array_equal(T.normalize_image(grey[..., 0]), g)  # (H, W) too


def brute_margin(points, pixels, fraction):
    """max(pixels, fraction * L rounded), L = the longer side in px of the points' box."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    longer = max(max(xs) - min(xs), max(ys) - min(ys)) + 1
    v = fraction * longer
    assert abs(v - np.floor(v) - 0.5) > 1e-6  # (no half-way case in these tests)
    return max(pixels, int(np.floor(v + 0.5)))


def test_scaled_margin(rng):
    assert T.scaled_margin(PTS, 10, 0.0) == 10  # the authors' fixed margin
    # PTS spans x 12..50 (39 px), y 15..44 (30 px): L = 39
    assert T.scaled_margin(PTS, 0, 0.1) == 4 and T.scaled_margin(PTS, 5, 0.1) == 5
    assert T.scaled_margin(PTS, 0, 1.0) == 39
    one = np.array([[7, 3]] * 4)
    assert T.scaled_margin(one, 0, 0.9) == 1 and T.scaled_margin(one, 2, 0.9) == 2
    for _ in range(50):
        pts = rng.integers(0, 300, (4, 2))
        pixels, fraction = int(rng.integers(0, 20)), float(rng.uniform(0, 0.5))
        got = T.scaled_margin(pts, pixels, fraction)
        assert isinstance(got, int) and got == brute_margin(pts, pixels, fraction)
        # two box corners give the margin of the four points
        corners = np.array([pts.min(0), pts.max(0)])
        assert T.scaled_margin(corners, pixels, fraction) == got


def test_crop_inputs_is_the_crop_of_the_box(rng):
    img = rng.integers(0, 256, (60, 80, 3)).astype(np.uint8)
    for relax, fraction in ((10, 0.0), (3, 0.3)):
        out = T.crop_inputs(img, PTS, relax=relax, relax_fraction=fraction, resolution=32)
        assert set(out) == {"image", "points", "box"}
        margin = T.scaled_margin(PTS, relax, fraction)
        assert margin == (10 if fraction == 0 else 12)  # round(0.3 * 39)
        box = T.crop_box(PTS, img.shape, relax=margin)
        np.testing.assert_array_equal(out["box"], box)
        assert out["box"].dtype == np.int64
        want = T.normalize_image(T.crop_and_resize(img, box, 32, order=1))
        assert out["image"].shape == (32, 32, 3) and out["image"].dtype == np.float32
        np.testing.assert_array_equal(out["image"], want)
        assert out["points"].dtype == np.float32
        np.testing.assert_array_equal(out["points"], T.points_to_crop(PTS, box, 32))


def test_stretch_contrast_analytic():
    """Two flat halves 100 / 110 (range 10): floor 30 -> gain 3 about the middle 105."""
    img = np.full((40, 40), 100.0)
    img[:, 20:] = 110.0
    box = np.array([0, 0, 40, 40])
    crop = T.crop_and_resize(img, box, 20, order=1)
    out = T.stretch_contrast(crop, img, box, 30.0)
    np.testing.assert_allclose(out, 105.0 + 3.0 * (crop - 105.0), atol=1e-4)
    assert out.min() == pytest.approx(90.0) and out.max() == pytest.approx(120.0)
    # the gain is capped at 4: floor 64 on a 10-level range gives 40 levels, not 64
    out = T.stretch_contrast(crop, img, box, 64.0)
    assert out.max() - out.min() == pytest.approx(40.0)
    # a range at or above the floor, or floor 0: unchanged
    np.testing.assert_array_equal(T.stretch_contrast(crop, img, box, 10.0), crop)
    np.testing.assert_array_equal(T.stretch_contrast(crop, img, box, 0.0), crop)


def test_stretch_contrast_stays_in_range_and_ignores_padding(rng):
    """Near white the stretched range is moved down to fit; the zero padding of a box
    that leaves the image neither enters the percentiles nor turns grey."""
    img = np.clip(248 + rng.normal(0, 1.5, (50, 50, 3)), 0, 255)
    box = np.array([-20, -20, 30, 30])  # its top-left part lies outside the image
    crop = T.crop_and_resize(img, box, 32, order=1)
    out = T.stretch_contrast(crop, img, box, 64.0)
    assert out.dtype == np.float32 and out.shape == crop.shape
    assert out.min() >= 0 and out.max() <= 255
    inside = crop.min(-1) > 0
    lo, hi = np.percentile(img[:30, :30], [1, 99])
    gain = min(64.0 / (hi - lo), 4.0)
    assert 3.0 < gain <= 4.0  # noise std 1.5: a range of about 7 levels
    mid, half = (lo + hi) / 2, gain * (hi - lo) / 2
    np.testing.assert_allclose(
        out[inside], np.clip(255 - half + gain * (crop[inside] - mid), 0, 255), atol=1e-3
    )
    assert (out[~inside] == 0).all()
    # one map for all channels: a colour difference scales, it is not equalised
    unclipped = inside & (out.max(-1) < 255) & (out.min(-1) > 0)
    assert unclipped.sum() > 100
    np.testing.assert_allclose(
        (out[..., 0] - out[..., 1])[unclipped],
        gain * (crop[..., 0] - crop[..., 1])[unclipped],
        atol=1e-3,
    )


def test_stretch_contrast_bad_input():
    img = np.zeros((10, 10))
    with pytest.raises(ValueError, match="floor must be in"):
        T.stretch_contrast(img, img, [0, 0, 10, 10], 300.0)
    with pytest.raises(ValueError, match="lies outside the image"):
        T.stretch_contrast(img, img, [20, 20, 30, 30], 64.0)


def test_crop_inputs_applies_the_contrast_floor(rng):
    img = (120 + rng.integers(0, 6, (60, 80, 1))).astype(np.uint8)
    out = T.crop_inputs(img, PTS, relax=10, relax_fraction=0.0, resolution=32, contrast_floor=64)
    box = T.crop_box(PTS, img.shape, relax=10)
    crop = T.crop_and_resize(img, box, 32, order=1)
    np.testing.assert_array_equal(
        out["image"], T.normalize_image(T.stretch_contrast(crop, img, box, 64))
    )
    assert not np.array_equal(out["image"], T.normalize_image(crop))


def _object_share(image, points, relax, fraction, res=64):
    out = T.crop_inputs(image, points, relax=relax, relax_fraction=fraction, resolution=res)
    raw = out["image"][..., 0] * T.IMAGENET_STD[0] + T.IMAGENET_MEAN[0]
    return float((raw > 0.5).mean())


def test_crop_margin_scales_with_the_object():
    """With relax_fraction the object fills the same share of the crop at every size."""
    shares = {0.0: [], 0.25: []}
    for side in (12, 40, 120):
        n = side + 100
        img = np.zeros((n, n, 1), np.uint8)
        img[50 : 50 + side, 50 : 50 + side] = 255
        pts = T.extreme_points(img[..., 0])
        for fraction in shares:
            shares[fraction].append(_object_share(img, pts, 2, fraction))
    # margin 0.25 L on each side: the object is (1 / 1.5)^2 of the crop
    np.testing.assert_allclose(shares[0.25], 4 / 9, atol=0.03)
    # a fixed margin of 2 px: small objects fill less of the crop than large ones
    assert shares[0.0][0] < shares[0.0][2] - 0.1


# ------------------------------------------------------------------ windows
def brute_window(box, h, w):
    """The image pixels inside the box, by looping over them: (y0, x0, y1, x1) or None."""
    y0, x0, y1, x1 = box
    inside = [(y, x) for y in range(h) for x in range(w) if y0 <= y < y1 and x0 <= x < x1]
    if not inside:
        return None
    ys, xs = zip(*inside)
    return min(ys), min(xs), max(ys) + 1, max(xs) + 1


def _random_box(rng, h, w):
    y0, x0 = int(rng.integers(-15, h + 5)), int(rng.integers(-15, w + 5))
    return np.array([y0, x0, y0 + rng.integers(1, 30), x0 + rng.integers(1, 30)])


def test_box_window_matches_bruteforce(rng):
    h, w = 20, 25
    n_empty = 0
    for _ in range(60):
        box = _random_box(rng, h, w)
        got = T.box_window(box, (h, w, 3))
        y0, x0, y1, x1 = got
        want = brute_window(box, h, w)
        if want is None:
            n_empty += 1
            assert y1 <= y0 or x1 <= x0, (box, got)
            assert np.zeros((h, w))[y0:y1, x0:x1].size == 0
        else:
            assert got == want, (box, got, want)
    assert 0 < n_empty < 60
    with pytest.raises(ValueError, match="empty"):
        T.box_window(np.array([5, 5, 5, 9]), (h, w))


@pytest.mark.parametrize("order", [0, 1])
def test_paste_back_window_is_the_window_of_paste_back(rng, order):
    h, w = 20, 25
    phi = rng.normal(size=(7, 9)).astype(np.float32)
    for _ in range(30):
        box = _random_box(rng, h, w)
        win, vals = T.paste_back_window(phi, box, (h, w), order)
        assert win == T.box_window(box, (h, w)) and vals.dtype == np.float32
        y0, x0, y1, x1 = win
        assert vals.shape == (max(y1 - y0, 0), max(x1 - x0, 0))
        full = T.paste_back(phi, box, (h, w), background=20.0, order=order)
        np.testing.assert_array_equal(vals, full[y0:y1, x0:x1])
        full[y0:y1, x0:x1] = 20.0
        np.testing.assert_array_equal(full, 20.0)  # nothing outside the window


def _peak_bytes(fn):
    import tracemalloc

    tracemalloc.start()
    try:
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, peak


def test_windows_allocate_only_the_window():
    big = (40_000, 50_000)  # a full float32 image would be 8 GB, a bool one 2 GB
    box = np.array([30_000, 20_000, 30_064, 20_080])
    (win, vals), peak = _peak_bytes(
        lambda: T.paste_back_window(np.ones((16, 16), np.float32), box, big)
    )
    assert win == (30_000, 20_000, 30_064, 20_080) and vals.shape == (64, 80)
    assert peak < 2_000_000, peak
    pts = np.array([[20_000, 30_030], [20_070, 30_040], [20_050, 30_001], [20_010, 30_060]])
    (win, mask), peak = _peak_bytes(lambda: T.polygon_mask_window(pts, big))
    assert mask.shape == (win[2] - win[0], win[3] - win[1]) and mask.shape[0] <= 63 and mask.any()
    assert peak < 2_000_000, peak


def brute_polygon(points, h, w):
    """Pixel centres inside the CONVEX quadrilateral left, top, right, bottom (edges
    included) or within half a pixel of one of its edges: a loop over pixels."""
    poly = np.asarray(points, np.float64)[[0, 2, 1, 3]]
    area = abs(sum(poly[k - 1, 0] * poly[k, 1] - poly[k, 0] * poly[k - 1, 1] for k in range(4)))
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            crosses, dists = [], []
            for k in range(4):
                (ax, ay), (bx, by) = poly[k], poly[(k + 1) % 4]
                crosses.append((bx - ax) * (y - ay) - (by - ay) * (x - ax))
                t = ((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / max(
                    (bx - ax) ** 2 + (by - ay) ** 2, 1e-12
                )
                t = min(max(t, 0.0), 1.0)
                dists.append(np.hypot(x - ax - t * (bx - ax), y - ay - t * (by - ay)))
            same_side = all(c >= 0 for c in crosses) or all(c <= 0 for c in crosses)
            convex_inside = area > 0 and same_side  # (a degenerate one has no inside)
            out[y, x] = convex_inside or min(dists) <= 0.5
    return out


QUADS = [
    np.array([[3, 12], [28, 10], [15, 2], [17, 21]], np.float64),  # left, right, top, bottom
    np.array([[5.5, 9.25], [20.75, 11.5], [12.3, 3.6], [9.1, 18.4]]),  # fractional
    np.array([[-6, 8], [12, 8], [3, -4], [3, 30]], np.float64),  # partly off the image
    np.array([[10, 10], [10, 10], [10, 10], [10, 10]], np.float64),  # one pixel
]


@pytest.mark.parametrize("q", range(len(QUADS)))
def test_polygon_mask_window_matches_bruteforce_and_polygon_mask(q):
    pts = QUADS[q]
    h, w = 24, 32
    (y0, x0, y1, x1), win = T.polygon_mask_window(pts, (h, w))
    assert win.dtype == bool and win.shape == (y1 - y0, x1 - x0)
    assert 0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w
    full = T.polygon_mask(pts, (h, w, 3))
    np.testing.assert_array_equal(full[y0:y1, x0:x1], win)
    np.testing.assert_array_equal(full, brute_polygon(pts, h, w))
    full[y0:y1, x0:x1] = False
    assert not full.any()  # nothing outside the window
    for x, y in pts:  # clicks on pixel centres belong to the mask
        if 0 <= x <= w - 1 and 0 <= y <= h - 1 and x == round(x) and y == round(y):
            assert T.polygon_mask(pts, (h, w))[int(round(y)), int(round(x))]


def test_polygon_mask_window_outside_the_image_is_empty():
    pts = QUADS[0] + 100
    (y0, x0, y1, x1), win = T.polygon_mask_window(pts, (24, 32))
    assert win.size == 0 and win.shape == (max(y1 - y0, 0), max(x1 - x0, 0))
    assert not T.polygon_mask(pts, (24, 32)).any()
    with pytest.raises(ValueError, match=r"\(4, 2\)"):
        T.polygon_mask_window(QUADS[0][:3], (24, 32))
