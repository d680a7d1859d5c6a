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
# The tests compile far more than they compute (tiny models, a few steps): without
# LLVM's optimisation passes XLA's CPU backend compiles about 40% faster (measured on
# test_models' formulation test), in this process and in the ones it starts.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="dlset_jax_test_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import pathlib

import numpy as np
import pytest

from dlset_jax import config as config_lib
from dlset_jax import inference

REPO = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"

# The evolution's parameters at the schema's defaults (the paper's values: timestep 5,
# Dirac ratio 0.3, dt_max 30, full Neumann corners; T = 5), for the tests that call
# levelset.evolve directly. `steps` is given by each test.
EVOLVE = {
    k: v for k, v in inference.evolution_kwargs(config_lib.base_config()).items() if k != "steps"
}


def tiny_model_config(**overrides):
    """The schema's `model` fields with a tiny network, overridden by `overrides`."""
    m = config_lib.base_config().model
    m.update(dict(depth=18, width=4, fusion_channels=8, psp_channels=8, output_stride=8))
    m.update(overrides)
    return m


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


# The tiny models shared by the segmenter, CLI and app tests (session fixtures).
from tiny_models import random_click_model, random_model, trained_workdir  # noqa: E402, F401

# Tests that share an expensive fixture run in the same xdist worker (`make test`
# runs two with --dist loadgroup), so that the fixture is built once, not per worker.
SHARED_FIXTURE_GROUPS = {"trained_workdir": "ellipse_model", "one_device_run": "one_device"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, group in SHARED_FIXTURE_GROUPS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))
                break
