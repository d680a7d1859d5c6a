"""Brush edits: pixels an annotator paints into (or erases from) an object's mask by hand.

Where the clicks cannot get the contour right (a model without corrective clicks, a
boundary no edge shows), the annotator paints the last pixels. An edit is one disc
`(x, y, r, sign)` in image pixels (pixel centres at integers; a pixel is in the disc
when its centre is within `r` of `(x, y)`), `sign` +1 paints the object, -1 erases it;
a stroke is the discs along the pointer's path. Edits act after the model, on their
slice only, in the order given: they are the annotator's last word, kept with the
clicks in the saved annotation and painted again from them on every save.
"""

from __future__ import annotations

import math

import numpy as np

MAX_RADIUS = 64.0  # image px
MAX_EDITS = 4096  # discs per object and slice in one request


def check(edits, shape: tuple[int, int], what: str) -> np.ndarray:
    """`edits` as a `(N, 4)` float array, or ValueError naming `what` and the problem.

    Args:
      edits: `[[x, y, r, sign], ...]`.
      shape: `(H, W)` of the slice they are painted on; each centre must lie on it.
      what: how the message names the edits ("object 2, slice 5").
    """
    for i, e in enumerate(edits):
        if len(e) != 4:
            raise ValueError(f"{what}: brush edit {i + 1} must be [x, y, radius, sign], got {e!r}")
    if len(edits) > MAX_EDITS:
        raise ValueError(f"{what}: {len(edits)} brush edits, more than {MAX_EDITS}")
    arr = np.asarray(edits, np.float64).reshape(len(edits), 4)
    for i, (x, y, r, s) in enumerate(arr):
        if not np.isfinite([x, y, r]).all():
            raise ValueError(f"{what}: brush edit {i + 1} is not finite")
        if s not in (1.0, -1.0):
            raise ValueError(f"{what}: brush edit {i + 1}: sign must be 1 (paint) or -1 (erase)")
        if not 0 < r <= MAX_RADIUS:
            raise ValueError(f"{what}: brush edit {i + 1}: radius {r:g} not in (0, {MAX_RADIUS:g}]")
        if not (-0.5 <= x <= shape[1] - 0.5 and -0.5 <= y <= shape[0] - 0.5):
            raise ValueError(
                f"{what}: brush edit {i + 1} at ({x:g}, {y:g}) is outside the image "
                f"({shape[1]} x {shape[0]})"
            )
    return arr


def paint(mask: np.ndarray, edits: np.ndarray) -> np.ndarray:
    """`mask` `(H, W)` bool with the discs of `edits` (`check`ed, `(N, 4)`) painted in
    order; a new array."""
    out = np.array(mask, dtype=bool, copy=True)
    h, w = out.shape
    for x, y, r, s in edits:
        y0, y1 = max(0, math.ceil(y - r)), min(h, math.floor(y + r) + 1)
        x0, x1 = max(0, math.ceil(x - r)), min(w, math.floor(x + r) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        out[y0:y1, x0:x1][(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = s > 0
    return out
