"""Level set evolution (DELSE / the paper's section 3.3), as pure JAX functions.

Conventions (see docs/method.md of the project):
  * Arrays are NHWC. A level set `phi` is `(B, H, W, 1)`, negative INSIDE the object,
    positive outside, zero on the contour; units are pixels (it is a truncated
    signed distance truncated at `dt_max` px).
  * The motion field is `(B, H, W, 2)`: channel 0 is the y (row) component, channel 1
    the x (column) component, in pixels per unit of `timestep` per unit gradient.
  * Finite differences follow `numpy.gradient`: central differences inside, one-sided
    at the border, returned as (d/dy, d/dx).

The building blocks work on `(..., H, W)` arrays (no channel axis) so that they read
like the formulas; `evolve` handles the NHWC wrapping.

Gradients follow the authors' implementation: the curvature term and the input of the
distance regularisation are `stop_gradient`, so the evolution is differentiable with
respect to the initial level set, the motion field and the modulation map `g` only
through the Dirac-weighted motion/curvature update.

`evolve` is a `jax.lax.scan` of the functions below, on every backend. They are
written for what XLA:CPU compiles well (`benchmarks/levelset.py` measures them):
  * sin/cos/atan are float32 polynomials (`_quadrants`, `_atan`): XLA:CPU calls a
    scalar library function for `jnp.sin`/`jnp.cos`/`jnp.arctan` (~9 ns per element,
    most of the evolution's time); the polynomials vectorise and agree to ~1 ulp.
  * Boundary conditions are selects against broadcast one-pixel strips, not
    concatenations: XLA:CPU never fuses a concatenation along the minor (W) axis.
Gradients are those of autodiff; the parity tests check them against the authors'
fixtures.

Parameters that the config owns (`levelset.*`, `data.dt_max`) have no defaults here:
the config schema (`dlset_jax/config.py`) is their one home.
"""

from __future__ import annotations

import functools
from typing import Literal

import chex
import jax
import jax.numpy as jnp

from dlset_jax import checks

Corners = Literal["full", "authors"]


def _index(x, axis):
    return jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim + axis)


def _set_ends(x, axis, lo, hi):
    """x with index 0 along `axis` replaced by index `lo` and index n-1 by index `hi`.

    A select between x and broadcasts of the two one-pixel strips: XLA:CPU fuses it
    into one pass, whereas a concatenation along the minor (W) axis is a separate copy.
    """
    n = x.shape[axis]
    i = _index(x, axis)
    first = jax.lax.slice_in_dim(x, lo, lo + 1, axis=axis)
    last = jax.lax.slice_in_dim(x, hi, hi + 1, axis=axis)
    return jnp.where(i == 0, first, jnp.where(i == n - 1, last, x))


