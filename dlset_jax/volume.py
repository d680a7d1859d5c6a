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
structure, named by the user; either end may be left open), or where the object
vanishes: the mask is empty, its four points fall within one pixel, its area drops
below `vanish_fraction` of the previous slice's, or it does not overlap the previous
slice's answer; and, on a side whose end the user did not name, where the inside of
the kept mask looks like the clicked slice's surroundings (`appearance` below
`appearance_floor`): past the end of a structure the network still answers a blob near
its clicks, so the area alone does not tell that it has ended. Corrective clicks on
any slice (`corrections={slice: clicks}`) are used when propagation reaches that slice,
so they re-propagate everything beyond it (`repropagate` re-runs only that part of an
earlier result, with the clicks it holds for the slices beyond). Hand edits of a
slice's mask (`edits={slice: edit}`, e.g. the annotation tool's brush) are the user's
last word on that slice: the edited mask is kept, whatever the model answered there,
and the next slice's clicks come from it, so a lobe painted on one slice is followed
beyond it.

Slices are along axis 0 of `vol` (`(S, H, W)` grey or `(S, H, W, 3)`); the caller
chooses the axis (`segment_files.read_input` for files).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
from scipy import ndimage

from dlset_jax import segmenter, targets

__all__ = [
    "VolumeResult",
    "appearance",
    "fuse_with_previous",
    "inside_and_ring",
    "propagate",
    "repropagate",
]

# The propagation's defaults, written once (`propagate`, `repropagate`).
PASSES = 1
VANISH_FRACTION = 0.15
# Where the user names no end, a structure is followed until the inside of its mask
# looks like the clicked slice's surroundings (`appearance` below this floor): the
# network always answers something near its clicks, so the area rule never fired on real
# images (Colin27 + AAL, 50 regions away from the benchmark slabs, no extent: every walk
# ran to the volume's edge, 44.5 slices beyond the label on average, volumetric DSC
# 38.8 %; this floor 46.6 %, 6.0 slices beyond, 7.2 missed; the labels' own ends 57.5 %;
# floors 0.3 / 0.5: 46.0 / 46.5; docs/history.md). 0 turns it off.
APPEARANCE_FLOOR = 0.2
APPEARANCE_RING = 3  # px around the mask that stand for its surroundings

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
    `corrections`); `stops`: why propagation ended on each side (`below`, `above`);
    `corrections`: the user's corrective clicks by slice, also on slices the walk did
    not reach (`repropagate` applies them again)."""

    labels: np.ndarray
    slices: list[dict]
    stops: dict
    start: int
    extent: tuple[int, int] | None
    corrections: dict = dataclasses.field(default_factory=dict)


def _check(vol, start, extent):
    """The volume, the start slice and the extent as `(first, last)` (either may be None:
    not named) or None when neither is named."""
    vol = np.asarray(vol)
    if vol.ndim not in (3, 4):
        raise ValueError(f"volume must be (S, H, W) or (S, H, W, 3), got shape {vol.shape}")
    n = vol.shape[0]
    if not (isinstance(start, (int, np.integer)) and 0 <= start < n):
        raise ValueError(f"start slice {start!r} is out of range: the volume has slices 0..{n - 1}")
    if extent is not None:
        try:
            lo, hi = (None if v is None else int(v) for v in extent)
        except (TypeError, ValueError):
            raise ValueError(f"extent must be (first, last) slices, got {extent!r}") from None
        first, last = (0 if lo is None else lo), (n - 1 if hi is None else hi)
        if not (0 <= first <= last < n):
            raise ValueError(
                f"extent {tuple(extent)} must be (first, last) slices with 0 <= first <= "
                f"last <= {n - 1}"
            )
        if not first <= start <= last:
            raise ValueError(f"start slice {start} lies outside the extent ({lo}, {hi})")
        extent = None if lo is None and hi is None else (lo, hi)
    return vol, int(start), extent


def _limits(extent, n):
    """(first, last) slices propagation may reach: the named ends, else the volume's."""
    lo, hi = extent if extent is not None else (None, None)
    return (0 if lo is None else lo), (n - 1 if hi is None else hi)


def _check_slice(s, n, what: str) -> None:
    """`s` a slice index of a volume of `n` slices, or ValueError naming `what`."""
    if not (isinstance(s, (int, np.integer)) and 0 <= s < n):
        raise ValueError(f"{what} for slice {s!r}: out of range, the volume has slices 0..{n - 1}")


