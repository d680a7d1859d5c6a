"""Tests of dlset_jax.levelset against the authors' outputs, analytic cases and numpy."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import EVOLVE, FIXTURES
from jax.test_util import check_grads

from dlset_jax import levelset as ls

REF = np.load(FIXTURES / "authors_levelset.npz")
CASES = json.loads(str(REF["meta"]))["cases"]
TOL = 1e-4  # relative to the largest magnitude of the reference array


def nhwc(a):
    return jnp.asarray(np.moveaxis(a, 1, -1))


def rel_err(a, ref, keep=None):
    a, ref = np.asarray(a), np.asarray(ref)
    diff = np.abs(a - ref)
    if keep is not None:
        diff, ref = diff[keep], ref[keep]
    return float(diff.max() / max(np.abs(ref).max(), 1e-30))


def case_inputs(c):
    p = c["prefix"]
    g = nhwc(REF[p + "g"]) if c["has_g"] else None
    return nhwc(REF[p + "phi0"]), nhwc(REF[p + "vf"]), g, nhwc(REF[p + "W"])


def objective(corners, steps, weights):
    def f(phi0, motion, g):
        phi_t = ls.evolve(phi0, motion, g, steps=steps, **{**EVOLVE, "corners": corners})
        return jnp.sum(ls.heaviside(phi_t, -1.0) * weights), phi_t

    return f


def corner_mask(shape, steps):
    """False within 2T+2 px of the two corners the authors' boundary leaves unset."""
    b, h, w, c = shape
    keep = np.ones(shape, bool)
    r = 2 * steps + 2
    keep[:, :r, w - r :] = False
    keep[:, h - r :, :r] = False
    return keep


@pytest.mark.parametrize("case", CASES, ids=[c["prefix"][:-1] for c in CASES])
@pytest.mark.parametrize("corners", ["authors", "full"])
def test_parity_with_authors(case, corners):
    p, steps = case["prefix"], case["T"]
    phi0, motion, g, weights = case_inputs(case)
    argnums = (0, 1, 2) if g is not None else (0, 1)
    (obj, phi_t), grads = jax.value_and_grad(
        objective(corners, steps, weights), argnums=argnums, has_aux=True
    )(phi0, motion, g)
    keep = None if corners == "authors" else corner_mask(phi0.shape, steps)
    keep2 = None if keep is None else np.repeat(keep, 2, axis=-1)
    assert rel_err(phi_t, nhwc(REF[p + "phiT_f32"]), keep) <= TOL
    if corners == "authors":
        assert abs(float(obj) - float(REF[p + "obj_f32"])) <= TOL * abs(float(REF[p + "obj_f32"]))
        # Gradients of the objective reach every pixel, corners included, so they are
        # compared only for the exact reproduction of the authors' boundary condition.
        assert rel_err(grads[0], nhwc(REF[p + "grad_phi0_f32"])) <= TOL
        if steps > 0:
            assert rel_err(grads[1], nhwc(REF[p + "grad_vf_f32"])) <= TOL
            if g is not None:
                assert rel_err(grads[2], nhwc(REF[p + "grad_g_f32"])) <= TOL
        else:
            assert not np.any(np.asarray(grads[1]))
    else:
        assert rel_err(grads[1], nhwc(REF[p + "grad_vf_f32"]), keep2) <= 1e-3 or steps == 0
        # Outside the corners' reach (a step's stencil spreads 2 px; forward and
        # backward each travel T steps) the full corners give the authors' gradients.
        far = corner_mask(phi0.shape, 2 * steps + 1)
        assert rel_err(grads[0], nhwc(REF[p + "grad_phi0_f32"]), far) <= TOL
        if g is not None and steps > 0:
            assert rel_err(grads[2], nhwc(REF[p + "grad_g_f32"]), far) <= TOL


@pytest.mark.parametrize("prefix", ["c2_", "c8_"])
def test_trajectory_matches_authors_steps(prefix):
    case = next(c for c in CASES if c["prefix"] == prefix)
    phi0, motion, g, _ = case_inputs(case)
    phi_t, traj = ls.evolve(
        phi0, motion, g, steps=5, return_trajectory=True, **{**EVOLVE, "corners": "authors"}
    )
    ref = np.moveaxis(REF[prefix + "phi_steps_f32"], 2, -1)
    assert traj.shape == ref.shape == (6,) + phi0.shape
    for k in range(6):
        assert rel_err(traj[k], ref[k]) <= TOL, k
    np.testing.assert_array_equal(traj[0], phi0)
    np.testing.assert_array_equal(traj[-1], phi_t)