def gradient(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Finite-difference gradient with `numpy.gradient` rules.

    Args:
      x: `(..., H, W)` array, H and W >= 2.

    Returns:
      `(d/dy, d/dx)`, each shaped like `x`, in units of x per pixel.
    """
    gy = jnp.concatenate(
        [
            x[..., 1:2, :] - x[..., 0:1, :],
            (x[..., 2:, :] - x[..., :-2, :]) / 2,
            x[..., -1:, :] - x[..., -2:-1, :],
        ],
        axis=-2,
    )
    gx = jnp.concatenate(
        [
            x[..., :, 1:2] - x[..., :, 0:1],
            (x[..., :, 2:] - x[..., :, :-2]) / 2,
            x[..., :, -1:] - x[..., :, -2:-1],
        ],
        axis=-1,
    )
    return gy, gx


def divergence(nx: jax.Array, ny: jax.Array) -> jax.Array:
    """Divergence d(nx)/dx + d(ny)/dy of a vector field, `(..., H, W)` each."""
    return gradient(nx)[1] + gradient(ny)[0]


def laplacian(x: jax.Array) -> jax.Array:
    """5-point Laplacian `up + down + left + right - 4 * centre` (not divided by 4).

    Computed on the interior; the one-pixel border replicates the nearest interior value
    (corners take the diagonal interior value), as the authors' `del2`.

    Args:
      x: `(..., H, W)` array, H and W >= 3.
    """
    inner = (
        x[..., :-2, 1:-1]
        + x[..., 2:, 1:-1]
        + x[..., 1:-1, :-2]
        + x[..., 1:-1, 2:]
        - 4 * x[..., 1:-1, 1:-1]
    )
    pad = [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)]
    return jnp.pad(inner, pad, mode="edge")


def curvature(phi: jax.Array) -> jax.Array:
    """Mean curvature `div(grad(phi) / |grad(phi)|)` of the level sets, 1/pixels.

    For a signed distance function of a circle of radius r (negative inside) this is
    `+1/r` on the contour.
    """
    gy, gx = gradient(phi)
    s = jnp.sqrt(gx**2 + gy**2 + 1e-10)
    return divergence(gx / s, gy / s)


def _check_corners(corners) -> None:
    if corners not in ("full", "authors"):
        raise ValueError(f"corners must be 'full' or 'authors', got {corners!r}")


def neumann_boundary(phi: jax.Array, corners: Corners) -> jax.Array:
    """Neumann (mirror) boundary condition on the outer one-pixel frame.

    Rows 0 and H-1 take the values of rows 2 and H-3, columns 0 and W-1 those of columns
    2 and W-3, every corner its diagonal neighbour two pixels in.

    Args:
      phi: `(..., H, W)` array, H and W >= 3.
      corners: "full" sets all four corners. "authors" reproduces the reference
        implementation, which leaves the corners (0, W-1) and (H-1, 0) unchanged.
    """
    _check_corners(corners)
    h, w = phi.shape[-2:]
    out = _set_ends(_set_ends(phi, -2, 2, h - 3), -1, 2, w - 3)
    if corners == "authors":
        i, j = _index(phi, -2), _index(phi, -1)
        keep = ((i == 0) & (j == w - 1)) | ((i == h - 1) & (j == 0))
        out = jnp.where(keep, phi, out)
    return out


def _sin_cos_small(t):
    """`(sin(t), cos(t))` for |t| <= pi/4 + 1e-3, Taylor polynomials (truncation < 1e-12)."""
    z = t * t
    s = t * (
        1
        + z
        * (
            -1 / 6
            + z
            * (
                1 / 120
                + z * (-1 / 5040 + z * (1 / 362880 + z * (-1 / 39916800 + z * (1 / 6227020800))))
            )
        )
    )
    c = 1 + z * (
        -1 / 2
        + z
        * (
            1 / 24
            + z
            * (
                -1 / 720
                + z
                * (1 / 40320 + z * (-1 / 3628800 + z * (1 / 479001600 + z * (-1 / 87178291200))))
            )
        )
    )
    return s, c


# pi / 2 in three parts (Cephes' DP1..DP3, doubled): k * _PIO2_1 and k * _PIO2_2 are
# exact in float32 for the small quadrant numbers k used here.
_PIO2_1, _PIO2_2, _PIO2_3 = 1.5703125, 4.837512969970703125e-4, 7.54978995489188216e-8


def _quadrants(x):
    """sin(x), cos(x) of a float32 `x` with |x| up to ~1e3, to about 1 ulp.

    XLA:CPU lowers `jnp.sin`/`jnp.cos` to scalar library calls (~9 ns per element on
    the team's 2-core machine: 80% of the evolution's time); these polynomials
    vectorise. Like the library, they evaluate sin/cos of the float32 argument as
    given (Cody-Waite reduction by pi/2), so guards on the result (`|p2'(s)| <= 1e-10`
    in the regularisation) trigger exactly where they did before.
    """
    k = jnp.round(x * (2 / jnp.pi))
    r = ((x - k * _PIO2_1) - k * _PIO2_2) - k * _PIO2_3
    s, c = _sin_cos_small(r)
    q = (k - 4 * jnp.floor(k / 4)).astype(jnp.int32)  # quadrant, 0..3
    sin = jnp.where(q == 0, s, jnp.where(q == 1, c, jnp.where(q == 2, -s, -c)))
    cos = jnp.where(q == 0, c, jnp.where(q == 1, -s, jnp.where(q == 2, -c, s)))
    return sin, cos


@jax.custom_jvp
def _sin(x):
    return _quadrants(x)[0]


@jax.custom_jvp
def _cos(x):
    return _quadrants(x)[1]


@_sin.defjvp
def _sin_jvp(primals, tangents):
    s, c = _quadrants(primals[0])
    return s, c * tangents[0]


@_cos.defjvp
def _cos_jvp(primals, tangents):
    s, c = _quadrants(primals[0])
    return c, -s * tangents[0]


def dirac(phi: jax.Array, ratio: float, dt_max: float) -> jax.Array:
    """Band-limited smooth Dirac delta with peak 1.

    `delta = 0.5 * (1 + cos(pi * u / ratio))` for `|u| < ratio`, else 0, with
    `u = phi / dt_max`: support `|phi| < ratio * dt_max` pixels (9 px with the paper's
    0.3 and 30).
    """
    u = phi / dt_max
    f = 0.5 * (1 + _cos(jnp.pi * u / ratio))
    return jnp.where(jnp.abs(u) < ratio, f, jnp.zeros_like(f))


@jax.custom_jvp
def _atan(x):
    """`arctan(x)` (Cephes atanf: 3 intervals, degree-9 odd polynomial, ~2 ulp)."""
    ax = jnp.abs(x)
    big, mid = ax > 2.414213562373095, ax > 0.4142135623730950
    xr = jnp.where(big, -1 / jnp.where(big, ax, 1), jnp.where(mid, (ax - 1) / (ax + 1), ax))
    y0 = jnp.where(big, jnp.pi / 2, jnp.where(mid, jnp.pi / 4, 0.0)).astype(x.dtype)
    z = xr * xr
    p = (
        ((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1
    ) * z * xr + xr
    return jnp.sign(x) * (y0 + p)


@_atan.defjvp
def _atan_jvp(primals, tangents):
    (x,) = primals
    (t,) = tangents
    return _atan(x), t / (1 + x * x)


def heaviside(v: jax.Array, epsilon: float) -> jax.Array:
    """Smooth Heaviside `0.5 * (1 + (2 / pi) * atan(v / epsilon))`, values in (0, 1).

    With a negative `epsilon` (the paper's -1), H -> 1 INSIDE (where phi < 0), so `H(phi_T)` is
    the soft foreground probability.
    """
    return 0.5 * (1 + (2 / jnp.pi) * _atan(v / epsilon))


def distance_regularization(phi: jax.Array) -> jax.Array:
    """DRLSE distance regularisation with the double-well potential p2 (Li et al. 2010).

    `R(phi) = div((dp(s) - 1) * grad(phi)) + laplacian(phi)`, `s = |grad(phi)|`,
    `dp(s) = p2'(s) / s`, `p2'(s) = sin(2 pi s) / (2 pi)` for s <= 1 and `s - 1` above.
    Where `|p2'(s)| <= 1e-10` it is replaced by 1, and where `s <= 1e-10` the division is
    by 1, so `dp -> 1` as `s -> 0` (the reference implementation's guard).

    Args:
      phi: `(..., H, W)` level set, H and W >= 3.

    Returns:
      `(..., H, W)` update direction (pixels per unit step).
    """
    gy, gx = gradient(phi)
    s = jnp.sqrt(gx**2 + gy**2 + 1e-10)
    ps = jnp.where(s <= 1, _sin(2 * jnp.pi * s) / (2 * jnp.pi), s - 1)
    tiny = 1e-10
    ps = jnp.where(jnp.abs(ps) <= tiny, jnp.ones_like(ps), ps)
    s_safe = jnp.where(jnp.abs(s) <= tiny, jnp.ones_like(s), s)
    dps = ps / s_safe
    return divergence(dps * gx - gx, dps * gy - gy) + laplacian(phi)


def _motion_update(phi, vy, vx, g, kappa, timestep, dirac_ratio, dt_max):
    """`phi + timestep * dirac(phi) * (M . grad(phi) + g * kappa)` (kappa held fixed)."""
    gy, gx = gradient(phi)
    internal = kappa if g is None else g * kappa
    delta = dirac(phi, dirac_ratio, dt_max)
    return phi + timestep * delta * (vx * gx + vy * gy + internal)


def evolve_step(
    phi: jax.Array,
    vy: jax.Array,
    vx: jax.Array,
    g: jax.Array | None,
    *,
    timestep: float,
    dirac_ratio: float,
    dt_max: float,
    corners: Corners,
) -> jax.Array:
    """One evolution step on `(..., H, W)` arrays (see `evolve`)."""
    phi = neumann_boundary(phi, corners)
    # The curvature force is treated as a fixed field: no gradient flows through it.
    kappa = jax.lax.stop_gradient(curvature(phi))
    phi = _motion_update(phi, vy, vx, g, kappa, timestep, dirac_ratio, dt_max)
    # Regularisation is evaluated on the post-motion level set, also without gradient.
    return phi + 0.2 * distance_regularization(jax.lax.stop_gradient(phi))


def _validate(phi0, motion, g):
    checks.check_rank("phi0", phi0, 4)
    checks.check_channels("phi0", phi0, 1)
    checks.check_floating("phi0", phi0)
    checks.check_min_spatial("phi0", phi0, 3)
    checks.check_rank("motion", motion, 4)
    checks.check_channels("motion", motion, 2)
    if motion.shape[:3] != phi0.shape[:3]:
        raise ValueError(
            f"motion {motion.shape} and phi0 {phi0.shape} must share batch and spatial dimensions"
        )
    if g is not None:
        checks.check_same_shape(phi0=phi0, g=g)


@functools.partial(
    jax.jit,
    static_argnames=("steps", "timestep", "dirac_ratio", "dt_max", "corners", "return_trajectory"),
)
def evolve(
    phi0: jax.Array,
    motion: jax.Array,
    g: jax.Array | None = None,
    *,
    steps: int,
    timestep: float,
    dirac_ratio: float,
    dt_max: float,
    corners: Corners,
    return_trajectory: bool = False,
):
    """Evolves a level set for `steps` steps under motion, curvature and regularisation.

    One step (`jax.lax.scan` over `steps`):
      1. Neumann boundary condition;
      2. `phi += timestep * dirac(phi) * (M_x phi_x + M_y phi_y + g * sg(kappa))`;
      3. `phi += 0.2 * R(sg(phi))` (DRLSE distance regularisation).

    Args:
      phi0: `(B, H, W, 1)` initial level set in pixels, negative inside.
      motion: `(B, H, W, 2)` motion field, channel 0 = y, channel 1 = x.
      g: `(B, H, W, 1)` curvature modulation in [0, 1], or None for weight 1.
      steps: number of evolution steps T (static); 0 returns `phi0` unchanged.
      timestep: step size of the motion/curvature update.
      dirac_ratio: half-width of the Dirac band as a fraction of `dt_max`.
      dt_max: truncation distance of the signed distance (pixels).
      corners: "full" (correct Neumann corners) or "authors" (reference quirk).
      return_trajectory: also return every level set.

    Returns:
      `phi_T` `(B, H, W, 1)`; with `return_trajectory`, `(phi_T, trajectory)` where
      `trajectory` is `(steps + 1, B, H, W, 1)` and `trajectory[0] == phi0`.
    """
    _validate(phi0, motion, g)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    _check_corners(corners)
    phi = phi0[..., 0]
    vy, vx = motion[..., 0], motion[..., 1]
    gg = None if g is None else g[..., 0]
    step = functools.partial(
        evolve_step,
        vy=vy,
        vx=vx,
        g=gg,
        timestep=timestep,
        dirac_ratio=dirac_ratio,
        dt_max=dt_max,
        corners=corners,
    )

    def body(p, _):
        p = step(p)
        return p, (p if return_trajectory else None)

    phi_t, traj = jax.lax.scan(body, phi, None, length=steps)
    phi_t = phi_t[..., None]
    chex.assert_shape(phi_t, phi0.shape)
    if not return_trajectory:
        return phi_t
    if steps == 0:
        return phi_t, phi0[None]
    return phi_t, jnp.concatenate([phi0[None], traj[..., None]], axis=0)


def segment(phi: jax.Array, threshold: float = 0.0) -> jax.Array:
    """Binary mask `phi <= threshold` (the object is where the level set is negative)."""
    return phi <= threshold


__all__ = [
    "gradient",
    "divergence",
    "laplacian",
    "curvature",
    "neumann_boundary",
    "dirac",
    "heaviside",
    "distance_regularization",
    "evolve_step",
    "evolve",
    "segment",
]