def _check_corrections(seg, corrections, vol, extent):
    """Every slice's corrective clicks checked before any slice is segmented: the slice
    in the volume and inside the extent (propagation never reaches one outside), the
    clicks inside the image, and the model taking them."""
    n = vol.shape[0]
    first, last = _limits(extent, n)
    out = {}
    for s, c in (corrections or {}).items():
        _check_slice(s, n, "corrective clicks")
        if not first <= s <= last:
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


Edit = Callable[[np.ndarray], np.ndarray]


def _check_edits(edits, n) -> dict[int, Edit]:
    """`{slice: edit}` checked: each slice in the volume, each edit a function of a
    `(H, W)` bool mask returning the edited mask."""
    out = {}
    for s, edit in (edits or {}).items():
        _check_slice(s, n, "edits")
        if not callable(edit):
            raise ValueError(f"edits for slice {s}: expected a function mask -> mask, got {edit!r}")
        out[int(s)] = edit
    return out


def _edited(edits, s, mask):
    """Slice `s`'s mask with the user's edits (a new bool array of the same shape)."""
    if s not in edits:
        return mask
    out = np.asarray(edits[s](mask.copy()), bool)
    if out.shape != mask.shape:
        raise ValueError(f"edits for slice {s}: returned shape {out.shape}, not {mask.shape}")
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
    _check_weights(weight)
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


def _check_weights(weight, floor=0.0) -> None:
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"prior_weight must be in [0, 1], got {weight!r}")
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"appearance_floor must be in [0, 1), got {floor!r}")


def inside_and_ring(image, mask, ring: int = APPEARANCE_RING) -> tuple[float, float]:
    """Mean intensity inside `mask` and in the `ring` px around it (grey levels; a
    colour image's channels averaged). `image` `(H, W)` or `(H, W, C)`, `mask` `(H, W)`
    bool, not empty."""
    # only the mask's box grown by the ring can hold either: the rest of the slice is
    # not read (this runs on every propagated slice)
    ys, xs = np.nonzero(mask)
    box = np.s_[
        max(ys.min() - ring, 0) : ys.max() + ring + 1, max(xs.min() - ring, 0) : xs.max() + ring + 1
    ]
    mask = np.asarray(mask)[box]
    grey = np.asarray(image)[box].astype(np.float64)
    grey = grey.mean(-1) if grey.ndim == 3 else grey
    around = ndimage.binary_dilation(mask, iterations=ring) & ~mask
    return float(grey[mask].mean()), float(grey[around].mean()) if around.any() else np.nan


def appearance(image, mask, reference: tuple[float, float]) -> float:
    """Where the mean intensity inside `mask` lies between the clicked slice's
    surroundings (0) and its inside (1): `(in - ring0) / (in0 - ring0)` with
    `reference = (in0, ring0)` from `inside_and_ring` on the clicked slice. An object
    that has ended leaves the mask on what surrounded it: near 0 (either polarity).
    1 where the reference holds no contrast (nothing to compare)."""
    in0, ring0 = reference
    if not abs(in0 - ring0) > 1e-6:
        return 1.0
    return (inside_and_ring(image, mask)[0] - ring0) / (in0 - ring0)


def _signed_distance(mask):
    # the boundary halfway between pixel centres, where the mask changes: a mask is
    # its own fusion, and the fused contour keeps no half-pixel bias (the contour-pixel
    # convention of targets.signed_distance would shrink every propagated slice)
    return ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)


def _segment(seg, image, points, clicks, spacing, clicked: bool = False):
    """One slice. `clicked`: the points are the user's, which the answer must contain;
    points taken from a neighbouring slice's answer are guidance only (honouring them
    too grew the putamina slice by slice: the 3-D benchmark with the interactive round,
    mean 81.5 -> 80.8, putamina 78.6 / 84.7 -> 77.1 / 82.4; docs/history.md, "The
    answer contains its own clicks")."""
    res = seg.segment(image, [points], spacing, corrections=[clicks], honour_points=clicked)
    o = res.objects[0]
    return o.mask, o


