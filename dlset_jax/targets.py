"""Host-side targets and crop geometry (numpy + scipy.ndimage).

Used by the input pipeline (simulated clicks, SDT, direction field, crops) and by
inference (the same crop of an image around four clicks, and the paste of the crop's
level set back into the image): one implementation of each for both.

Conventions:

* Arrays are ``(H, W)`` or ``(H, W, C)``; pixel ``[row, col]`` is centred at
  the continuous coordinate ``(x=col, y=row)``.
* Points are ``(x, y)`` = (column, row) pixel coordinates, shape ``(N, 2)``
  (the four extreme points: ``(4, 2)``, order left, right, top, bottom).
* A box is int64 ``(y0, x0, y1, x1)``, end-exclusive, in image pixels; it may
  extend beyond the image (the crop is zero padded there).
* Crop <-> image mapping (pixel-centre convention, as cv2.resize or
  ``align_corners=False``), defined once in :func:`image_to_crop_coords` /
  :func:`crop_to_image_coords`: a box of ``h`` rows resized to ``R`` rows maps
  crop row ``i`` to image row ``y = y0 + (i + 0.5) * h / R - 0.5`` and back
  ``i = (y - y0 + 0.5) * R / h - 0.5`` (columns likewise with ``x0, w``).
  The crop's pixel edges coincide with the box's pixel edges.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "extreme_points",
    "normalize_image",
    "stretch_contrast",
    "crop_inputs",
    "scaled_margin",
    "box_window",
    "paste_back_window",
    "polygon_mask_window",
    "contour",
    "signed_distance",
    "direction_field",
    "validate_points",
    "crop_box",
    "crop_to_image_coords",
    "image_to_crop_coords",
    "crop_and_resize",
    "points_to_crop",
    "paste_back",
    "polygon_mask",
]

# The backbone's input normalisation (ImageNet statistics, RGB order).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# 4-connected cross: a mask pixel is on the contour if one of its 4-neighbours
# is background (or outside the image).
_CROSS = ndimage.generate_binary_structure(2, 1)


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------
def _as_mask(mask, fn: str) -> np.ndarray:
    """Validate a 2-D mask; foreground is ``!= 0`` (bool/int), ``> 0.5`` (float)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{fn}: mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype == bool:
        fg = mask
    elif np.issubdtype(mask.dtype, np.integer):
        fg = mask != 0
    elif np.issubdtype(mask.dtype, np.floating):
        fg = mask > 0.5
    else:
        raise ValueError(f"{fn}: mask must be bool, integer or float, got dtype {mask.dtype}")
    if not fg.any():
        raise ValueError(f"{fn}: empty mask of shape {mask.shape} (no foreground pixel)")
    return fg


def _as_int(v, name: str, fn: str, minimum: int) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"{fn}: {name} must be an int >= {minimum}, got {v!r}")
    return int(v)


def _as_image_shape(image_shape, fn: str) -> tuple[int, int]:
    shape = tuple(image_shape)
    if len(shape) not in (2, 3) or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, (bool, np.bool_)) and s >= 1
        for s in shape
    ):
        raise ValueError(
            f"{fn}: image_shape must be (H, W) or (H, W, C) of positive ints, got {image_shape!r}"
        )
    return int(shape[0]), int(shape[1])


def _as_points(points, fn: str) -> np.ndarray:
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 1:
        raise ValueError(f"{fn}: points must have shape (N, 2) of (x, y), got shape {pts.shape}")
    if not (np.issubdtype(pts.dtype, np.integer) or np.issubdtype(pts.dtype, np.floating)):
        raise ValueError(f"{fn}: points must be numeric, got dtype {pts.dtype}")
    pts = pts.astype(np.float64)
    if not np.isfinite(pts).all():
        raise ValueError(f"{fn}: points must be finite, got {pts.tolist()}")
    return pts


