"""Shared test set-up: CPU only, deterministic, quiet, one compilation cache."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The end-to-end tests start train.py / eval.py / predict.py in subprocesses, several
# with the same model (the resume tests train three times). A persistent compilation
# cache shared through the environment lets the later processes load the compiled
# executables instead of recompiling them. One fresh directory per test session, so
# no test depends on what an earlier session left behind.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="dlset_jax_test_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import pathlib

import numpy as np
import pytest

from dlset_jax import evolution_kernel

REPO = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"

# Both implementations of levelset.evolve. The kernel is skipped only where no C++
# compiler exists; where one exists, a failing build fails the kernel's tests.
needs_compiler = pytest.mark.skipif(
    evolution_kernel.compiler() is None,
    reason="no C++ compiler: the fused CPU evolution kernel cannot be built",
)
IMPLS = [pytest.param("kernel", marks=needs_compiler), "xla"]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def brute_contour(m):
    """Foreground pixels with a 4-neighbour in the background or off the image.

    The loop-by-loop reference that metrics.contour and targets.contour are tested
    against.
    """
    h, w = m.shape
    out = np.zeros_like(m)
    for y in range(h):
        for x in range(w):
            if not m[y, x]:
                continue
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if not (0 <= yy < h and 0 <= xx < w) or not m[yy, xx]:
                    out[y, x] = True
                    break
    return out


def override(config, **overrides):
    """Sets dotted config fields, e.g. `override(c, **{"train.num_steps": 3})`."""
    for key, value in overrides.items():
        node = config
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return config