def _points_of(mask):
    """The mask's extreme points, or None when there is nothing left to click.

    Where the extreme row or column holds several pixels, the middle one: the answer
    moves with where along a flat side it is clicked, and the middle is where a person
    clicks (from the middle instead of the first: volumetric DSC from 6 clicks on the
    10 deep grey structures of the colin27_aal train slabs 82.2 -> 83.7 with the
    interactive round, 81.9 -> 83.2 with `make train`'s model; the test slabs 81.2 ->
    81.1 and 79.9 -> 79.9; docs/history.md, "Which pixel of a flat side")."""
    if not mask.any():
        return None
    pts = targets.extreme_points(mask, ties="middle")
    if np.ptp(pts[:, 0]) <= 1 and np.ptp(pts[:, 1]) <= 1:
        return None
    return pts


def _walk(seg, vol, labels, facts, frm, step, limit, named, user, spacing, opts):
    """Propagates from slice `frm` (already segmented) towards `limit` (inclusive); where
    the user named no end (`named` False) it also stops at the appearance floor. `user`:
    the `(corrections, edits)` by slice."""
    passes, vanish_fraction, prior_weight, floor, reference = opts
    corrections, edits = user
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
        edited = s in edits  # the user's word: no rule of the walk overrides it
        if not edited and (pts is None or mask.sum() < vanish_fraction * prev.sum()):
            return f"vanished at slice {s}"
        kept = mask if s in corrections else fuse_with_previous(mask, prev, prior_weight)
        kept = _edited(edits, s, kept)
        if not (edited or kept.any()):  # an answer beside, not on, the last slice's
            return f"vanished at slice {s} (the answer does not overlap slice {s - step}'s)"
        if not (named or edited) and s not in corrections and floor > 0:
            if appearance(vol[s], kept, reference) < floor:
                return f"vanished at slice {s} (its inside looks like the clicked slice's surroundings)"
        labels[s] = kept
        facts[s] = _fact(s, "propagated", o, kept, edited)
        # the next clicks come from the model's own answer, or from the edited mask
        prev = kept if edited else mask
        s += step
    return "extent" if named else "volume edge"


def _opts(vol, start, start_mask, passes, vanish_fraction, prior_weight, floor):
    """The walk's settings, with the clicked slice's inside / surroundings intensities
    (the appearance rule's reference; no rule where the clicked slice's mask is empty)."""
    reference = inside_and_ring(vol[start], start_mask) if start_mask.any() else (0.0, 0.0)
    return passes, vanish_fraction, prior_weight, floor, reference


def _fact(s, source, o, kept, edited):
    """The per-slice summary: the clicks the model was given, whether the user edited
    the mask, the kept mask's area."""
    return {
        "slice": s,
        "source": source,
        "points": o.points.tolist(),
        "edited": bool(edited),
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
    edits: Mapping[int, Edit] | None = None,
    spacing=None,
    passes: int = PASSES,
    vanish_fraction: float = VANISH_FRACTION,
    prior_weight: float = PRIOR_WEIGHT,
    appearance_floor: float = APPEARANCE_FLOOR,
) -> VolumeResult:
    """Segments one structure through a volume from four clicks on slice `start`.

    Args:
      seg: a `segmenter.Segmenter`.
      vol: `(S, H, W)` or `(S, H, W, 3)` image volume, slices along axis 0.
      start: the clicked slice; points: its `(4, 2)` `(x, y)` extreme points.
      extent: optional `(first, last)` slices of the structure (inclusive); either may
        be None (not named: that side ends where the structure does).
      corrections: optional `{slice: (K, 3) clicks (x, y, sign)}` (models with clicks).
      edits: optional `{slice: edit}`, `edit(mask) -> mask` on `(H, W)` bool: the
        user's own changes of that slice's mask (any model). Applied where propagation
        reaches the slice; the edited mask is kept (no stopping rule overrides it) and
        gives the next slice's clicks.
      spacing: in-plane pixel size for the per-slice areas (as `Segmenter.segment`).
      passes: segmentations per propagated slice (see the module doc).
      vanish_fraction: stop where the area falls below this share of the previous
        slice's (without an extent, the object's end).
      prior_weight: how far each propagated slice's mask is drawn from the model's
        answer on it towards its answer on the previous slice (`fuse_with_previous`;
        0 = the answer alone).
      appearance_floor: on a side without a named end, stop where the kept mask's
        `appearance` falls below this (0: off; `APPEARANCE_FLOOR`).

    Returns:
      VolumeResult.

    Raises:
      ValueError naming the problem (slice or extent out of range, bad clicks).
    """
    vol, start, extent = _check(vol, start, extent)
    if passes not in (1, 2):
        raise ValueError(f"passes must be 1 or 2, got {passes!r}")
    _check_weights(prior_weight, appearance_floor)  # before any slice is segmented
    n = vol.shape[0]
    corrections = _check_corrections(seg, corrections, vol, extent)
    edits = _check_edits(edits, n)
    labels = np.zeros(vol.shape[:3], bool)
    mask, o = _segment(seg, vol[start], points, corrections.get(start), spacing, clicked=True)
    mask = _edited(edits, start, mask)
    labels[start] = mask
    facts = {start: _fact(start, "clicks", o, mask, start in edits)}
    opts = _opts(vol, start, mask, passes, vanish_fraction, prior_weight, appearance_floor)
    (lo, hi), named = _limits(extent, n), extent or (None, None)
    stops = {}
    user = (corrections, edits)
    for side, step, limit, end in (("below", -1, lo, named[0]), ("above", +1, hi, named[1])):
        stops[side] = _walk(
            seg, vol, labels, facts, start, step, limit, end is not None, user, spacing, opts
        )
    return VolumeResult(
        labels, [facts[s] for s in sorted(facts)], stops, start, extent, corrections
    )