def _as_box(box, fn: str) -> np.ndarray:
    b = np.asarray(box)
    if b.shape != (4,) or not np.issubdtype(b.dtype, np.integer):
        raise ValueError(
            f"{fn}: box must be an integer array (y0, x0, y1, x1) of shape (4,), got {box!r}"
        )
    b = b.astype(np.int64)
    if b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"{fn}: box {b.tolist()} is empty (need y1 > y0 and x1 > x0)")
    return b


def validate_points(points, image_shape) -> np.ndarray:
    """Check that ``(N, 2)`` ``(x, y)`` points lie inside the image.

    Inside means ``0 <= x <= W - 1`` and ``0 <= y <= H - 1`` (pixel centres).

    Returns:
      The points as float64 ``(N, 2)``.

    Raises:
      ValueError naming the offending points (index and value).
    """
    pts = _as_points(points, "validate_points")
    h, w = _as_image_shape(image_shape, "validate_points")
    bad = (pts[:, 0] < 0) | (pts[:, 0] > w - 1) | (pts[:, 1] < 0) | (pts[:, 1] > h - 1)
    if bad.any():
        named = ", ".join(f"#{i}=(x={pts[i, 0]:g}, y={pts[i, 1]:g})" for i in np.flatnonzero(bad))
        raise ValueError(
            f"validate_points: points outside the image of shape (H={h}, W={w}): {named}"
        )
    return pts


# --------------------------------------------------------------------------
# Signed distance target and direction field
# --------------------------------------------------------------------------
def contour(mask) -> np.ndarray:
    """The one-pixel ground-truth contour of a mask, ``(H, W)`` bool.

    Definition (matches the authors' ``cv2.findContours(RETR_TREE,
    CHAIN_APPROX_NONE)`` + ``drawContours(thickness=1)``, which traces every
    outer and hole border of the 8-connected foreground): the foreground
    pixels that have at least one 4-neighbour in the background, the image
    frame counting as background. It lies INSIDE the object.
    """
    return _contour(_as_mask(mask, "contour"))


def _contour(fg: np.ndarray) -> np.ndarray:
    return fg & ~ndimage.binary_erosion(fg, structure=_CROSS, border_value=0)


def signed_distance(mask, dt_max: float):
    """Signed distance target (SDT) and unsigned distance map of a mask.

    ``dt`` is the Euclidean distance (px) from each pixel centre to the
    nearest pixel of :func:`contour` (0 on the contour). ``sdt`` is
    ``min(dt, dt_max)``, negated on foreground pixels (so ``sdt <= 0`` inside,
    ``> 0`` outside, 0 on the contour, which is inside the object).

    Args:
      mask: ``(H, W)`` bool/int (foreground ``!= 0``) or float (``> 0.5``).
      dt_max: truncation in px (> 0); the authors use 30.

    Returns:
      ``(sdt, dt)``, both ``(H, W)`` float32.

    Raises:
      ValueError: not 2-D, unsupported dtype, empty mask, bad ``dt_max``.
    """
    fg = _as_mask(mask, "signed_distance")
    if not (isinstance(dt_max, numbers.Real) and np.isfinite(dt_max) and dt_max > 0):
        raise ValueError(
            f"signed_distance: dt_max must be a positive finite number, got {dt_max!r}"
        )
    dt = ndimage.distance_transform_edt(~_contour(fg))
    sdt = np.minimum(dt, float(dt_max))
    sdt = np.where(fg, -sdt, sdt)
    return sdt.astype(np.float32), dt.astype(np.float32)


def direction_field(dt) -> np.ndarray:
    """Gradient of a distance map: the target direction field of the motion map.

    ``np.gradient`` rules (unit spacing, central differences inside, one-sided
    first-order differences on the border).

    Args:
      dt: ``(H, W)`` real array, ``H, W >= 2``.

    Returns:
      ``(H, W, 2)`` float32; channel 0 = d/dy (rows), channel 1 = d/dx.
    """
    dt = np.asarray(dt)
    if dt.ndim != 2:
        raise ValueError(f"direction_field: dt must be 2-D (H, W), got shape {dt.shape}")
    if not (np.issubdtype(dt.dtype, np.floating) or np.issubdtype(dt.dtype, np.integer)):
        raise ValueError(f"direction_field: dt must be real, got dtype {dt.dtype}")
    if min(dt.shape) < 2:
        raise ValueError(
            f"direction_field: dt needs at least 2 rows and 2 columns, got shape {dt.shape}"
        )
    gy, gx = np.gradient(dt.astype(np.float64))
    return np.stack([gy, gx], axis=-1).astype(np.float32)


