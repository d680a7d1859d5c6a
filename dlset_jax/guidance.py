"""The guidance channel from four extreme points: heatmap and confidence map.

Pure JAX; every function is jit- and vmap-friendly (image sizes, ``sigma``,
``mode`` and ``variant`` are static Python values). This is the one implementation:
training, evaluation and prediction build the network input from the crop's points
with it on the device (``inference.model_inputs``). The clicks themselves are
simulated from masks on the host (``targets.extreme_points``).

Conventions (see docs/method.md, "Inputs: crop, guidance channel"):

* A point is float32 ``(x, y)`` = (column, row) in pixel units, with pixel
  ``(x, y)`` centred at integer coordinates (pixel ``[row, col]`` of an array
  is at ``(x=col, y=row)``).
* The four extreme points are ordered left, right, top, bottom; arrays of
  points have shape ``(..., 4, 2)``.
* Output maps have shape ``(..., H, W)`` (or ``(..., H, W, 1)`` for the
  guidance channel, NHWC), float32.
"""

from __future__ import annotations

import math
import numbers

import chex
import jax
import jax.numpy as jnp

__all__ = [
    "gaussian_heatmap",
    "confidence_map",
    "guidance_channel",
    "HEATMAP_MODES",
    "CM_VARIANTS",
]

HEATMAP_MODES = ("heatmap", "heatmap+cm")
CM_VARIANTS = ("paper", "authors")

# Smallest half-length (px) used as the spread sigma_s of a segment, so that a
# zero-length segment (e.g. a one-pixel object) does not divide by zero.
_MIN_SIGMA_S = 0.5
# Floor inside square roots: keeps d(sqrt)/dx finite at x = 0.
_SQRT_FLOOR = 1e-20


def _safe_sqrt(x):
    """sqrt with a finite gradient at 0 (value error <= 1e-10)."""
    return jnp.sqrt(jnp.maximum(x, _SQRT_FLOOR))


def _check_size(height, width, fn: str) -> None:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{fn}: {name} must be a positive Python int, got {v!r}")


def _as_points(points, fn: str) -> jax.Array:
    """Validate ``(..., 4, 2)`` points and return them as float32."""
    points = jnp.asarray(points)
    if points.ndim < 2 or tuple(points.shape[-2:]) != (4, 2):
        raise ValueError(
            f"{fn}: points must have shape (..., 4, 2) (x, y for left, right, top, "
            f"bottom), got shape {points.shape}"
        )
    if not (
        jnp.issubdtype(points.dtype, jnp.floating) or jnp.issubdtype(points.dtype, jnp.integer)
    ):
        raise ValueError(f"{fn}: points must be numeric, got dtype {points.dtype}")
    return points.astype(jnp.float32)


def _pixel_grid(height: int, width: int):
    """Pixel-centre coordinates: xs ``(1, W)``, ys ``(H, 1)`` float32."""
    xs = jnp.arange(width, dtype=jnp.float32)[None, :]
    ys = jnp.arange(height, dtype=jnp.float32)[:, None]
    return xs, ys


# --------------------------------------------------------------------------
# Heatmap
# --------------------------------------------------------------------------
def gaussian_heatmap(points, height: int, width: int, sigma: float, fwhm: bool = True):
    """Extreme-point heatmap (DEXTR): Gaussians combined by max, rescaled to [0, 255].

    Each point ``p`` contributes ``g_p(x) = exp(-4 ln2 |x - p|^2 / sigma^2)`` when
    ``fwhm`` is True (the DEXTR/authors' ``make_gaussian``: ``sigma`` is the full
    width at half maximum in px, i.e. standard deviation ``sigma / 2.355``), or
    ``exp(-|x - p|^2 / (2 sigma^2))`` when False (``sigma`` = standard
    deviation in px). The map ``max_p g_p`` is min-max rescaled per image:
    ``255 * (m - min m) / (max m - min m + 1e-10)`` (DEXTR's normalisation), so
    a point on a pixel centre gets 255 there. A map that is constant (e.g. all
    points very far outside the image) becomes 0 everywhere, never NaN.

    Args:
      points: ``(..., 4, 2)`` ``(x, y)`` px; may lie outside the image.
      height, width: output size (static ints).
      sigma: width in px (static, > 0).
      fwhm: how to read ``sigma`` (see above).

    Returns:
      ``(..., H, W)`` float32 in [0, 255].
    """
    _check_size(height, width, "gaussian_heatmap")
    if isinstance(sigma, bool) or not (isinstance(sigma, numbers.Real) and 0 < sigma < math.inf):
        raise ValueError(f"gaussian_heatmap: sigma must be a positive number, got {sigma!r}")
    points = _as_points(points, "gaussian_heatmap")
    xs, ys = _pixel_grid(height, width)
    px = points[..., :, 0][..., :, None, None]  # (..., 4, 1, 1)
    py = points[..., :, 1][..., :, None, None]
    r2 = (xs - px) ** 2 + (ys - py) ** 2  # (..., 4, H, W)
    coef = 4.0 * math.log(2.0) / sigma**2 if fwhm else 0.5 / sigma**2
    m = jnp.max(jnp.exp(-coef * r2), axis=-3)  # (..., H, W)
    lo = jnp.min(m, axis=(-2, -1), keepdims=True)
    hi = jnp.max(m, axis=(-2, -1), keepdims=True)
    out = 255.0 * (m - lo) / (hi - lo + 1e-10)
    chex.assert_shape(out, points.shape[:-2] + (height, width))
    return out.astype(jnp.float32)