def repropagate(
    seg,
    vol,
    result: VolumeResult,
    slice_index: int,
    clicks,
    *,
    edits: Mapping[int, Edit] | None = None,
    spacing=None,
    passes: int = PASSES,
    vanish_fraction: float = VANISH_FRACTION,
    prior_weight: float = PRIOR_WEIGHT,
    appearance_floor: float = APPEARANCE_FLOOR,
) -> VolumeResult:
    """`result` with corrective `clicks` on `slice_index`: that slice is segmented again
    from its points and the clicks (all of that slice's clicks: they replace the ones it
    had), and everything beyond it (away from the start slice) re-propagated, with the
    corrective clicks `result` holds for those slices; the slices between the start and
    it are kept. `edits`: the structure's hand edits as given to `propagate` (applied
    again where slices are segmented again)."""
    vol = np.asarray(vol)
    _check_weights(prior_weight, appearance_floor)
    edits = _check_edits(edits, vol.shape[0])
    facts = {f["slice"]: f for f in result.slices}
    if slice_index not in facts:
        raise ValueError(
            f"slice {slice_index} holds no part of the structure (slices "
            f"{min(facts)}..{max(facts)}): add clicks on a segmented slice, or start there"
        )
    corr = {**result.corrections, slice_index: clicks}
    if slice_index == result.start:  # both directions start here
        return propagate(
            seg,
            vol,
            result.start,
            np.asarray(facts[slice_index]["points"]),
            extent=result.extent,
            corrections=corr,
            edits=edits,
            spacing=spacing,
            passes=passes,
            vanish_fraction=vanish_fraction,
            prior_weight=prior_weight,
            appearance_floor=appearance_floor,
        )
    labels = result.labels.copy()
    step = 1 if slice_index > result.start else -1
    side = "above" if step > 0 else "below"
    n = vol.shape[0]
    lo, hi = _limits(result.extent, n)
    limit = hi if step > 0 else lo
    named = (result.extent or (None, None))[1 if step > 0 else 0] is not None
    # forget the old answers from this slice outwards
    for s in list(facts):
        if (s - slice_index) * step > 0:
            del facts[s]
            labels[s] = False
    pts = np.asarray(facts[slice_index]["points"])
    corr = _check_corrections(seg, corr, vol, result.extent)
    clicks = corr.get(slice_index)
    clicked = facts[slice_index]["source"] == "clicks"
    mask, o = _segment(seg, vol[slice_index], pts, clicks, spacing, clicked=clicked)
    mask = _edited(edits, slice_index, mask)
    labels[slice_index] = mask
    edited = slice_index in edits
    facts[slice_index] = _fact(slice_index, facts[slice_index]["source"], o, mask, edited)
    stops = dict(result.stops)
    opts = _opts(
        vol,
        result.start,
        result.labels[result.start],
        passes,
        vanish_fraction,
        prior_weight,
        appearance_floor,
    )
    stops[side] = _walk(
        seg, vol, labels, facts, slice_index, step, limit, named, (corr, edits), spacing, opts
    )
    return VolumeResult(
        labels, [facts[s] for s in sorted(facts)], stops, result.start, result.extent, corr
    )