# --------------------------------------------------------------------------
# Clicks simulated from a mask, and the network's view of an image
# --------------------------------------------------------------------------
TIE_RULES = ("first", "middle", "last")


def extreme_points(
    mask, rng: np.random.Generator | None = None, pert: int = 0, ties: str = "first"
) -> np.ndarray:
    """The four extreme points of a mask, as a user would click them.

    Left/right: the extreme column, at a row among its foreground pixels; top/bottom:
    the extreme row, at a column among its pixels. Without ``rng`` the candidate that
    ``ties`` names is taken (in index order: the first, the middle one ``n // 2``, or
    the last); with it one uniformly at random, and each coordinate then gets an integer
    jitter in ``[-pert, pert]`` px, clipped to the image.

    Args:
      mask: ``(H, W)`` bool/int (foreground ``!= 0``) or float (``> 0.5``).
      rng: numpy Generator for ties and jitter (training), None for exact points.
      pert: jitter in px (needs ``rng`` when > 0).
      ties: "first" (the benchmarks' rule), "middle" or "last"; ignored with ``rng``.

    Returns:
      float32 ``(4, 2)`` ``(x, y)``, order left, right, top, bottom.
    """
    fg = _as_mask(mask, "extreme_points")  # the same foreground rule as the SDT's
    if not fg.any():
        raise ValueError(f"extreme_points: empty mask of shape {fg.shape}")
    if pert < 0:
        raise ValueError(f"extreme_points: pert must be >= 0, got {pert}")
    if pert > 0 and rng is None:
        raise ValueError("extreme_points: pert > 0 needs an rng")
    if ties not in TIE_RULES:
        raise ValueError(f"extreme_points: ties must be one of {TIE_RULES}, got {ties!r}")
    h, w = fg.shape
    cols, rows = np.flatnonzero(fg.any(0)), np.flatnonzero(fg.any(1))
    x0, x1, y0, y1 = cols[0], cols[-1], rows[0], rows[-1]

    def pick(cands):
        idx = np.flatnonzero(cands)
        if rng is not None:
            return idx[rng.integers(len(idx))]
        return idx[{"first": 0, "middle": len(idx) // 2, "last": -1}[ties]]

    pts = np.array(
        [
            [x0, pick(fg[:, x0])],
            [x1, pick(fg[:, x1])],
            [pick(fg[y0, :]), y0],
            [pick(fg[y1, :]), y1],
        ],
        np.float32,
    )
    if rng is not None and pert > 0:
        pts += rng.integers(-pert, pert + 1, size=(4, 2)).astype(np.float32)
        pts = np.clip(pts, 0.0, np.array([w - 1, h - 1], np.float32))
    return pts


def normalize_image(crop: np.ndarray) -> np.ndarray:
    """``(R, R, C)`` crop in [0, 255] -> float32 ``(R, R, 3)``: /255, grey -> 3 channels,
    then the ImageNet mean/std per channel (the backbone's convention)."""
    x = np.asarray(crop, np.float32) / 255.0
    if x.ndim == 2:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def scaled_margin(points, pixels: int, fraction: float) -> int:
    """``max(pixels, round(fraction * L))`` px, L = the longer side of the points' box.

    The crop margin (``relax``) and the training jitter (``pert``) scale with the
    object this way when ``fraction > 0``; ``fraction = 0`` is the authors' fixed value.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    extent = float(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]))) + 1.0
    return int(max(int(pixels), round(float(fraction) * extent)))


# The crop's intensity range: its 1st and 99th percentiles (a few outlier pixels, a
# click marker, a bright vessel, do not count), over at most this many pixels of the box
# (a strided sample: a large box's percentiles move by a fraction of a grey level).
_RANGE_PERCENTILES = (1.0, 99.0)
_RANGE_SAMPLES = 128 * 128
# At most this gain: a flat box (a uniform background, 2-3 grey levels of noise or
# quantisation) is not blown up into strong edges that are not there.
_MAX_GAIN = 4.0


def stretch_contrast(crop, image, box, floor: float) -> np.ndarray:
    """Stretches a low-contrast crop so that its intensity range spans ``floor`` levels.

    ``lo, hi`` = the 1st / 99th percentiles of the image pixels inside ``box`` (the
    part of it inside the image). When ``hi - lo < floor`` the crop is scaled by
    ``k = min(floor / (hi - lo), 4)`` about ``mid = (lo + hi) / 2``, and ``mid`` moved just far
    enough to keep the stretched range inside [0, 255]; a crop with
    a wider range is returned unchanged. The whole image's window (a CT mapped from
    -1000 to +1000 HU, a dim ultrasound frame) then no longer decides how faint an
    organ's edge looks to the network. One map for all channels (colour is kept).

    Args:
      crop: ``(R, R)`` or ``(R, R, C)`` float, grey levels of ``image`` (zero padding
        outside it, which stays at 0 or below before the clip).
      image: ``(H, W)`` or ``(H, W, C)`` values in [0, 255], the crop's source.
      box: int ``(4,)`` ``(y0, x0, y1, x1)``, the crop's box in ``image`` px.
      floor: grey levels in [0, 255]; 0 returns the crop unchanged.

    Returns:
      float32, the shape of ``crop``, values in [0, 255].
    """
    floor = float(floor)
    if not 0 <= floor <= 255:
        raise ValueError(f"stretch_contrast: floor must be in [0, 255] grey levels, got {floor}")
    out = np.asarray(crop, np.float32)
    if floor == 0:
        return out
    img = np.asarray(image)
    y0, x0, y1, x1 = box_window(box, img.shape[:2])
    if y1 <= y0 or x1 <= x0:
        raise ValueError(
            f"stretch_contrast: box {tuple(int(v) for v in box)} lies outside the image"
        )
    stride = max(1, int(np.ceil(np.sqrt((y1 - y0) * (x1 - x0) / _RANGE_SAMPLES))))
    window = np.asarray(img[y0:y1:stride, x0:x1:stride], np.float32)
    lo, hi = (float(v) for v in np.percentile(window, _RANGE_PERCENTILES))
    if hi - lo >= floor:
        return out
    gain = min(floor / max(hi - lo, 1e-6), _MAX_GAIN)
    mid = 0.5 * (lo + hi)
    half = 0.5 * gain * (hi - lo)
    centre = min(max(mid, half), 255.0 - half)
    return np.clip(centre + (out - mid) * np.float32(gain), 0.0, 255.0).astype(np.float32)


def crop_inputs(
    image,
    points,
    *,
    relax: int,
    relax_fraction: float,
    resolution: int,
    contrast_floor: float = 0.0,
) -> dict[str, np.ndarray]:
    """The network's view of one object: the crop around its four clicks.

    ``crop_box(points, margin)`` with ``margin = scaled_margin(points, relax,
    relax_fraction)`` -> ``crop_and_resize`` to ``resolution`` (bilinear, zero
    padding outside the image) -> :func:`stretch_contrast` -> ``normalize_image``; the
    points in crop px. Training,
    evaluation and prediction all call this (the guidance channel is built from
    ``points`` on the device, ``inference.model_inputs``).

    Args:
      image: ``(H, W, C)`` values in [0, 255] (C = 1 or 3).
      points: ``(4, 2)`` ``(x, y)`` image px, order left, right, top, bottom.
      relax, relax_fraction: crop margin (px, and fraction of the object's size);
      resolution: R.
      contrast_floor: grey levels a low-contrast crop is stretched to (0 = off).

    Returns:
      dict: ``image`` ``(R, R, 3)`` float32 normalised, ``points`` ``(4, 2)`` float32
      crop px, ``box`` int64 ``(y0, x0, y1, x1)`` in image px.
    """
    box = crop_box(points, np.shape(image), relax=scaled_margin(points, relax, relax_fraction))
    crop = crop_and_resize(image, box, resolution, order=1)
    crop = stretch_contrast(crop, image, box, contrast_floor)
    return {
        "image": normalize_image(crop),
        "points": points_to_crop(points, box, resolution),
        "box": box,
    }


# --------------------------------------------------------------------------
# Crop geometry
# --------------------------------------------------------------------------
def crop_box(points, image_shape, relax: int) -> np.ndarray:
    """Bounding box of the points enlarged by ``relax`` px on each side.

    For integer points: ``x0 = min x - relax``, ``x1 = max x + relax + 1``
    (end-exclusive), rows likewise; fractional points are widened to whole
    pixels (floor / ceil). The box may extend beyond the image.

    Args:
      points: ``(N, 2)`` ``(x, y)`` inside the image (usually the 4 extreme points).
      image_shape: ``(H, W)`` or ``(H, W, C)``.
      relax: margin in px (>= 0); authors: 10 (prostate/fundus).

    Returns:
      int64 ``(4,)`` = ``(y0, x0, y1, x1)``.

    Raises:
      ValueError: bad shapes, or points outside the image (named).
    """
    relax = _as_int(relax, "relax", "crop_box", 0)
    pts = validate_points(points, image_shape)
    x0 = int(np.floor(pts[:, 0].min())) - relax
    y0 = int(np.floor(pts[:, 1].min())) - relax
    x1 = int(np.ceil(pts[:, 0].max())) + relax + 1
    y1 = int(np.ceil(pts[:, 1].max())) + relax + 1
    return np.array([y0, x0, y1, x1], dtype=np.int64)


def crop_to_image_coords(c, start, extent, resolution):
    """Crop pixel coordinate -> image pixel coordinate along one axis.

    ``c`` in crop px, ``start`` = box start (y0 or x0), ``extent`` = box size
    (h or w), ``resolution`` = crop size R. Pixel-centre convention:
    ``start + (c + 0.5) * extent / R - 0.5``.
    """
    return start + (np.asarray(c, dtype=np.float64) + 0.5) * (extent / resolution) - 0.5


def image_to_crop_coords(p, start, extent, resolution):
    """Inverse of :func:`crop_to_image_coords`:
    ``(p - start + 0.5) * R / extent - 0.5``."""
    return (np.asarray(p, dtype=np.float64) - start + 0.5) * (resolution / extent) - 0.5


def crop_and_resize(image, box, resolution: int, order: int = 1) -> np.ndarray:
    """Crop ``box`` from ``image`` (zero outside the image) and resize to R x R.

    Samples the zero-padded image at the crop's pixel centres mapped by
    :func:`crop_to_image_coords` (``scipy.ndimage.map_coordinates``, mode
    ``grid-constant``: exactly "pad with zeros, then interpolate"). When
    upsampling, the outermost crop pixels interpolate with the image pixels
    just outside the box (not a replicated box edge).

    Args:
      image: ``(H, W)`` or ``(H, W, C)`` bool/int/float.
      box: int ``(4,)`` ``(y0, x0, y1, x1)``, end-exclusive (from :func:`crop_box`).
      resolution: R (>= 1).
      order: 1 = bilinear (images, targets), 0 = nearest (masks).

    Returns:
      ``(R, R)`` or ``(R, R, C)`` float32.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(
            f"crop_and_resize: image must be (H, W) or (H, W, C), got shape {img.shape}"
        )
    if not (
        img.dtype == bool
        or np.issubdtype(img.dtype, np.integer)
        or np.issubdtype(img.dtype, np.floating)
    ):
        raise ValueError(
            f"crop_and_resize: image must be bool, integer or float, got dtype {img.dtype}"
        )
    b = _as_box(box, "crop_and_resize")
    r = _as_int(resolution, "resolution", "crop_and_resize", 1)
    if order not in (0, 1):
        raise ValueError(
            f"crop_and_resize: order must be 0 (nearest) or 1 (bilinear), got {order!r}"
        )
    y0, x0, y1, x1 = (int(v) for v in b)
    ys = crop_to_image_coords(np.arange(r), y0, y1 - y0, r)
    xs = crop_to_image_coords(np.arange(r), x0, x1 - x0, r)
    coords = np.stack(np.meshgrid(ys, xs, indexing="ij"))  # (2, R, R)
    img = img.astype(np.float32)
    chans = img[..., None] if img.ndim == 2 else img
    out = np.stack(
        [
            ndimage.map_coordinates(
                chans[..., k], coords, order=order, mode="grid-constant", cval=0.0
            )
            for k in range(chans.shape[-1])
        ],
        axis=-1,
    )
    return (out[..., 0] if img.ndim == 2 else out).astype(np.float32)


def points_to_crop(points, box, resolution: int) -> np.ndarray:
    """Image ``(x, y)`` points -> crop pixel coordinates (same convention as
    :func:`crop_and_resize`).

    Args:
      points: ``(N, 2)`` ``(x, y)`` image px.
      box: int ``(4,)`` ``(y0, x0, y1, x1)``.
      resolution: R.

    Returns:
      ``(N, 2)`` float32 ``(x, y)`` in crop px (not rounded).
    """
    pts = _as_points(points, "points_to_crop")
    b = _as_box(box, "points_to_crop")
    r = _as_int(resolution, "resolution", "points_to_crop", 1)
    y0, x0, y1, x1 = (int(v) for v in b)
    cx = image_to_crop_coords(pts[:, 0], x0, x1 - x0, r)
    cy = image_to_crop_coords(pts[:, 1], y0, y1 - y0, r)
    return np.stack([cx, cy], axis=-1).astype(np.float32)


def box_window(box, image_shape) -> tuple[int, int, int, int]:
    """The part ``(y0, x0, y1, x1)`` of a box that lies inside the image (may be empty)."""
    b = _as_box(box, "box_window")
    h, w = _as_image_shape(image_shape, "box_window")
    y0, x0, y1, x1 = (int(v) for v in b)
    return max(y0, 0), max(x0, 0), max(min(y1, h), max(y0, 0)), max(min(x1, w), max(x0, 0))


def paste_back_window(phi_crop, box, image_shape, order: int = 1):
    """The crop's level set resampled onto the image pixels of its box, and no more.

    Returns ``(window, values)``: ``window = box_window(box, image_shape)`` and
    ``values`` float32 of the window's shape. Memory grows with the object, not with
    the image (:func:`paste_back` embeds this in a full image).
    """
    phi = np.asarray(phi_crop)
    if phi.ndim != 2:
        raise ValueError(f"paste_back: phi_crop must be 2-D (R, R), got shape {phi.shape}")
    if not (np.issubdtype(phi.dtype, np.floating) or np.issubdtype(phi.dtype, np.integer)):
        raise ValueError(f"paste_back: phi_crop must be real, got dtype {phi.dtype}")
    if order not in (0, 1):
        raise ValueError(f"paste_back: order must be 0 (nearest) or 1 (bilinear), got {order!r}")
    b = _as_box(box, "paste_back")
    win = box_window(b, image_shape)
    vy0, vx0, vy1, vx1 = win
    if vy1 <= vy0 or vx1 <= vx0:
        return win, np.zeros((max(vy1 - vy0, 0), max(vx1 - vx0, 0)), np.float32)
    y0, x0, y1, x1 = (int(v) for v in b)
    cy = image_to_crop_coords(np.arange(vy0, vy1), y0, y1 - y0, phi.shape[0])
    cx = image_to_crop_coords(np.arange(vx0, vx1), x0, x1 - x0, phi.shape[1])
    coords = np.stack(np.meshgrid(cy, cx, indexing="ij"))
    vals = ndimage.map_coordinates(phi.astype(np.float32), coords, order=order, mode="nearest")
    return win, vals.astype(np.float32)


def paste_back(phi_crop, box, image_shape, background: float, order: int = 1) -> np.ndarray:
    """Resize a crop's level set back to its box and paste it into the image.

    Every image pixel inside ``box`` (and inside the image) samples
    ``phi_crop`` at :func:`image_to_crop_coords` of its centre (bilinear for
    ``order=1``, nearest for 0; the crop's edge is replicated for the half
    pixel beyond its outermost centres). Pixels outside the box get
    ``background`` (positive = outside the object; authors: 20).

    Args:
      phi_crop: ``(Rh, Rw)`` real (usually ``(R, R)``).
      box: int ``(4,)`` ``(y0, x0, y1, x1)`` used for the crop.
      image_shape: ``(H, W)`` or ``(H, W, C)`` of the full image.
      background: value outside the box.
      order: 1 bilinear, 0 nearest.

    Returns:
      ``(H, W)`` float32.
    """
    h, w = _as_image_shape(image_shape, "paste_back")
    if not (isinstance(background, numbers.Real) and np.isfinite(background)):
        raise ValueError(f"paste_back: background must be a finite number, got {background!r}")
    (vy0, vx0, vy1, vx1), vals = paste_back_window(phi_crop, box, (h, w), order)
    out = np.full((h, w), float(background), dtype=np.float32)
    out[vy0:vy1, vx0:vx1] = vals
    return out


def polygon_mask_window(points, image_shape):
    """The four-point polygon evaluated only on the image pixels of its bounding box.

    Returns ``(window, mask)`` with ``window = (y0, x0, y1, x1)`` inside the image and
    ``mask`` bool of the window's shape (see :func:`polygon_mask`).
    """
    pts = _as_points(points, "polygon_mask")
    if pts.shape != (4, 2):
        raise ValueError(f"polygon_mask: points must have shape (4, 2), got {pts.shape}")
    h, w = _as_image_shape(image_shape, "polygon_mask")
    y0 = max(int(np.floor(pts[:, 1].min())) - 1, 0)
    x0 = max(int(np.floor(pts[:, 0].min())) - 1, 0)
    y1 = min(int(np.ceil(pts[:, 1].max())) + 2, h)
    x1 = min(int(np.ceil(pts[:, 0].max())) + 2, w)
    if y1 <= y0 or x1 <= x0:
        return (y0, x0, max(y1, y0), max(x1, x0)), np.zeros(
            (max(y1 - y0, 0), max(x1 - x0, 0)), bool
        )
    poly = pts[[0, 2, 1, 3]].astype(np.float64)  # left, top, right, bottom
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    inside = np.zeros(yy.shape, bool)
    near = np.zeros(yy.shape, bool)
    for (ax, ay), (bx, by) in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        crosses = (ay > yy) != (by > yy)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = ax + (yy - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (xx < x_cross)
        dx, dy = bx - ax, by - ay
        t = np.clip(((xx - ax) * dx + (yy - ay) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
        near |= np.hypot(xx - (ax + t * dx), yy - (ay + t * dy)) <= 0.5
    return (y0, x0, y1, x1), inside | near


def polygon_mask(points, image_shape) -> np.ndarray:
    """The filled quadrilateral through the four extreme points (the trivial baseline).

    The polygon visits the points in the order left, top, right, bottom. A pixel is
    inside when its centre is inside the polygon (even-odd rule) or within half a
    pixel of an edge, so the four points themselves always belong to the mask.

    Args:
      points: ``(4, 2)`` ``(x, y)`` image px, order left, right, top, bottom.
      image_shape: ``(H, W)`` (or ``(H, W, C)``).

    Returns:
      ``(H, W)`` bool.
    """
    h, w = _as_image_shape(image_shape, "polygon_mask")
    (y0, x0, y1, x1), win = polygon_mask_window(points, (h, w))
    out = np.zeros((h, w), bool)
    out[y0:y1, x0:x1] = win
    return out
