"""The fused CPU kernel of the level set evolution: build, load, call.

`levelset.evolve` uses it on CPU (issue 7: XLA:CPU spends ~30 full passes over the
batch per step, and as many again for autodiff's backward). The C++ source
(`evolution.cc`) is compiled on first use with the system's C++ compiler against the
XLA FFI headers that ship with jaxlib, into a per-user cache keyed by the source, the
jaxlib version, the compiler and the CPU's instruction set (it is built with
`-march=native`). `make setup` builds it ahead of time; `python -m
dlset_jax.evolution_kernel` builds it and prints where.

Where no compiler is found, `unavailable_reason()` says why; `levelset.evolve`
then runs the XLA version (the numerics are the same, only slower).

Environment:
  DLSET_KERNEL_CACHE: cache directory (default `~/.cache/dlset_jax`).
  CXX: the C++ compiler (default `c++`, then `g++`, `clang++`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax.experimental.xla_metadata import set_xla_metadata

SOURCE = pathlib.Path(__file__).with_name("evolution.cc")
FORWARD_TARGET = "dlset_evolve_forward"
BACKWARD_TARGET = "dlset_evolve_backward"
FLAGS = (
    "-O3",
    "-march=native",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fopenmp-simd",
    "-pthread",
)


class KernelUnavailable(RuntimeError):
    """The CPU kernel could not be built or loaded (the message says why)."""


def compiler() -> str | None:
    """The C++ compiler the kernel is built with, or None."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    return None


def _cpu_signature() -> str:
    """The CPU model and flags: a `-march=native` build is only valid on the same ISA."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [l for l in lines if l.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def cache_dir() -> pathlib.Path:
    root = os.environ.get("DLSET_KERNEL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "dlset_jax"
    )
    return pathlib.Path(root)


def library_path(cxx: str) -> pathlib.Path:
    """Where the build for this source, jaxlib, compiler and CPU lives."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        jaxlib.__version__.encode(),
        version.encode(),
        " ".join(FLAGS).encode(),
        _cpu_signature().encode(),
    ):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"evolution-{key.hexdigest()[:16]}.so"


def build(verbose: bool = False) -> pathlib.Path:
    """Compiles the kernel if its cached build is missing; returns the library's path.

    The build goes to a temporary file renamed into place, so concurrent processes and
    interrupted builds never leave a half-written library.

    Raises:
      KernelUnavailable: no compiler, the compiler failed (its output is included), or
        the cache directory is not writable.
    """
    cxx = compiler()
    if cxx is None:
        raise KernelUnavailable("no C++ compiler found (set CXX, or install g++)")
    target = library_path(cxx)
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    except OSError as e:
        raise KernelUnavailable(
            f"cannot write the kernel cache {target.parent} ({e}); "
            "set DLSET_KERNEL_CACHE to a writable directory"
        ) from e
    os.close(fd)
    cmd = [cxx, *FLAGS, "-isystem", jax.ffi.include_dir(), "-o", tmp, str(SOURCE)]
    if verbose:
        print(" ".join(cmd))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise KernelUnavailable(f"compiling {SOURCE.name} failed:\n{res.stderr[-4000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def _load() -> str | None:
    """Builds, loads and registers the kernel once per process; None or why not."""
    try:
        path = build()
        lib = ctypes.cdll.LoadLibrary(str(path))
    except (KernelUnavailable, OSError) as e:
        return str(e)
    for name, fn in (
        (FORWARD_TARGET, lib.DlsetEvolveForward),
        (BACKWARD_TARGET, lib.DlsetEvolveBackward),
    ):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(fn), platform="cpu")
        # Every operand and result has the batch as its leading axes (see _batch_dims).
        jax.ffi.register_ffi_target_as_batch_partitionable(name)
    return None


def unavailable_reason() -> str | None:
    """Why the kernel cannot be used here, or None when it can."""
    return _load()


def _attrs(steps, timestep, dirac_ratio, dt_max, corners):
    return dict(
        steps=np.int64(steps),
        timestep=np.float32(timestep),
        ratio=np.float32(dirac_ratio),
        dt_max=np.float32(dt_max),
        authors_corners=np.int64(corners == "authors"),
    )


def _require():
    why = _load()
    if why is not None:
        raise KernelUnavailable(f"the CPU evolution kernel is unavailable: {why}")


