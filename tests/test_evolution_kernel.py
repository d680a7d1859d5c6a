"""The fused CPU evolution kernel against levelset.evolve's XLA version.

The XLA version is the reference: it is built from the tested building blocks and
matches the authors' outputs (test_levelset.py runs those parity tests on both
implementations). Here: values, trajectories and gradients on odd shapes and both
boundary modes, vmap, data-parallel sharding, and the errors and fallbacks.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, needs_compiler

from dlset_jax import evolution_kernel as ek
from dlset_jax import levelset as ls

pytestmark = needs_compiler


def inputs(b, h, w, seed=0, noise=1.0):
    """A circle's truncated signed distance plus noise, random motion and modulation."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    sdf = np.hypot(yy - h / 2, xx - w / 2) - min(h, w) / 4
    phi = np.clip(sdf, -30, 30)[None] + noise * rng.normal(size=(b, h, w))
    return (
        jnp.asarray(phi[..., None], jnp.float32),
        jnp.asarray(rng.normal(size=(b, h, w, 2)), jnp.float32),
        jnp.asarray(rng.uniform(size=(b, h, w, 1)), jnp.float32),
        jnp.asarray(rng.normal(size=(b, h, w, 1)), jnp.float32),
    )


def max_rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


SHAPES = [(2, 32, 40, 5), (3, 3, 3, 2), (1, 4, 5, 3), (2, 17, 9, 4), (1, 3, 7, 1), (1, 24, 24, 0)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("corners", ["full", "authors"])
def test_values_and_trajectory_match_xla(shape, corners):
    b, h, w, steps = shape
    phi, motion, g, _ = inputs(b, h, w)
    run = lambda impl: ls.evolve(
        phi, motion, g, steps=steps, corners=corners, return_trajectory=True, impl=impl
    )
    (phi_k, traj_k), (phi_x, traj_x) = run("kernel"), run("xla")
    assert traj_k.shape == traj_x.shape == (steps + 1,) + phi.shape
    np.testing.assert_array_equal(traj_k[0], phi)
    np.testing.assert_array_equal(traj_k[-1], phi_k)
    # Values reach 30 px; float32 rounding differs (FMA, reciprocals), nothing else.
    np.testing.assert_allclose(traj_k, traj_x, rtol=0, atol=1e-3)
    np.testing.assert_allclose(
        phi_k,
        ls.evolve(phi, motion, g, steps=steps, corners=corners, impl="kernel"),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("shape", SHAPES[:5], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("corners", ["full", "authors"])
def test_gradients_match_xla_autodiff(shape, corners):
    b, h, w, steps = shape
    phi, motion, g, weights = inputs(b, h, w, seed=1)

    def grads(impl):
        f = lambda p, m, gg: jnp.sum(
            ls.heaviside(ls.evolve(p, m, gg, steps=steps, corners=corners, impl=impl)) * weights
        )
        return jax.grad(f, argnums=(0, 1, 2))(phi, motion, g)

    for k, x in zip(grads("kernel"), grads("xla")):
        assert max_rel(k, x) < 1e-4


@pytest.mark.parametrize("radius", [12.0, 200.0], ids=["thin-band", "no-band"])
def test_band_limited_update_matches_xla(radius):
    """The kernel skips the update where the Dirac delta is zero (|phi| >= 9 px): a
    thin band around a circle, and no band at all (a circle outside the image)."""
    h, w = 70, 83  # not multiples of the kernel's 16-column chunks
    yy, xx = np.mgrid[:h, :w]
    sdf = np.clip(np.hypot(yy - 30.5, xx - 41.0) - radius, -30, 30)
    rng = np.random.default_rng(6)
    phi = jnp.asarray(sdf[None, ..., None], jnp.float32)
    motion = jnp.asarray(rng.normal(size=(1, h, w, 2)), jnp.float32)
    g = jnp.asarray(rng.uniform(size=(1, h, w, 1)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(1, h, w, 1)), jnp.float32)

    def run(impl):
        f = lambda p, m, gg: jnp.sum(
            ls.heaviside(ls.evolve(p, m, gg, steps=5, impl=impl)) * weights
        )
        return ls.evolve(phi, motion, g, steps=5, impl=impl), jax.grad(f, argnums=(0, 1, 2))(
            phi, motion, g
        )

    (out_k, grads_k), (out_x, grads_x) = run("kernel"), run("xla")
    np.testing.assert_allclose(out_k, out_x, rtol=0, atol=1e-3)  # values reach 30 px
    for k, x in zip(grads_k, grads_x):
        np.testing.assert_allclose(k, x, rtol=0, atol=1e-4 * max(float(np.abs(x).max()), 1))
    if radius > 100:  # no pixel in the band: motion and g get no gradient at all
        assert not np.any(np.asarray(grads_k[1])) and not np.any(np.asarray(grads_k[2]))


def test_gradient_through_every_state_of_the_trajectory():
    phi, motion, g, weights = inputs(2, 20, 16, seed=2)

    def grads(impl):
        def f(p, m, gg):
            _, traj = ls.evolve(p, m, gg, steps=4, impl=impl, return_trajectory=True)
            return jnp.sum(
                jnp.tanh(traj / 10) * weights * jnp.arange(1.0, 6.0)[:, None, None, None, None]
            )

        return jax.grad(f, argnums=(0, 1, 2))(phi, motion, g)

    for k, x in zip(grads("kernel"), grads("xla")):
        assert max_rel(k, x) < 1e-4


def test_without_modulation_and_with_bfloat16_motion():
    phi, motion, _, weights = inputs(2, 12, 14, seed=3)
    motion = motion.astype(jnp.bfloat16)
    out = {impl: ls.evolve(phi, motion, None, steps=3, impl=impl) for impl in ("kernel", "xla")}
    np.testing.assert_allclose(out["kernel"], out["xla"], rtol=0, atol=1e-3)


def test_vmap_equals_loop_and_jit():
    phi, motion, g, _ = inputs(3, 16, 12, seed=4)
    stacked = [x.reshape((3, 1) + x.shape[1:]) for x in (phi, motion, g)]
    one = lambda p, m, gg: ls.evolve(p, m, gg, steps=3, impl="kernel")
    batched = jax.vmap(one)(*stacked)
    looped = jnp.stack([one(*(x[i] for x in stacked)) for i in range(3)])
    np.testing.assert_array_equal(batched, looped)
    np.testing.assert_array_equal(batched[:, 0], jax.jit(one)(phi, motion, g))


def test_vmap_of_gradient():
    phi, motion, g, weights = inputs(2, 10, 10, seed=5)
    f = lambda p, m, gg, impl: jnp.sum(
        ls.heaviside(ls.evolve(p[None], m[None], gg[None], steps=2, impl=impl)) * weights[0]
    )
    per_image = {
        impl: jax.vmap(jax.grad(f, argnums=(0, 1)), (0, 0, 0, None))(phi, motion, g, impl)
        for impl in ("kernel", "xla")
    }
    for k, x in zip(per_image["kernel"], per_image["xla"]):
        assert max_rel(k, x) < 1e-4


def test_auto_uses_the_kernel_on_cpu():
    phi, motion, g, _ = inputs(1, 8, 8)
    hlo = jax.jit(lambda p, m, gg: ls.evolve(p, m, gg, steps=2)).lower(phi, motion, g).as_text()
    assert ek.FORWARD_TARGET in hlo
    hlo = (
        jax.jit(lambda p, m, gg: ls.evolve(p, m, gg, steps=2, impl="xla"))
        .lower(phi, motion, g)
        .as_text()
    )
    assert ek.FORWARD_TARGET not in hlo


def test_auto_falls_back_to_xla_with_a_warning(monkeypatch):
    phi, motion, g, _ = inputs(1, 8, 8)
    monkeypatch.setattr(ek, "unavailable_reason", lambda: "no compiler (test)")
    ls._warn_no_kernel.cache_clear()
    # A timestep no other test uses, so evolve is traced again under the patch.
    with pytest.warns(RuntimeWarning, match="no compiler \\(test\\)"):
        out = ls.evolve(phi, motion, g, steps=2, timestep=4.25)
    monkeypatch.undo()
    np.testing.assert_allclose(
        out, ls.evolve(phi, motion, g, steps=2, timestep=4.25, impl="kernel"), atol=1e-4
    )
    with pytest.raises(ek.KernelUnavailable, match="unavailable"):
        monkeypatch.setattr(ek, "_load", lambda: "no compiler (test)")
        ek.final(phi, motion, g, 2, 4.5, 0.3, 30.0, "full")


def test_bad_arguments_are_named():
    phi, motion, g, _ = inputs(1, 8, 8)
    with pytest.raises(ValueError, match="impl must be"):
        ls.evolve(phi, motion, g, steps=1, impl="cuda")
    with pytest.raises(ValueError, match="float32 phi0"):
        ls.evolve(phi.astype(jnp.bfloat16), motion, g, steps=1, impl="kernel")
    with pytest.raises(TypeError, match="motion is float16"):
        ek.final(phi, motion.astype(jnp.float16), g, 1, 5.0, 0.3, 30.0, "full")
    with pytest.raises(ValueError, match="expected"):
        ek.final(phi, motion[..., :1], g, 1, 5.0, 0.3, 30.0, "full")


def test_build_reports_a_missing_or_failing_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSET_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(ek.KernelUnavailable, match="no C\\+\\+ compiler"):
        ek.build()
    failing = tmp_path / "failing-cxx"
    failing.write_text("#!/bin/sh\necho 'compiler says no' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CXX", str(failing))
    with pytest.raises(ek.KernelUnavailable, match="compiler says no"):
        ek.build()
    assert list(tmp_path.glob("*.so")) == []  # no half-written library left behind
    monkeypatch.delenv("CXX")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("DLSET_KERNEL_CACHE", str(not_a_dir / "cache"))
    with pytest.raises(ek.KernelUnavailable, match="cannot write the kernel cache"):
        ek.build()


def test_build_is_cached_and_keyed_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSET_KERNEL_CACHE", str(tmp_path))
    path = ek.build()
    assert path.parent == tmp_path and path.exists()
    mtime = path.stat().st_mtime_ns
    assert ek.build() == path and path.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.slow
def test_data_parallel_jit_runs_the_kernel_on_each_shard(tmp_path):
    """Four CPU devices, batch sharded: same values and gradients as one device, and
    both custom calls are compiled for a device's shard (2 of 8 images)."""
    script = textwrap.dedent(r"""
      import re
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from dlset_jax import levelset as ls
      assert jax.device_count() == 4
      rng = np.random.default_rng(0)
      arrays = [rng.normal(size=(8, 16, 16, 1)) * 5, rng.normal(size=(8, 16, 16, 2)),
                rng.uniform(size=(8, 16, 16, 1)), rng.normal(size=(8, 16, 16, 1))]
      arrays = [jnp.asarray(a, jnp.float32) for a in arrays]
      shard = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
      sharded = [jax.device_put(x, shard) for x in arrays]
      # As in training: a per-pixel loss against a target that is sharded too.
      loss = lambda p, m, gg, w: jnp.mean(ls.heaviside(ls.evolve(p, m, gg, steps=3)) * w)
      step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
      hlo = step.lower(*sharded).compile().as_text()
      calls = [l for l in hlo.splitlines() if "custom_call_target=\"dlset_evolve" in l]
      assert len(calls) == 2, calls
      for line in calls:
        operand_shapes = re.findall(r"f32\[(\d+),", line.split("custom-call(")[0])
        assert operand_shapes and set(operand_shapes) == {"2"}, line[:300]
      value, grads = step(*sharded)
      ref_value, ref_grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(*arrays)
      np.testing.assert_allclose(value, ref_value, rtol=1e-5)
      for a, b in zip(grads, ref_grads):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(np.abs(b).max()))
      print("ok")
  """)
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=str(REPO)
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
