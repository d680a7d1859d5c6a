"""Corrective clicks after the four extreme points: their maps and their simulation.

A corrective click is `(x, y, sign)`: `(x, y)` in crop px (the guidance convention,
pixel centres at integers), sign +1 = positive (this pixel belongs to the object, it was
missed), -1 = negative (this pixel is background, it leaked), 0 = an empty slot. The
clicks of one crop live in a fixed number of slots, `(..., K, 3)` with K =
`clicks.max_clicks`, so that every number of clicks runs through one compiled program.

* `click_maps`: the two extra network input channels (positive, negative), pure JAX.
* `honour_clicks`: makes the level set agree with every click (a smooth local shift of
  the level set, so that the contour moves over the clicked pixel and along the edge
  beside it), pure JAX.
* `next_click`: the simulated user of interactive segmentation (as in RITM, Sofiiuk et
  al. 2022, and DeepEdit): the click goes to the pixel of the error region farthest
  from the region's boundary, positive in missed object (false negatives) or negative
  in leaked background (false positives), whichever error is deeper. Pure JAX, for the
  training step; `next_click_host` is the same rule on the host with scipy's exact
  distance transform (the benchmark's simulator, and the test's reference).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import jax.scipy.ndimage
import numpy as np

__all__ = [
    "POSITIVE",
    "NEGATIVE",
    "click_maps",
    "empty_clicks",
    "add_click",
    "squared_depth",
    "next_click",
    "next_click_host",
    "honour_clicks",
]

POSITIVE, NEGATIVE = 1.0, -1.0
# Squared distance standing for "no outside pixel in this row yet" (> any real one).
_FAR = 1e9


def empty_clicks(batch_shape, max_clicks: int) -> jax.Array:
    """`(*batch_shape, K, 3)` float32 zeros: no clicks."""
    return jnp.zeros((*tuple(batch_shape), int(max_clicks), 3), jnp.float32)


def click_maps(clicks, height: int, width: int, sigma: float) -> jax.Array:
    """Positive and negative click maps: Gaussian discs combined by max.

    Each click at `p` contributes `exp(-4 ln2 |x - p|^2 / sigma^2)` (`sigma` = full width
    at half maximum, px, as the extreme-point heatmap) to the map of its sign; empty
    slots contribute nothing, so no clicks give two zero maps.

    Args:
      clicks: `(..., K, 3)` `(x, y, sign)` crop px.
      height, width: map size (static ints).
      sigma: FWHM in px (static, > 0).

    Returns:
      `(..., H, W, 2)` float32 in [0, 1]: channel 0 positive, channel 1 negative.
    """
    clicks = jnp.asarray(clicks, jnp.float32)
    if clicks.ndim < 2 or clicks.shape[-1] != 3:
        raise ValueError(f"click_maps: clicks must be (..., K, 3) (x, y, sign), got {clicks.shape}")
    if not sigma > 0:
        raise ValueError(f"click_maps: sigma must be > 0, got {sigma!r}")
    xs = jnp.arange(width, dtype=jnp.float32)
    ys = jnp.arange(height, dtype=jnp.float32)
    x, y, s = (clicks[..., k][..., None, None] for k in range(3))  # (..., K, 1, 1)
    r2 = (xs[None, :] - x) ** 2 + (ys[:, None] - y) ** 2  # (..., K, H, W)
    g = jnp.exp(-4.0 * math.log(2.0) / sigma**2 * r2)
    pos = jnp.max(jnp.where(s > 0, g, 0.0), axis=-3)
    neg = jnp.max(jnp.where(s < 0, g, 0.0), axis=-3)
    out = jnp.stack([pos, neg], axis=-1)
    chex.assert_shape(out, clicks.shape[:-2] + (height, width, 2))
    return out


def add_click(clicks, click) -> jax.Array:
    """`clicks` `(..., K, 3)` with `click` `(..., 3)` in the first empty slot.

    A click of sign 0 (nothing to correct) or one that finds no empty slot changes
    nothing.
    """
    clicks = jnp.asarray(clicks, jnp.float32)
    click = jnp.asarray(click, jnp.float32)
    empty = clicks[..., 2] == 0
    slot = jnp.argmax(empty, axis=-1)  # the first empty slot (0 when there is none)
    onehot = jax.nn.one_hot(slot, clicks.shape[-2], dtype=bool)
    put = onehot & jnp.any(empty, axis=-1, keepdims=True) & (click[..., 2:3] != 0)
    return jnp.where(put[..., None], click[..., None, :], clicks)


def _min_plus(f, axis_len: int):
    """`out[..., i] = min_j (i - j)^2 + f[..., j]` along the last axis (exact, O(n^2))."""
    i = jnp.arange(axis_len, dtype=jnp.float32)
    return jnp.min((i[:, None] - i[None, :]) ** 2 + f[..., None, :], axis=-1)


def squared_depth(region) -> jax.Array:
    """Squared Euclidean distance (px^2) from each pixel of `region` to the nearest
    pixel outside it, the pixels beyond the image border counting as outside; 0 off the
    region. Exact (two separable passes of a min-plus product, Felzenszwalb &
    Huttenlocher's decomposition without its lower envelope: O(n) per pixel, which is
    cheap at crop sizes).

    Args:
      region: `(..., H, W)` bool.

    Returns:
      `(..., H, W)` float32.
    """
    region = jnp.asarray(region, bool)
    chex.assert_rank(region, {2, 3, 4})
    pad = [(0, 0)] * (region.ndim - 2) + [(1, 1), (1, 1)]
    r = jnp.pad(region, pad, constant_values=False)
    f = jnp.where(r, _FAR, 0.0).astype(jnp.float32)
    rows = _min_plus(f, r.shape[-1])  # along x
    cols = _min_plus(jnp.swapaxes(rows, -1, -2), r.shape[-2])  # along y
    d = jnp.swapaxes(cols, -1, -2)[..., 1:-1, 1:-1]
    return jnp.where(region, d, 0.0)


def _choose(d_fn, d_fp, xp):
    """The click from the two depth maps `(H, W)`: `(x, y, sign)`, sign 0 if no error."""
    deeper_fn = xp.max(d_fn) >= xp.max(d_fp)
    d = xp.where(deeper_fn, d_fn, d_fp)
    flat = xp.argmax(d.reshape(-1))  # the first maximum in raster order
    y, x = flat // d.shape[-1], flat % d.shape[-1]
    sign = xp.where(xp.max(d) > 0, xp.where(deeper_fn, POSITIVE, NEGATIVE), 0.0)
    return xp.stack([x.astype(xp.float32), y.astype(xp.float32), xp.asarray(sign, xp.float32)])


def next_click(pred, gt) -> jax.Array:
    """The simulated user's next corrective click on one crop.

    Args:
      pred: `(H, W)` bool predicted mask; gt: `(H, W)` bool true mask.

    Returns:
      `(3,)` float32 `(x, y, sign)`: at the pixel deepest inside the false negatives
      (sign +1) or the false positives (sign -1), whichever is deeper (ties: positive);
      sign 0 when the prediction is exact. vmap it over a batch.
    """
    pred, gt = jnp.asarray(pred, bool), jnp.asarray(gt, bool)
    chex.assert_equal_shape([pred, gt])
    chex.assert_rank(pred, 2)
    return _choose(squared_depth(gt & ~pred), squared_depth(pred & ~gt), jnp)


def next_click_host(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """`next_click` on the host for masks of any size (scipy's exact EDT)."""
    from scipy import ndimage

    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"next_click_host: masks of shapes {pred.shape} and {gt.shape}")

    def depth(region):
        padded = np.pad(region, 1, constant_values=False)
        # squared distances from the nearest outside pixel's indices: exact integers
        iy, ix = ndimage.distance_transform_edt(padded, return_distances=False, return_indices=True)
        yy, xx = np.indices(padded.shape)
        return ((iy - yy) ** 2 + (ix - xx) ** 2)[1:-1, 1:-1].astype(np.float64)

    return np.asarray(_choose(depth(gt & ~pred), depth(pred & ~gt), np), np.float32)


