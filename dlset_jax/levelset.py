"""Level set evolution (DELSE / the paper's section 3.3), as pure JAX functions.

Conventions (see docs/method.md of the project):
  * Arrays are NHWC. A level set `phi` is `(B, H, W, 1)`, negative INSIDE the object,
    positive outside, zero on the contour; units are pixels (it is a truncated
    signed distance, `dt_max` = 30 px by default).
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
"""

from __future__ import annotations

import functools
from typing import Literal

import chex
import jax
import jax.numpy as jnp

from dlset_jax import checks

Corners = Literal["full", "authors"]


def gradient(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Finite-difference gradient with `numpy.gradient` rules.

  Args:
    x: `(..., H, W)` array, H and W >= 2.

  Returns:
    `(d/dy, d/dx)`, each shaped like `x`, in units of x per pixel.
  """
  gy = jnp.concatenate([
      x[..., 1:2, :] - x[..., 0:1, :],
      (x[..., 2:, :] - x[..., :-2, :]) / 2,
      x[..., -1:, :] - x[..., -2:-1, :],
  ], axis=-2)
  gx = jnp.concatenate([
      x[..., :, 1:2] - x[..., :, 0:1],
      (x[..., :, 2:] - x[..., :, :-2]) / 2,
      x[..., :, -1:] - x[..., :, -2:-1],
  ], axis=-1)
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
  inner = (x[..., :-2, 1:-1] + x[..., 2:, 1:-1] + x[..., 1:-1, :-2] +
           x[..., 1:-1, 2:] - 4 * x[..., 1:-1, 1:-1])
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


def neumann_boundary(phi: jax.Array, corners: Corners = "full") -> jax.Array:
  """Neumann (mirror) boundary condition on the outer one-pixel frame.

  Rows 0 and H-1 take the values of rows 2 and H-3, columns 0 and W-1 those of columns
  2 and W-3, every corner its diagonal neighbour two pixels in.

  Args:
    phi: `(..., H, W)` array, H and W >= 3.
    corners: "full" sets all four corners. "authors" reproduces the reference
      implementation, which leaves the corners (0, W-1) and (H-1, 0) unchanged.
  """
  out = jnp.concatenate([phi[..., 2:3, :], phi[..., 1:-1, :], phi[..., -3:-2, :]],
                        axis=-2)
  out = jnp.concatenate([out[..., :, 2:3], out[..., :, 1:-1], out[..., :, -3:-2]],
                        axis=-1)
  if corners == "authors":
    out = out.at[..., 0, -1].set(phi[..., 0, -1])
    out = out.at[..., -1, 0].set(phi[..., -1, 0])
  elif corners != "full":
    raise ValueError(f"corners must be 'full' or 'authors', got {corners!r}")
  return out


def dirac(phi: jax.Array, ratio: float = 0.3, dt_max: float = 30.0) -> jax.Array:
  """Band-limited smooth Dirac delta with peak 1.

  `delta = 0.5 * (1 + cos(pi * u / ratio))` for `|u| < ratio`, else 0, with
  `u = phi / dt_max`: support `|phi| < ratio * dt_max` pixels (9 px by default).
  """
  u = phi / dt_max
  f = 0.5 * (1 + jnp.cos(jnp.pi * u / ratio))
  return jnp.where(jnp.abs(u) < ratio, f, jnp.zeros_like(f))


def heaviside(v: jax.Array, epsilon: float = -1.0) -> jax.Array:
  """Smooth Heaviside `0.5 * (1 + (2 / pi) * atan(v / epsilon))`, values in (0, 1).

  With the default negative `epsilon`, H -> 1 INSIDE (where phi < 0), so `H(phi_T)` is
  the soft foreground probability.
  """
  return 0.5 * (1 + (2 / jnp.pi) * jnp.arctan(v / epsilon))


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
  ps = jnp.where(s <= 1, jnp.sin(2 * jnp.pi * s) / (2 * jnp.pi), s - 1)
  tiny = 1e-10
  ps = jnp.where(jnp.abs(ps) <= tiny, jnp.ones_like(ps), ps)
  s_safe = jnp.where(jnp.abs(s) <= tiny, jnp.ones_like(s), s)
  dps = ps / s_safe
  return divergence(dps * gx - gx, dps * gy - gy) + laplacian(phi)


def evolve_step(phi: jax.Array,
                vy: jax.Array,
                vx: jax.Array,
                g: jax.Array | None,
                *,
                timestep: float = 5.0,
                dirac_ratio: float = 0.3,
                dt_max: float = 30.0,
                corners: Corners = "full") -> jax.Array:
  """One evolution step on `(..., H, W)` arrays (see `evolve`)."""
  phi = neumann_boundary(phi, corners)
  gy, gx = gradient(phi)
  # The curvature force is treated as a fixed field: no gradient flows through it.
  kappa = jax.lax.stop_gradient(curvature(phi))
  internal = kappa if g is None else g * kappa
  delta = dirac(phi, dirac_ratio, dt_max)
  phi = phi + timestep * delta * (vx * gx + vy * gy + internal)
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
    raise ValueError(f"motion {motion.shape} and phi0 {phi0.shape} must share "
                     "batch and spatial dimensions")
  if g is not None:
    checks.check_same_shape(phi0=phi0, g=g)


@functools.partial(
    jax.jit,
    static_argnames=("steps", "timestep", "dirac_ratio", "dt_max", "corners",
                     "return_trajectory"))
def evolve(phi0: jax.Array,
           motion: jax.Array,
           g: jax.Array | None = None,
           *,
           steps: int,
           timestep: float = 5.0,
           dirac_ratio: float = 0.3,
           dt_max: float = 30.0,
           corners: Corners = "full",
           return_trajectory: bool = False):
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
  phi = phi0[..., 0]
  vy, vx = motion[..., 0], motion[..., 1]
  gg = None if g is None else g[..., 0]
  step = functools.partial(evolve_step, vy=vy, vx=vx, g=gg, timestep=timestep,
                           dirac_ratio=dirac_ratio, dt_max=dt_max, corners=corners)

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
    "gradient", "divergence", "laplacian", "curvature", "neumann_boundary", "dirac",
    "heaviside", "distance_regularization", "evolve_step", "evolve", "segment",
]
