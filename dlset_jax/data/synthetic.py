"""Procedural data sets with exact ground truth: MR-like prostate slices and fundus crops.

Every example is a pure function of ``(seed, split, index)``: the generator is
seeded with ``numpy.random.default_rng([seed, split_code, index])``, so an
example does not depend on how many others were generated before it.

The images are made hard on purpose (the parts of the method must matter):

* blurred object edges, with stretches where the edge contrast fades to nothing
  (the contour is invisible there and only the shape prior / clicks help);
* a smooth multiplicative bias field (intensity inhomogeneity);
* additive noise;
* neighbouring structures of similar intensity touching or nearly touching the
  object.

Each generator returns a dict with ``image`` (H, W, C) uint8, ``masks``
(N, H, W) uint8 in {0, 1}, ``classes`` (N,) int32 (index into the class-name
list), ``spacing`` (2,) float32 mm (row, col).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "PROSTATE_CLASSES",
    "FUNDUS_CLASSES",
    "SPLIT_CODES",
    "example_rng",
    "star_radius",
    "prostate_slice",
    "fundus_crop",
]

PROSTATE_CLASSES = ("prostate",)
FUNDUS_CLASSES = ("optic_disc", "optic_cup")
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of example ``index`` of ``split`` (order independent)."""
    return np.random.default_rng([int(seed), SPLIT_CODES[split], int(index)])


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------
def _smooth_periodic(rng, n_harmonics: int, amplitude: float, decay: float = 1.3):
    """Random smooth periodic function f(theta) as Fourier coefficients."""
    k = np.arange(2, 2 + n_harmonics)
    amps = amplitude * rng.uniform(0.3, 1.0, n_harmonics) / k**decay
    phases = rng.uniform(0, 2 * np.pi, n_harmonics)
    return k, amps, phases


def _eval_periodic(theta, coeffs):
    k, amps, phases = coeffs
    return np.sum(
        amps[:, None, None] * np.cos(k[:, None, None] * theta[None] + phases[:, None, None]), axis=0
    )


def star_radius(theta, r0: float, coeffs) -> np.ndarray:
    """Radius of a smooth star-shaped contour: ``r0 * (1 + sum_k a_k cos(k t + p_k))``."""
    return r0 * (1.0 + _eval_periodic(theta, coeffs))


def _polar(h, w, cy, cx, sy=1.0, sx=1.0, angle=0.0):
    """Polar coordinates (r, theta) of every pixel around (cy, cx) after an
    anisotropic scaling (sy, sx) in a frame rotated by ``angle``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u = (c * dx + s * dy) / sx
    v = (-s * dx + c * dy) / sy
    return np.hypot(u, v), np.arctan2(v, u)


def _low_freq_field(rng, h, w, scale: float, strength: float) -> np.ndarray:
    """Smooth random field with zero mean and roughly unit std times ``strength``."""
    small = rng.standard_normal((max(2, int(h / scale)) + 2, max(2, int(w / scale)) + 2))
    field = ndimage.zoom(small, (h / (small.shape[0] - 2), w / (small.shape[1] - 2)), order=3)
    field = field[:h, :w]
    field = field - field.mean()
    return strength * field / (field.std() + 1e-8)


def _bias_field(rng, h, w, strength: float) -> np.ndarray:
    """Multiplicative intensity inhomogeneity: exp of a random low-order polynomial."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    yy, xx = yy - 0.5, xx - 0.5
    c = rng.normal(0, 1, 6)
    poly = c[0] * xx + c[1] * yy + c[2] * xx * yy + c[3] * xx**2 + c[4] * yy**2 + 0.5 * c[5] * xx**3
    poly = poly / (np.abs(poly).max() + 1e-8)
    return np.exp(strength * poly)