# --------------------------------------------------------------------------
# Confidence map
# --------------------------------------------------------------------------
def _segment_distance(xs, ys, a, b):
    """Euclidean distance (px) from each pixel centre to segment ``a``-``b``.

    ``a``, ``b``: ``(..., 2)``; returns ``(..., H, W)``. Beyond the segment's
    ends it is the distance to the nearer end point; a zero-length segment is
    a point.
    """
    ax = a[..., 0][..., None, None]
    ay = a[..., 1][..., None, None]
    ex = (b[..., 0] - a[..., 0])[..., None, None]
    ey = (b[..., 1] - a[..., 1])[..., None, None]
    len2 = ex**2 + ey**2
    dx = xs - ax
    dy = ys - ay
    t = (dx * ex + dy * ey) / jnp.maximum(len2, 1e-12)
    t = jnp.where(len2 > 0, jnp.clip(t, 0.0, 1.0), 0.0)
    rx = dx - t * ex
    ry = dy - t * ey
    return _safe_sqrt(rx**2 + ry**2)


def confidence_map(points, height: int, width: int, variant: str):
    """Confidence map of paper eqs. 1-3 from the four extreme points.

    Segments: s1 = left-right (points 0, 1), s2 = top-bottom (points 2, 3).
    ``dist(x, s)`` is the Euclidean distance (px) from pixel centre ``x`` to the
    segment; ``sigma_s`` = half the segment length (px), floored at 0.5 px so a
    zero-length segment is safe; ``d_s = dist(x, s) / sigma_s``,
    ``d1 = min(d_s1, d_s2)``. Then

    * ``variant="paper"`` (eq. 3): ``d2 = sqrt(d_s1^2 + d_s2^2)``,
      ``CM = 1 / (1 + d1 + d2)``;
    * ``variant="authors"`` (their code): ``d2 = |d_s1| + |d_s2|``,
      ``CM = 1 / (1 + d1 * d2)``.

    Args:
      points: ``(..., 4, 2)`` ``(x, y)`` px, order left, right, top, bottom.
      height, width: output size (static ints).
      variant: "paper" or "authors" (static).

    Returns:
      ``(..., H, W)`` float32 in (0, 1]; 1 where both segments pass
      (intersection), and for "authors" anywhere on either segment.
    """
    if variant not in CM_VARIANTS:
        raise ValueError(
            f"confidence_map: unknown variant {variant!r}; expected one of {CM_VARIANTS}"
        )
    _check_size(height, width, "confidence_map")
    points = _as_points(points, "confidence_map")
    xs, ys = _pixel_grid(height, width)

    def scaled(a, b):
        half = 0.5 * _safe_sqrt(jnp.sum((b - a) ** 2, axis=-1))
        sigma_s = jnp.maximum(half, _MIN_SIGMA_S)[..., None, None]
        return _segment_distance(xs, ys, a, b) / sigma_s

    ds1 = scaled(points[..., 0, :], points[..., 1, :])
    ds2 = scaled(points[..., 2, :], points[..., 3, :])
    d1 = jnp.minimum(ds1, ds2)
    if variant == "paper":
        d2 = _safe_sqrt(ds1**2 + ds2**2)
        cm = 1.0 / (1.0 + d1 + d2)
    else:
        d2 = jnp.abs(ds1) + jnp.abs(ds2)
        cm = 1.0 / (1.0 + d1 * d2)
    chex.assert_shape(cm, points.shape[:-2] + (height, width))
    return cm.astype(jnp.float32)


# --------------------------------------------------------------------------
# Guidance channel
# --------------------------------------------------------------------------
def guidance_channel(
    points,
    height: int,
    width: int,
    mode: str,
    sigma: float,
    cm_variant: str,
    fwhm: bool = True,
):
    """The extra network input channel built from the four points.

    * ``mode="heatmap"`` (DELSE/DEXTR baseline): :func:`gaussian_heatmap`,
      values in [0, 255].
    * ``mode="heatmap+cm"``: heatmap in [0, 255] plus ``255 * CM``
      (:func:`confidence_map`), summed into ONE channel, values in [0, 510].
      (The authors' code min-max rescales the CM to [0, 255] per crop instead
      of multiplying by 255; the two differ by the CM's minimum, which is
      small for crops around the object.)

    Args:
      points: ``(..., 4, 2)`` ``(x, y)`` px, order left, right, top, bottom.
      height, width: output size (static ints).
      mode: "heatmap" or "heatmap+cm" (static).
      sigma, fwhm: heatmap width, see :func:`gaussian_heatmap`.
      cm_variant: "paper" or "authors", see :func:`confidence_map`.

    Returns:
      ``(..., H, W, 1)`` float32 (NHWC channel).
    """
    if mode not in HEATMAP_MODES:
        raise ValueError(
            f"guidance_channel: unknown mode {mode!r}; expected one of {HEATMAP_MODES}"
        )
    g = gaussian_heatmap(points, height, width, sigma=sigma, fwhm=fwhm)
    if mode == "heatmap+cm":
        g = g + 255.0 * confidence_map(points, height, width, variant=cm_variant)
    return g[..., None].astype(jnp.float32)
