"""Objects' outlines as closed polylines in image pixels.

The evolution's answer is a level set; its ``phi = threshold`` line is the object's
contour at sub-pixel precision (marching squares on the pixel grid, `contourpy`). That
line is what the annotation tool draws and what polygon formats store (COCO, CVAT,
GeoJSON): `predict.py` writes it beside the label map. A mask without a level set
(painted by hand, or kept by the 3-D propagation) is outlined halfway between its
inside and outside pixel centres.

Coordinates are ``(x, y)`` image px with the pixel-centre convention of the clicks
(pixel ``(r, c)`` is the point ``(c, r)``). Every pixel centre is inside the polylines
(even-odd rule: a hole is a polyline of its own) exactly where the mask is, up to
pixels whose level set equals the threshold.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_lists", "level_lines", "mask_outline"]

_MIN_STEP = 1e-3  # the closing ring's least step above the threshold


def level_lines(phi, threshold: float = 0.0, origin=(0, 0)) -> list[np.ndarray]:
    """The closed ``phi = threshold`` lines of a level set (inside: ``phi <= threshold``).

    Args:
      phi: ``(h, w)`` float level set on a window of the image's pixels.
      threshold: the level of the contour (the mask's threshold).
      origin: ``(row, col)`` of the window's first pixel in the image.

    Returns:
      list of ``(N, 2)`` float64 ``(x, y)`` image px, each closed (its last point is
      its first), in marching-squares order; empty when nothing is inside.
    """
    import contourpy

    z = np.asarray(phi, np.float64)
    if z.ndim != 2 or not z.size:
        raise ValueError(f"level_lines: phi must be a non-empty (h, w) array, got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("level_lines: phi has NaN or infinite values")
    # A ring of "outside" closes the lines that reach the window's edge, halfway between
    # an edge pixel and the one beyond it (the threshold mirrored about the edge value,
    # as a mask's outline runs): the window ends the object, and no farther than that.
    t = float(threshold)
    z = np.pad(z, 1, mode="edge")
    ring = np.ones(z.shape, bool)
    ring[1:-1, 1:-1] = False
    z[ring] = t + np.maximum(np.abs(z[ring] - t), _MIN_STEP)
    lines = contourpy.contour_generator(z=z).lines(t)
    shift = np.array([origin[1] - 1, origin[0] - 1], np.float64)
    return [np.asarray(line, np.float64) + shift for line in lines if len(line) > 2]


def mask_outline(mask) -> list[np.ndarray]:
    """The outline of a bool ``(H, W)`` mask, halfway between inside and outside pixel
    centres, as :func:`level_lines` polylines (an empty mask: none)."""
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"mask_outline: mask must be (H, W), got {m.shape}")
    ys, xs = np.nonzero(m)
    if not len(ys):
        return []
    y0, x0 = int(ys.min()), int(xs.min())
    window = m[y0 : ys.max() + 1, x0 : xs.max() + 1]
    return level_lines(np.where(window, -0.5, 0.5), 0.0, (y0, x0))


def as_lists(lines) -> list:
    """Polylines for JSON: lists of ``[x, y]`` image px (not rounded: a vertex rounded
    may move the line across a pixel centre it passes close to)."""
    return [np.asarray(line).tolist() for line in lines]