def _edge_visibility(rng, theta, n_gaps: int) -> np.ndarray:
    """Per-angle edge contrast in [0, 1]: 1 mostly, fading to ~0 over ``n_gaps`` arcs."""
    vis = np.ones_like(theta)
    for _ in range(n_gaps):
        centre = rng.uniform(-np.pi, np.pi)
        width = rng.uniform(0.25, 0.7)
        d = np.angle(np.exp(1j * (theta - centre)))
        vis = vis * (1.0 - 0.9 * np.exp(-0.5 * (d / width) ** 2))
    return vis


def _to_uint8(x) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# Prostate-like MR slice
# --------------------------------------------------------------------------
def prostate_slice(rng: np.random.Generator) -> dict:
    """One grey MR-like slice with one gland-like object.

    Size 160-192 px square (multiples of 16), isotropic spacing 0.6-1.0 mm; the
    gland is a smooth star-shaped region (radius about 12-40 px) with a darker
    central zone, blurred and partly missing edges; a rectum-like and a
    bladder-like blob of similar intensity sit next to it; muscle/fat texture,
    a bias field and Rician-like noise cover the rest.
    """
    size = int(rng.choice([160, 176, 192]))
    h = w = size
    spacing = float(rng.uniform(0.6, 1.0))
    r0 = float(rng.uniform(0.07, 0.2)) * size
    cy = rng.uniform(0.35, 0.65) * h
    cx = rng.uniform(0.35, 0.65) * w
    sy, sx = rng.uniform(0.75, 1.0), rng.uniform(0.9, 1.25)
    angle = rng.uniform(-0.4, 0.4)
    coeffs = _smooth_periodic(rng, 5, 0.22)
    r, th = _polar(h, w, cy, cx, sy, sx, angle)
    radius = star_radius(th, r0, coeffs)
    mask = r <= radius  # exact ground truth

    # Background: body outline, fat/muscle texture.
    body_r, _ = _polar(h, w, h / 2, w / 2, 0.42 * h, 0.48 * w)
    body = 1.0 / (1.0 + np.exp((body_r - 1.0) / 0.02))
    tissue = 95 + 25 * _low_freq_field(rng, h, w, 12, 1.0) + 12 * _low_freq_field(rng, h, w, 4, 1.0)
    img = tissue * body + 10 * (1 - body)

    gland_level = rng.uniform(115, 150)
    # Neighbouring structures of similar intensity (rectum below, bladder above,
    # pelvic muscles at the sides), placed just outside the gland.
    for _ in range(int(rng.integers(2, 4))):
        phi = rng.uniform(-np.pi, np.pi)
        rad_at = float(star_radius(np.array([[phi]]), r0, coeffs)[0, 0])
        nr = rng.uniform(0.4, 0.9) * r0
        gap = rng.uniform(-0.1, 0.25) * r0
        ny = cy + (rad_at * sy + nr + gap) * np.sin(phi)
        nx = cx + (rad_at * sx + nr + gap) * np.cos(phi)
        rr, _ = _polar(
            h, w, ny, nx, nr * rng.uniform(0.7, 1.2), nr * rng.uniform(0.7, 1.4), rng.uniform(-1, 1)
        )
        blob = ndimage.gaussian_filter((rr <= 1.0).astype(np.float64), rng.uniform(1.0, 2.5))
        blob = blob * ~mask  # never over the gland
        img = img * (1 - blob) + blob * (gland_level + rng.uniform(-15, 15))

    # The gland: layer with edge contrast that fades over some arcs.
    inner = np.clip(1 - r / (0.55 * radius), 0, 1)  # darker central zone
    texture = 8 * _low_freq_field(rng, h, w, 3, 1.0)
    gland_val = gland_level - 25 * inner + texture
    vis = _edge_visibility(rng, th, int(rng.integers(1, 3)))
    outside_val = img
    # Where the edge is invisible the surrounding tissue takes the gland's level.
    outside_val = outside_val * vis + (1 - vis) * (gland_level - 5 + texture)
    soft = ndimage.gaussian_filter(mask.astype(np.float64), rng.uniform(1.0, 2.8))
    img = soft * gland_val + (1 - soft) * outside_val
    img = ndimage.gaussian_filter(img, 0.7)

    img = img * _bias_field(rng, h, w, rng.uniform(0.25, 0.5))
    sigma_n = rng.uniform(5, 11)
    n1 = rng.normal(0, sigma_n, (h, w))
    n2 = rng.normal(0, sigma_n, (h, w))
    img = np.sqrt((img + n1) ** 2 + n2**2)  # Rician magnitude noise
    return {
        "image": _to_uint8(img)[..., None],
        "masks": mask[None].astype(np.uint8),
        "classes": np.array([0], np.int32),
        "spacing": np.array([spacing, spacing], np.float32),
    }


