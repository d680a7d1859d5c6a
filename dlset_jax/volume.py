"""A whole 3-D structure from four clicks on one slice: slice-by-slice propagation.

    res = volume.propagate(seg, vol, start=40, points=pts, extent=(31, 52))
    res.labels                     # (S, H, W) bool, the structure in every slice
    res.slices[k]                  # per-slice facts: source, points, area, why it stopped

The start slice is segmented from its four clicks (and its corrective clicks, if any).
Then, in both directions, each next slice is segmented from the extreme points of the
previous slice's mask: the model's answer on one slice gives the clicks of the next.
The mask kept for a propagated slice lies halfway between the model's answers on it
and on the slice before (`prior_weight`, `fuse_with_previous`): clicks taken from a
neighbouring slice are a pixel or two off, and the model follows its clicks, so each
answer carries its own error, while a structure changes little from one slice to the
next. The next slice's clicks still come from the model's own answer, so a structure
that moves is followed and the smoothing does not compound. Slices with corrective
clicks keep the model's answer (the user has said where the contour goes).
With `passes=2` the slice is segmented once more from the extreme points of that first
answer (the previous points moved onto this slice by the model's own prediction); on
the Colin27 + AAL test slabs that was 0.8-1.4 DSC points worse than one pass with each
of three models (`scripts/interactive_benchmark.py`, 2026-12-02), so one pass is the
default. Propagation stops at the given extent (the first and last slice of the
structure, clicked by the user), or where the object vanishes: the mask is empty, its
four points fall within one pixel, or its area drops below `vanish_fraction` of the
previous slice's. Corrective clicks on any slice (`corrections={slice: clicks}`) are
used when propagation reaches that slice, so they re-propagate everything beyond it
(`repropagate` re-runs only that part of an earlier result).

Slices are along axis 0 of `vol` (`(S, H, W)` grey or `(S, H, W, 3)`); the caller
chooses the axis (`segment_files.read_input` for files).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from dlset_jax import segmenter, targets

__all__ = ["VolumeResult", "fuse_with_previous", "propagate", "repropagate"]

# The propagation's defaults, written once (`propagate`, `repropagate`).
PASSES = 1
VANISH_FRACTION = 0.15
# Chosen on 100 structures of 8-slice windows away from the benchmark's test slabs
# (Colin27 + all AAL regions, the inia19 macaque brain + NeuroMaps; volumetric DSC
# from 6 clicks: 0 / 0.3 / 0.5 / 0.7 gave 65.8 / 66.1 / 67.5 / 67.2 %, the per-slice
# bound 75.1). Fusing with the previous *kept* mask instead (the prior compounding)
# gave 68.1 there but lost the hippocampi on the test slabs (docs/history.md).
PRIOR_WEIGHT = 0.5


@dataclasses.dataclass
class VolumeResult:
    """`labels` `(S, H, W)` bool; `slices`: one dict per slice the structure is in,
    in slice order (`slice`, `source` = "clicks" | "propagated", `points`, `area_px`,
    `corrections`); `stops`: why propagation ended on each side (`below`, `above`)."""

    labels: np.ndarray
    slices: list[dict]
    stops: dict
    start: int
    extent: tuple[int, int] | None


def _check(vol, start, extent):
    vol = np.asarray(vol)
    if vol.ndim not in (3, 4):
        raise ValueError(f"volume must be (S, H, W) or (S, H, W, 3), got shape {vol.shape}")
    n = vol.shape[0]
    if not (isinstance(start, (int, np.integer)) and 0 <= start < n):
        raise ValueError(f"start slice {start!r} is out of range: the volume has slices 0..{n - 1}")
    if extent is not None:
        lo, hi = (int(v) for v in extent)
        if not (0 <= lo <= hi < n):
            raise ValueError(
                f"extent {tuple(extent)} must be (first, last) slices with 0 <= first <= "
                f"last <= {n - 1}"
            )
        if not lo <= start <= hi:
            raise ValueError(f"start slice {start} lies outside the extent ({lo}, {hi})")
        extent = (lo, hi)
    return vol, int(start), extent


def _check_corrections(seg, corrections, vol, extent):
    """Every slice's corrective clicks checked before any slice is segmented: the slice
    in the volume and inside the extent (propagation never reaches one outside), the
    clicks inside the image, and the model taking them."""
    n = vol.shape[0]
    out = {}
    for s, c in (corrections or {}).items():
        if not (isinstance(s, (int, np.integer)) and 0 <= s < n):
            raise ValueError(
                f"corrective clicks for slice {s!r}: out of range, the volume has slices 0..{n - 1}"
            )
        if extent is not None and not extent[0] <= s <= extent[1]:
            raise ValueError(
                f"corrective clicks for slice {s}: outside the extent {extent}, where "
                "propagation never reaches"
            )
        try:
            c = segmenter.check_corrections(c, vol.shape[1:3])
        except ValueError as e:
            raise ValueError(f"slice {s}: {e}") from None
        if len(c):  # a slice given no clicks is propagated like any other
            out[int(s)] = c
    seg.check_accepts(list(out.values()))
    return out


def fuse_with_previous(answer, previous, weight: float) -> np.ndarray:
    """The mask between a slice's answer and the previous slice's mask.

    The zero level of `(1 - weight) * d(answer) + weight * d(previous)`, where `d` is the
    signed Euclidean distance to the mask's edge (px, negative inside):
    each contour point moves `weight` of the way from the answer's contour to the
    previous one's (two concentric discs of radii r0 and r1 give radius
    `(1 - weight) * r0 + weight * r1`). Pure numpy; computed in the box around both
    masks, which holds every pixel that can change.

    Args:
      answer, previous: `(H, W)` bool masks, not empty.
      weight: in [0, 1]; 0 = the answer, 1 = the previous mask.

    Returns:
      `(H, W)` bool.
    """
    answer, previous = np.asarray(answer, bool), np.asarray(previous, bool)
    if answer.shape != previous.shape or answer.ndim != 2:
        raise ValueError(
            f"fuse_with_previous: masks must be 2-D of one shape, got {answer.shape} and "
            f"{previous.shape}"
        )
    _check_prior_weight(weight)
    if weight == 0.0 or not previous.any():
        return answer.copy()
    if weight == 1.0 or not answer.any():
        return previous.copy()
    ys, xs = np.nonzero(answer | previous)
    y0, x0 = max(ys.min() - 2, 0), max(xs.min() - 2, 0)
    y1, x1 = ys.max() + 3, xs.max() + 3
    a, p = answer[y0:y1, x0:x1], previous[y0:y1, x0:x1]
    fused = (1.0 - weight) * _signed_distance(a) + weight * _signed_distance(p)
    out = np.zeros_like(answer)
    out[y0:y1, x0:x1] = fused <= 0
    return out


def _check_prior_weight(weight) -> None:
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"prior_weight must be in [0, 1], got {weight!r}")


def _signed_distance(mask):
    # the boundary halfway between pixel centres, where the mask changes: a mask is
    # its own fusion, and the fused contour keeps no half-pixel bias (the contour-pixel
    # convention of targets.signed_distance would shrink every propagated slice)
    return ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)


def _segment(seg, image, points, clicks, spacing):
    o = seg.segment(image, [points], spacing, corrections=[clicks]).objects[0]
    return o.mask, o


def _points_of(mask):
    """The mask's extreme points, or None when there is nothing left to click."""
    if not mask.any():
        return None
    pts = targets.extreme_points(mask)
    if np.ptp(pts[:, 0]) <= 1 and np.ptp(pts[:, 1]) <= 1:
        return None
    return pts