def test_building_blocks_match_authors():
    x = jnp.asarray(REF["unit_input"][:, 0])  # (N, H, W)
    ref = lambda k: REF[f"unit_{k}_f32"][:, 0]
    gy, gx = ls.gradient(x)
    assert rel_err(gy, ref("grad_y")) <= TOL
    assert rel_err(gx, ref("grad_x")) <= TOL
    assert rel_err(ls.neumann_boundary(x, "authors"), ref("neumann")) <= TOL
    assert rel_err(ls.laplacian(x), ref("del2")) <= TOL
    assert rel_err(ls.divergence(gx, gy), ref("div_of_gx_gy")) <= TOL
    assert rel_err(ls.distance_regularization(x), ref("distreg_p2")) <= TOL
    assert rel_err(ls.dirac(x, 0.3, 30.0), ref("dirac_s03")) <= TOL
    assert rel_err(ls.heaviside(x, -1.0), ref("heaviside_em1")) <= TOL


# ---------------------------------------------------------------- analytic cases


def circle_sdf(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    return np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) - r


def test_gradient_matches_numpy_and_is_exact_on_linear():
    x = np.random.default_rng(0).normal(size=(2, 7, 9)).astype(np.float32)
    gy, gx = ls.gradient(jnp.asarray(x))
    ny, nx = np.gradient(x, axis=(1, 2))
    np.testing.assert_allclose(gy, ny, atol=1e-6)
    np.testing.assert_allclose(gx, nx, atol=1e-6)
    yy, xx = np.mgrid[:8, :10].astype(np.float32)
    gy, gx = ls.gradient(jnp.asarray(3 * yy - 2 * xx))
    np.testing.assert_allclose(gy, 3.0, atol=1e-5)
    np.testing.assert_allclose(gx, -2.0, atol=1e-5)


def test_laplacian_of_quadratic_is_constant():
    yy, xx = np.mgrid[:9, :11].astype(np.float32)
    lap = ls.laplacian(jnp.asarray(yy**2 + 2 * xx**2))
    np.testing.assert_allclose(lap, 6.0, atol=1e-4)  # borders replicate the interior


@pytest.mark.parametrize("radius", [8.0, 15.0, 25.0])
def test_curvature_of_circle_is_one_over_radius(radius):
    phi = circle_sdf(96, 96, 47.3, 48.6, radius)
    kappa = np.asarray(ls.curvature(jnp.asarray(phi, jnp.float32)))
    band = np.abs(phi) < 0.5  # pixels on the contour, all far from the border
    np.testing.assert_allclose(kappa[band].mean(), 1 / radius, rtol=0.03)
    assert np.all(np.abs(kappa[band] - 1 / radius) < 0.15 / radius)


def test_heaviside_properties():
    v = jnp.linspace(-50, 50, 1001)
    h = ls.heaviside(v, -1.0)
    assert float(ls.heaviside(jnp.zeros(()), -1.0)) == pytest.approx(0.5)
    assert np.all(np.diff(np.asarray(h)) < 0)  # decreasing: -> 1 inside (phi < 0)
    assert np.all((h > 0) & (h < 1))
    np.testing.assert_allclose(h + ls.heaviside(-v, -1.0), 1.0, atol=1e-6)


def test_dirac_band_properties():
    phi = jnp.linspace(-12, 12, 24001)
    d = np.asarray(ls.dirac(phi, 0.3, 30.0))
    assert d.max() == pytest.approx(1.0)
    assert float(ls.dirac(jnp.zeros(()), 0.3, 30.0)) == 1.0
    assert np.all(d[np.abs(np.asarray(phi)) >= 9.0] == 0)  # support |phi| < 9 px
    np.testing.assert_allclose(d, d[::-1], atol=1e-6)
    integral = np.trapezoid(d, np.asarray(phi))
    assert integral == pytest.approx(0.3 * 30.0, rel=1e-3)  # = ratio * dt_max


def _radius(phi):
    return np.sqrt((np.asarray(phi)[..., 0] <= 0).sum(axis=(-2, -1)) / np.pi)