# --------------------------------------------------------------------------
# Fundus crop around the optic disc
# --------------------------------------------------------------------------
def _draw_vessels(rng, h, w, cy, cx, disc_r, n):
    """Vessel map in [0, 1]: random smooth curves leaving the disc centre."""
    out = np.zeros((h, w))
    for _ in range(n):
        ang = rng.uniform(-np.pi, np.pi)
        pts = []
        y, x = cy + rng.normal(0, 0.15 * disc_r), cx + rng.normal(0, 0.15 * disc_r)
        turn = rng.normal(0, 0.003)
        for _ in range(int(1.6 * max(h, w))):
            pts.append((y, x))
            ang += turn + rng.normal(0, 0.012)
            y += np.sin(ang)
            x += np.cos(ang)
            if not (-5 <= y < h + 5 and -5 <= x < w + 5):
                break
        line = np.zeros((h, w), bool)
        p = np.round(np.array(pts)).astype(int)
        ok = (p[:, 0] >= 0) & (p[:, 0] < h) & (p[:, 1] >= 0) & (p[:, 1] < w)
        line[p[ok, 0], p[ok, 1]] = True
        if not line.any():
            continue
        width = rng.uniform(1.5, 4.5)
        d = ndimage.distance_transform_edt(~line)
        out = np.maximum(out, np.clip(width / 2 + 0.5 - d, 0, 1))
        # Branch: a thinner vessel leaving part-way along.
        if len(pts) > 40 and rng.uniform() < 0.6:
            by, bx = pts[int(rng.integers(20, len(pts)))]
            bang = ang + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
            bp = []
            for _ in range(int(0.6 * max(h, w))):
                bp.append((by, bx))
                bang += rng.normal(0, 0.015)
                by += np.sin(bang)
                bx += np.cos(bang)
            bp = np.round(np.array(bp)).astype(int)
            ok = (bp[:, 0] >= 0) & (bp[:, 0] < h) & (bp[:, 1] >= 0) & (bp[:, 1] < w)
            bl = np.zeros((h, w), bool)
            bl[bp[ok, 0], bp[ok, 1]] = True
            if bl.any():
                d = ndimage.distance_transform_edt(~bl)
                out = np.maximum(out, np.clip(0.6 * width / 2 + 0.5 - d, 0, 1))
    return ndimage.gaussian_filter(out, 0.6)