def _walk(seg, vol, labels, facts, frm, step, limit, corrections, spacing, opts):
    """Propagates from slice `frm` (already segmented) towards `limit` (inclusive)."""
    passes, vanish_fraction, prior_weight = opts
    prev = labels[frm]
    s = frm + step
    while (s <= limit) if step > 0 else (s >= limit):
        pts = _points_of(prev)
        if pts is None:
            return f"vanished after slice {s - step}"
        for k in range(passes):
            clicks = corrections.get(s) if k == passes - 1 else None
            mask, o = _segment(seg, vol[s], pts, clicks, spacing)
            pts = _points_of(mask)
            if pts is None:
                break
        if pts is None or mask.sum() < vanish_fraction * prev.sum():
            return f"vanished at slice {s}"
        # `prev` stays the model's own answer: the next clicks come from it
        labels[s] = mask if s in corrections else fuse_with_previous(mask, prev, prior_weight)
        facts[s] = _fact(s, "propagated", o, labels[s])
        prev = mask
        s += step
    return "extent" if limit is not None else "volume edge"


def _fact(s, source, o, kept):
    """The per-slice summary: the clicks the model was given, the kept mask's area."""
    return {
        "slice": s,
        "source": source,
        "points": o.points.tolist(),
        "area_px": int(kept.sum()),
        "corrections": o.corrections.tolist(),
        "warnings": list(o.warnings),
    }