def test_circle_grows_at_the_rate_the_update_implies():
    # Constant speed c against the outward normal, no curvature (g = 0): on the
    # contour phi_new = phi - timestep * c * dirac(phi), so the new zero crossing is at
    # the old distance x solving x = timestep * c * dirac(x).
    r0, c, dt = 20.0, 0.5, 5.0
    phi = circle_sdf(96, 96, 48.0, 48.0, r0)
    yy, xx = np.mgrid[:96, :96]
    norm = np.maximum(np.hypot(yy - 48.0, xx - 48.0), 1e-6)
    motion = -c * np.stack([(yy - 48.0) / norm, (xx - 48.0) / norm], -1)
    phi0 = jnp.asarray(phi[None, ..., None], jnp.float32)
    motion = jnp.asarray(motion[None], jnp.float32)
    g = jnp.zeros_like(phi0)
    x = 0.0
    for _ in range(50):
        x = dt * c * float(ls.dirac(jnp.asarray(x), 0.3, 30.0))
    phi1 = ls.evolve(phi0, motion, g, steps=1, **{**EVOLVE, "timestep": dt})
    assert _radius(phi1)[0] - _radius(phi0)[0] == pytest.approx(x, abs=0.25)
    radii = [_radius(ls.evolve(phi0, motion, g, steps=t, **EVOLVE))[0] for t in range(5)]
    assert np.all(np.diff(radii) > 0.5)


def numpy_step(phi, vy, vx, g, timestep=5.0, ratio=0.3, dt_max=30.0):
    """Independent float64 numpy implementation of one step (full Neumann corners)."""
    p = phi.copy()
    p[[0, -1], :] = p[[2, -3], :]
    p[:, [0, -1]] = p[:, [2, -3]]
    py, px = np.gradient(p)
    s = np.sqrt(px**2 + py**2 + 1e-10)
    kappa = np.gradient(px / s, axis=1) + np.gradient(py / s, axis=0)
    u = p / dt_max
    delta = np.where(np.abs(u) < ratio, 0.5 * (1 + np.cos(np.pi * u / ratio)), 0.0)
    p = p + timestep * delta * (vx * px + vy * py + g * kappa)
    py, px = np.gradient(p)
    s = np.sqrt(px**2 + py**2 + 1e-10)
    ps = np.where(s <= 1, np.sin(2 * np.pi * s) / (2 * np.pi), s - 1)
    ps = np.where(np.abs(ps) <= 1e-10, 1.0, ps)
    dps = ps / np.where(s <= 1e-10, 1.0, s)
    lap = np.pad(
        p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * p[1:-1, 1:-1], 1, mode="edge"
    )
    reg = np.gradient((dps - 1) * px, axis=1) + np.gradient((dps - 1) * py, axis=0) + lap
    return p + 0.2 * reg


def test_one_step_matches_numpy_reimplementation():
    rng = np.random.default_rng(1)
    phi = circle_sdf(40, 48, 19.5, 25.0, 12.0) + 0.3 * rng.normal(size=(40, 48))
    vy, vx = rng.normal(size=(2, 40, 48)) * 0.5
    g = rng.uniform(size=(40, 48))
    ref = numpy_step(phi, vy, vx, g)
    out = ls.evolve(
        jnp.asarray(phi[None, ..., None], jnp.float32),
        jnp.asarray(np.stack([vy, vx], -1)[None], jnp.float32),
        jnp.asarray(g[None, ..., None], jnp.float32),
        steps=1,
        **EVOLVE,
    )
    np.testing.assert_allclose(np.asarray(out)[0, ..., 0], ref, atol=2e-4, rtol=1e-4)


# ------------------------------------------------------- transformations and API


def _inputs(b=3, h=24, w=28, seed=0):
    rng = np.random.default_rng(seed)
    phi = np.stack([circle_sdf(h, w, 11 + i, 13 - i, 7 + i) for i in range(b)])
    phi = phi[..., None] + 0.2 * rng.normal(size=(b, h, w, 1))
    motion = rng.normal(size=(b, h, w, 2))
    g = rng.uniform(size=(b, h, w, 1))
    return tuple(jnp.asarray(a, jnp.float32) for a in (phi, motion, g))


def test_steps_zero_returns_phi0():
    phi, motion, g = _inputs()
    np.testing.assert_array_equal(ls.evolve(phi, motion, g, steps=0, **EVOLVE), phi)
    out, traj = ls.evolve(phi, motion, g, steps=0, return_trajectory=True, **EVOLVE)
    assert traj.shape == (1,) + phi.shape