def fundus_crop(rng: np.random.Generator) -> dict:
    """One RGB fundus-like crop with optic disc (class 0) and optic cup (class 1).

    Size 224-288 px square; the disc (radius 35-60 px, smooth star-shaped) holds
    the cup (30-75 % of the disc radius, same centre, so it is always strictly
    inside); vessels leave the cup and cross the rim; a bright peripapillary
    atrophy crescent of disc-like colour touches the disc on one side; uneven
    illumination, blur and noise. Spacing is that of a 2124 px / 45 degree
    fundus camera, about 0.0067 mm per px, times the crop's down-sampling.
    """
    size = int(rng.choice([224, 256, 288]))
    h = w = size
    spacing = float(rng.uniform(0.010, 0.016))
    disc_r = rng.uniform(0.13, 0.21) * size
    cy = rng.uniform(0.42, 0.58) * h
    cx = rng.uniform(0.42, 0.58) * w
    sy, sx = rng.uniform(1.0, 1.15), rng.uniform(0.9, 1.0)
    coeffs = _smooth_periodic(rng, 4, 0.12)
    r, th = _polar(h, w, cy, cx, sy, sx, rng.uniform(-0.3, 0.3))
    disc_radius = star_radius(th, disc_r, coeffs)
    disc = r <= disc_radius
    frac = rng.uniform(0.3, 0.7) + _eval_periodic(th, _smooth_periodic(rng, 3, 0.15))
    frac = np.clip(frac, 0.2, 0.8)
    cup = r <= frac * disc_radius  # frac < 1: nested in the disc

    # Retina background (orange-red) with choroidal texture.
    base = np.array([rng.uniform(150, 190), rng.uniform(60, 85), rng.uniform(25, 45)])
    tex = _low_freq_field(rng, h, w, 10, 1.0)
    img = base[None, None, :] * (1 + 0.08 * tex[..., None])

    # Peripapillary atrophy: bright crescent of disc-like colour outside the disc.
    disc_col = np.array([rng.uniform(215, 240), rng.uniform(150, 180), rng.uniform(90, 120)])
    phi = rng.uniform(-np.pi, np.pi)
    d_ang = np.angle(np.exp(1j * (th - phi)))
    crescent = (
        (r > disc_radius)
        & (r < disc_radius * rng.uniform(1.15, 1.35))
        & (np.abs(d_ang) < rng.uniform(0.5, 1.2))
    )
    cres = ndimage.gaussian_filter(crescent.astype(np.float64), 2.0)
    img = img * (1 - cres[..., None]) + cres[..., None] * disc_col * rng.uniform(0.85, 1.0)

    # Disc, with edge contrast fading over arcs.
    vis = _edge_visibility(rng, th, int(rng.integers(1, 3)))[..., None]
    soft_disc = ndimage.gaussian_filter(disc.astype(np.float64), rng.uniform(1.5, 3.5))[..., None]
    outside = img * vis + (1 - vis) * disc_col * 0.85
    img = soft_disc * disc_col + (1 - soft_disc) * outside

    # Cup: brighter and paler, very blurred edge (the hard part of REFUGE).
    cup_col = np.minimum(
        disc_col + np.array([rng.uniform(10, 25), rng.uniform(25, 50), rng.uniform(30, 60)]), 255
    )
    soft_cup = ndimage.gaussian_filter(cup.astype(np.float64), rng.uniform(2.5, 5.0))[..., None]
    img = soft_cup * cup_col + (1 - soft_cup) * img

    # Vessels cross the rim (dark red).
    ves = _draw_vessels(rng, h, w, cy, cx, disc_r, int(rng.integers(4, 8)))[..., None]
    vcol = np.array([rng.uniform(90, 130), rng.uniform(20, 40), rng.uniform(15, 30)])
    img = img * (1 - 0.85 * ves) + 0.85 * ves * vcol

    # Uneven illumination (vignetting + smooth field), blur, noise.
    illum = _bias_field(rng, h, w, rng.uniform(0.2, 0.45))
    vy, vx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    oy, ox = rng.uniform(-0.6, 1.6, 2)
    vign = 1.0 - rng.uniform(0.15, 0.35) * ((vy - oy) ** 2 + (vx - ox) ** 2)
    img = img * (illum * np.clip(vign, 0.4, 1.0))[..., None]
    img = ndimage.gaussian_filter(img, (0.8, 0.8, 0))
    img = img + rng.normal(0, rng.uniform(3, 7), img.shape)
    return {
        "image": _to_uint8(img),
        "masks": np.stack([disc, cup]).astype(np.uint8),
        "classes": np.array([0, 1], np.int32),
        "spacing": np.array([spacing, spacing], np.float32),
    }