def honour_clicks(phi, clicks, *, width: float, margin: float, threshold: float) -> jax.Array:
    """The level set shifted locally so that every corrective click is on its side.

    The network sees the clicks as input maps, but nothing forces its answer to agree
    with them: a positive click on a thin strip of missed object is often left
    outside. Here each click, in the order given, lowers (positive) or raises
    (negative) the level set by a Gaussian bump of standard deviation `width` centred
    on it, just enough that the level set at the click is `margin` px past the
    threshold: `phi <- phi - s * max(0, s * (phi(c) - threshold) + margin) * G(x - c)`.
    Because a level set changes slowly along its contour, the shift moves the contour
    over the clicked pixel and, tapering, along the edge on both sides of it, which is
    where the rest of a thin error lies. A click already inside (outside) by more than
    `margin` changes nothing; empty slots change nothing. Later clicks act on the
    result of earlier ones (a later click nearby wins). Smooth in `phi` (differentiable).

    Args:
      phi: `(B, H, W, 1)` level sets, crop px, negative inside.
      clicks: `(B, K, 3)` `(x, y, sign)` crop px.
      width: bump standard deviation (crop px, static, > 0).
      margin: how far past the threshold the clicked point ends (crop px, >= 0).
      threshold: mask = `phi <= threshold`.

    Returns:
      `(B, H, W, 1)` float32.
    """
    phi = jnp.asarray(phi, jnp.float32)
    clicks = jnp.asarray(clicks, jnp.float32)
    chex.assert_rank(phi, 4)
    chex.assert_shape(clicks, (phi.shape[0], None, 3))
    if not width > 0:
        raise ValueError(f"honour_clicks: width must be > 0, got {width!r}")
    if not margin >= 0:
        raise ValueError(f"honour_clicks: margin must be >= 0, got {margin!r}")
    h, w = phi.shape[1:3]
    xs = jnp.arange(w, dtype=jnp.float32)
    ys = jnp.arange(h, dtype=jnp.float32)

    def one(field, click):  # field (H, W), click (3,)
        x, y, s = click[0], click[1], click[2]
        at = jax.scipy.ndimage.map_coordinates(field, [y[None], x[None]], order=1, mode="nearest")
        need = jnp.maximum(s * (at[0] - threshold) + margin, 0.0)
        bump = jnp.exp(-((xs[None, :] - x) ** 2 + (ys[:, None] - y) ** 2) / (2.0 * width**2))
        return field - s * need * bump, None

    def per_crop(field, crop_clicks):
        out, _ = jax.lax.scan(one, field, crop_clicks)
        return out

    return jax.vmap(per_crop)(phi[..., 0], clicks)[..., None]