def propagate(
    seg,
    vol,
    start: int,
    points,
    *,
    extent=None,
    corrections=None,
    spacing=None,
    passes: int = PASSES,
    vanish_fraction: float = VANISH_FRACTION,
    prior_weight: float = PRIOR_WEIGHT,
) -> VolumeResult:
    """Segments one structure through a volume from four clicks on slice `start`.

    Args:
      seg: a `segmenter.Segmenter`.
      vol: `(S, H, W)` or `(S, H, W, 3)` image volume, slices along axis 0.
      start: the clicked slice; points: its `(4, 2)` `(x, y)` extreme points.
      extent: optional `(first, last)` slices of the structure (inclusive).
      corrections: optional `{slice: (K, 3) clicks (x, y, sign)}` (models with clicks).
      spacing: in-plane pixel size for the per-slice areas (as `Segmenter.segment`).
      passes: segmentations per propagated slice (see the module doc).
      vanish_fraction: stop where the area falls below this share of the previous
        slice's (without an extent, the object's end).
      prior_weight: how far each propagated slice's mask is drawn from the model's
        answer on it towards its answer on the previous slice (`fuse_with_previous`;
        0 = the answer alone).

    Returns:
      VolumeResult.

    Raises:
      ValueError naming the problem (slice or extent out of range, bad clicks).
    """
    vol, start, extent = _check(vol, start, extent)
    if passes not in (1, 2):
        raise ValueError(f"passes must be 1 or 2, got {passes!r}")
    _check_prior_weight(prior_weight)  # before any slice is segmented
    opts = (passes, vanish_fraction, prior_weight)
    n = vol.shape[0]
    corrections = _check_corrections(seg, corrections, vol, extent)
    labels = np.zeros(vol.shape[:3], bool)
    mask, o = _segment(seg, vol[start], points, corrections.get(start), spacing)
    labels[start] = mask
    facts = {start: _fact(start, "clicks", o, mask)}
    lo, hi = extent if extent is not None else (0, n - 1)
    stops = {
        "below": _walk(seg, vol, labels, facts, start, -1, lo, corrections, spacing, opts),
        "above": _walk(seg, vol, labels, facts, start, +1, hi, corrections, spacing, opts),
    }
    if extent is None:
        stops = {k: ("volume edge" if v == "extent" else v) for k, v in stops.items()}
    return VolumeResult(labels, [facts[s] for s in sorted(facts)], stops, start, extent)


def repropagate(
    seg,
    vol,
    result: VolumeResult,
    slice_index: int,
    clicks,
    *,
    spacing=None,
    passes: int = PASSES,
    vanish_fraction: float = VANISH_FRACTION,
    prior_weight: float = PRIOR_WEIGHT,
) -> VolumeResult:
    """`result` with corrective `clicks` on `slice_index`: that slice is segmented again
    from its points and the clicks, and everything beyond it (away from the start slice)
    re-propagated; the slices between the start and it are kept."""
    vol = np.asarray(vol)
    facts = {f["slice"]: f for f in result.slices}
    if slice_index not in facts:
        raise ValueError(
            f"slice {slice_index} holds no part of the structure (slices "
            f"{min(facts)}..{max(facts)}): add clicks on a segmented slice, or start there"
        )
    if slice_index == result.start:  # both directions start here
        return propagate(
            seg,
            vol,
            result.start,
            np.asarray(facts[slice_index]["points"]),
            extent=result.extent,
            corrections={slice_index: clicks},
            spacing=spacing,
            passes=passes,
            vanish_fraction=vanish_fraction,
            prior_weight=prior_weight,
        )
    labels = result.labels.copy()
    step = 1 if slice_index > result.start else -1
    side = "above" if step > 0 else "below"
    n = vol.shape[0]
    lo, hi = result.extent if result.extent is not None else (0, n - 1)
    limit = hi if step > 0 else lo
    # forget the old answers from this slice outwards
    for s in list(facts):
        if (s - slice_index) * step > 0:
            del facts[s]
            labels[s] = False
    pts = np.asarray(facts[slice_index]["points"])
    corr = {slice_index: clicks}
    mask, o = _segment(seg, vol[slice_index], pts, clicks, spacing)
    labels[slice_index] = mask
    facts[slice_index] = _fact(slice_index, facts[slice_index]["source"], o, mask)
    stops = dict(result.stops)
    opts = (passes, vanish_fraction, prior_weight)
    stops[side] = _walk(seg, vol, labels, facts, slice_index, step, limit, corr, spacing, opts)
    if result.extent is None and stops[side] == "extent":
        stops[side] = "volume edge"
    return VolumeResult(
        labels, [facts[s] for s in sorted(facts)], stops, result.start, result.extent
    )
