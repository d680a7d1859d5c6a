"""Tests for dlset_jax.targets against independent numpy computations."""

import numpy as np
import pytest
from conftest import brute_contour
from scipy import ndimage

from dlset_jax import targets as T


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
    # int / float masks give the same result; default truncation is 30
    np.testing.assert_array_equal(T.signed_distance(m.astype(np.uint8), 5.0)[0], sdt)
    np.testing.assert_array_equal(T.signed_distance(m * 0.8, 5.0)[0], sdt)
    assert T.signed_distance(disc(100, 100, 50, 50, 45))[0].min() == -30.0


def test_sdt_full_mask_uses_image_frame():
    sdt, dt = T.signed_distance(np.ones((9, 11), bool))
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
        T.signed_distance(np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match=r"\(5, 5, 1\)"):
        T.signed_distance(np.ones((5, 5, 1), bool))
    with pytest.raises(ValueError, match="dt_max"):
        T.signed_distance(np.ones((5, 5), bool), dt_max=0.0)
    with pytest.raises(ValueError, match="dtype"):
        T.signed_distance(np.full((5, 5), "a"))
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
        T.crop_box(bad, (60, 80))
    with pytest.raises(ValueError, match="outside"):
        T.validate_points([[80, 0]], (60, 80))  # x = W is outside
    T.validate_points([[79, 59], [0, 0]], (60, 80))  # corners are inside
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        T.crop_box(np.zeros((4, 3)), (60, 80))
    with pytest.raises(ValueError, match="finite"):
        T.crop_box(np.full((4, 2), np.nan), (60, 80))
    with pytest.raises(ValueError, match="relax"):
        T.crop_box(PTS, (60, 80), relax=-1)
    with pytest.raises(ValueError, match="image_shape"):
        T.crop_box(PTS, (60,))


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
    np.testing.assert_array_equal(T.paste_back(crop, np.array([40, 50, 60, 70]), (h, w)), 20.0)
    # nearest mode for masks
    m = (rng.random((8, 8)) < 0.5).astype(np.float32)
    assert set(np.unique(T.paste_back(m, np.array([0, 0, 20, 20]), (h, w), order=0))) <= {
        0.0,
        1.0,
        20.0,
    }


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
        T.paste_back(np.zeros((2, 8, 8)), box, (10, 10))
    with pytest.raises(ValueError, match="image_shape"):
        T.paste_back(np.zeros((8, 8)), box, (10, 0))
    with pytest.raises(ValueError, match="background"):
        T.paste_back(np.zeros((8, 8)), box, (10, 10), background=np.nan)
