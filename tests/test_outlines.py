"""`outlines`: the level set's contour and a mask's outline as closed polylines.

Checked against independent computations: the analytic circle of a signed distance,
and matplotlib's point-in-polygon test of every pixel centre against the mask.
"""

import numpy as np
import pytest
from scipy import ndimage
from tiny_models import inside_polylines

from dlset_jax import outlines


def test_the_contour_of_a_signed_distance_is_its_circle():
    rows, cols = np.mgrid[:64, :80]
    cy, cx, radius = 30.3, 41.7, 17.0
    phi = np.hypot(rows - cy, cols - cx) - radius
    (line,) = outlines.level_lines(phi)
    np.testing.assert_array_equal(line[0], line[-1])  # closed
    r = np.hypot(line[:, 0] - cx, line[:, 1] - cy)
    np.testing.assert_allclose(r, radius, atol=0.02)
    # a threshold moves the contour outwards by that many px, an origin shifts it
    (moved,) = outlines.level_lines(phi[10:, 5:], threshold=2.0, origin=(10, 5))
    np.testing.assert_allclose(np.hypot(moved[:, 0] - cx, moved[:, 1] - cy), radius + 2, atol=0.02)


def test_an_object_cut_by_the_window_closes_halfway_past_its_edge_pixels():
    """phi = x - 10.3 on a 20 x 20 window at (row 7, col 3): inside up to x = 10.3; the
    window's edge closes it half a pixel beyond its outer pixel centres, as a mask's
    outline runs (not on the centres themselves, which would leave them undecided)."""
    phi = np.broadcast_to(np.arange(20.0) - 10.3, (20, 20))
    (line,) = outlines.level_lines(phi, origin=(7, 3))
    np.testing.assert_allclose(line.min(0), [3 - 0.5, 7 - 0.5])
    np.testing.assert_allclose(line.max(0), [3 + 10.3, 7 + 19.5])


@pytest.mark.parametrize("seed", range(6))
def test_pixel_centres_inside_the_lines_are_the_mask(seed):
    """Random smooth level sets: several components, holes, lines cut by the window's
    edge; every pixel centre is inside the polylines exactly where phi <= threshold."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(20, 70, 2))
    phi = ndimage.gaussian_filter(rng.normal(size=shape), 3.0)
    phi /= phi.std()
    t = float(rng.uniform(-0.8, 0.8))
    origin = tuple(int(v) for v in rng.integers(0, 40, 2))
    lines = outlines.level_lines(phi, t, origin)
    assert lines and all(np.array_equal(ln[0], ln[-1]) for ln in lines)
    shifted = [ln - [origin[1], origin[0]] for ln in lines]
    got = inside_polylines(shifted, shape)
    clear = np.abs(phi - t) > 1e-9
    np.testing.assert_array_equal(got[clear], (phi <= t)[clear])


@pytest.mark.parametrize("seed", range(4))
def test_a_masks_outline_holds_exactly_its_pixels(seed):
    """Pixel-scale masks: single pixels, pixels touching only at a corner, holes."""
    rng = np.random.default_rng(seed)
    mask = rng.uniform(size=(24, 30)) < 0.35
    mask[5:15, 5:15] = True
    mask[9, 9] = False  # a one-pixel hole
    lines = outlines.mask_outline(mask)
    np.testing.assert_array_equal(inside_polylines(lines, mask.shape), mask)


def test_nothing_inside_gives_no_lines_and_bad_input_one_error():
    assert outlines.level_lines(np.ones((5, 5))) == []
    assert outlines.mask_outline(np.zeros((5, 5), bool)) == []
    with pytest.raises(ValueError, match="NaN or infinite"):
        outlines.level_lines(np.array([[0.0, np.nan], [1.0, -1.0]]))
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        outlines.level_lines(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        outlines.mask_outline(np.zeros(4, bool))