def test_jit_equals_no_jit_and_vmap_equals_loop():
    phi, motion, g = _inputs()
    jitted = ls.evolve(phi, motion, g, steps=3, **EVOLVE)
    with jax.disable_jit():
        eager = ls.evolve(phi, motion, g, steps=3, **EVOLVE)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-4)
    one = lambda p, m, gg: ls.evolve(p[None], m[None], gg[None], steps=3, **EVOLVE)[0]
    vm = jax.vmap(one)(phi, motion, g)
    loop = jnp.stack([one(phi[i], motion[i], g[i]) for i in range(phi.shape[0])])
    np.testing.assert_allclose(vm, loop, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(vm, jitted, rtol=1e-5, atol=1e-4)


def test_gradient_flows_only_where_method_says():
    phi, motion, g = _inputs(b=1)
    f = lambda p, m, gg: jnp.sum(ls.heaviside(ls.evolve(p, m, gg, steps=2, **EVOLVE), -1.0))
    gp, gm, gg = jax.grad(f, argnums=(0, 1, 2))(phi, motion, g)
    for a in (gp, gm, gg):
        assert np.all(np.isfinite(a)) and np.any(a != 0)
    # Outside the Dirac band nothing moves, so g there gets no gradient.
    far = np.abs(np.asarray(phi)) > 20
    assert np.all(np.asarray(gg)[far] == 0)


def test_smooth_building_blocks_have_correct_gradients():
    x = jnp.asarray(circle_sdf(12, 14, 5.5, 6.5, 4.0)[None], jnp.float32)
    check_grads(lambda a: ls.gradient(a)[0], (x,), order=1, modes=["rev"], eps=1e-2)
    check_grads(ls.laplacian, (x,), order=1, modes=["rev"], eps=1e-2)
    check_grads(lambda a: ls.divergence(a, 2 * a), (x,), order=1, modes=["rev"], eps=1e-2)
    check_grads(lambda a: ls.heaviside(a, -1.0), (x,), order=2, eps=1e-2)
    check_grads(ls.curvature, (x,), order=1, modes=["rev"], eps=1e-3, rtol=2e-2)
    inside = jnp.linspace(-8.5, 8.5, 31)  # the band, where dirac is smooth
    check_grads(lambda a: ls.dirac(a, 0.3, 30.0), (inside,), order=1, eps=1e-2)


def test_segment_threshold():
    phi = jnp.asarray([-1.0, 0.0, 0.5, 2.0])
    np.testing.assert_array_equal(ls.segment(phi), [True, True, False, False])
    np.testing.assert_array_equal(ls.segment(phi, 1.0), [True, True, True, False])


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda p, m, g: (p[..., 0], m, g), "phi0 must have rank 4"),
        (lambda p, m, g: (jnp.concatenate([p, p], -1), m, None), "phi0 must have 1"),
        (lambda p, m, g: (p.astype(jnp.int32), m, g), "floating-point"),
        (lambda p, m, g: (p, m[..., :1], g), "motion must have 2"),
        (lambda p, m, g: (p, m[:, :-1], g), "share batch and spatial"),
        (lambda p, m, g: (p, m, g[:, :-1]), "shapes must match"),
        (lambda p, m, g: (p[:, :2, :2], m[:, :2, :2], g[:, :2, :2]), "at least 3x3"),
    ],
)
def test_bad_input_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        ls.evolve(*bad(*_inputs(b=1)), steps=1, **EVOLVE)


def test_bad_steps_and_corners():
    phi, motion, g = _inputs(b=1)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        ls.evolve(phi, motion, g, steps=-1, **EVOLVE)
    with pytest.raises(ValueError, match="corners"):
        ls.evolve(phi, motion, g, steps=1, **{**EVOLVE, "corners": "mirror"})


def test_polynomial_trig_matches_numpy():
    # The evolution uses float32 polynomials for sin/cos/atan (XLA:CPU's are scalar
    # library calls); they must agree with float64 numpy to float32 precision.
    x = np.concatenate(
        [np.linspace(-40, 40, 20001), np.random.default_rng(0).uniform(-1e3, 1e3, 5000)]
    ).astype(np.float32)
    xd = x.astype(np.float64)
    np.testing.assert_allclose(ls._sin(jnp.asarray(x)), np.sin(xd), atol=3e-7)
    np.testing.assert_allclose(ls._cos(jnp.asarray(x)), np.cos(xd), atol=3e-7)
    t = np.concatenate([x, np.array([1e6, -1e6, 0.0], np.float32)])
    np.testing.assert_allclose(ls._atan(jnp.asarray(t)), np.arctan(t.astype(np.float64)), atol=3e-7)
    g = jax.grad(lambda v: jnp.sum(ls._sin(v) + ls._cos(v) + ls._atan(v)))(jnp.asarray(x[:100]))
    expect = np.cos(xd[:100]) - np.sin(xd[:100]) + 1 / (1 + xd[:100] ** 2)
    np.testing.assert_allclose(g, expect, atol=1e-6)