def _batch_dims(n: int):
    """Tells XLA's batch partitioner how many leading axes are images (all of them
    before H, W): under a data-parallel jit each device then runs the kernel on its own
    shard of the batch instead of gathering the whole batch first."""
    return set_xla_metadata(num_batch_dims=str(n))


def _forward(phi0, motion, g, static, keep_states=False):
    """(phi_T `(..., H, W, 1)`, states phi_0 .. phi_{T-1} `(..., T, H, W)`); the
    states have a zero-sized axis unless kept (inference needs only phi_T)."""
    _require()
    steps = static[0]
    lead, hw = phi0.shape[:-3], phi0.shape[-3:-1]
    specs = (
        jax.ShapeDtypeStruct(phi0.shape, jnp.float32),
        jax.ShapeDtypeStruct(lead + (steps if keep_states else 0,) + hw, jnp.float32),
    )
    call = jax.ffi.ffi_call(FORWARD_TARGET, specs, vmap_method="broadcast_all")
    with _batch_dims(phi0.ndim - 3):
        return call(phi0, motion, g, **_attrs(*static))


def _backward(static, res, cotangent):
    """Cotangents of (phi0, motion, g). `cotangent` is phi_T's `(..., H, W, 1)` or
    every state's `(..., T+1, H, W)`."""
    states, motion, g = res
    specs = (
        jax.ShapeDtypeStruct(g.shape, jnp.float32),
        jax.ShapeDtypeStruct(motion.shape, jnp.float32),
        jax.ShapeDtypeStruct(g.shape, jnp.float32),
    )
    call = jax.ffi.ffi_call(BACKWARD_TARGET, specs, vmap_method="broadcast_all")
    with _batch_dims(g.ndim - 3):
        return tuple(call(states, motion, g, cotangent, **_attrs(*static)))


def _check(phi0, motion, g):
    for name, x in (("phi0", phi0), ("motion", motion), ("g", g)):
        if x.dtype != jnp.float32:
            raise TypeError(f"the evolution kernel takes float32, {name} is {x.dtype}")
    if (
        phi0.ndim < 3
        or phi0.shape[-1] != 1
        or g.shape != phi0.shape
        or motion.shape != phi0.shape[:-1] + (2,)
    ):
        raise ValueError(
            f"phi0 {phi0.shape}, motion {motion.shape} and g {g.shape}: "
            "expected (..., H, W, 1), (..., H, W, 2), (..., H, W, 1)"
        )


_STATIC = (3, 4, 5, 6, 7)  # steps, timestep, dirac_ratio, dt_max, corners


@functools.partial(jax.custom_vjp, nondiff_argnums=_STATIC)
def final(phi0, motion, g, steps, timestep, dirac_ratio, dt_max, corners):
    """phi_T of the evolution, computed by the fused kernel.

    Args:
      phi0: `(..., H, W, 1)` float32 level set in px, H and W >= 3.
      motion: `(..., H, W, 2)` float32 motion field (y, x).
      g: `(..., H, W, 1)` float32 curvature modulation.
      steps, timestep, dirac_ratio, dt_max, corners: as `levelset.evolve`.

    Returns:
      phi_T, `(..., H, W, 1)` float32.
    """
    _check(phi0, motion, g)
    static = (steps, timestep, dirac_ratio, dt_max, corners)
    return _forward(phi0, motion, g, static)[0]


def _with_last(states, last):
    return jnp.concatenate([states, last[..., None, :, :, 0]], axis=-3)


@functools.partial(jax.custom_vjp, nondiff_argnums=_STATIC)
def trajectory(phi0, motion, g, steps, timestep, dirac_ratio, dt_max, corners):
    """Every state phi_0 .. phi_T, `(..., T+1, H, W)`; arguments as `final`."""
    _check(phi0, motion, g)
    static = (steps, timestep, dirac_ratio, dt_max, corners)
    last, states = _forward(phi0, motion, g, static, keep_states=True)
    return _with_last(states, last)


def _final_fwd(phi0, motion, g, *static):
    _check(phi0, motion, g)
    last, states = _forward(phi0, motion, g, static, keep_states=True)
    return last, (states, motion, g)


def _trajectory_fwd(phi0, motion, g, *static):
    _check(phi0, motion, g)
    last, states = _forward(phi0, motion, g, static, keep_states=True)
    return _with_last(states, last), (states, motion, g)


final.defvjp(_final_fwd, lambda *a: _backward(a[:-2], a[-2], a[-1]))
trajectory.defvjp(_trajectory_fwd, lambda *a: _backward(a[:-2], a[-2], a[-1]))
