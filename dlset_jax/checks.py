"""Argument checks that raise ValueError naming the problem.

Shapes and dtypes are static under `jax.jit`, so these checks run at trace time and
cost nothing in the compiled function. They complement `chex` (which raises
AssertionError) with messages a user of the public functions can act on.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def check_rank(name: str, x, rank: int | Sequence[int]) -> None:
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if np.ndim(x) not in ranks:
        raise ValueError(
            f"{name} must have rank {' or '.join(map(str, ranks))}, got shape {tuple(np.shape(x))}"
        )


def check_channels(name: str, x, channels: int) -> None:
    if np.shape(x)[-1] != channels:
        raise ValueError(
            f"{name} must have {channels} channel(s) in its last axis (NHWC), got "
            f"shape {tuple(np.shape(x))}"
        )


def check_floating(name: str, x) -> None:
    # jnp.issubdtype, not numpy's: bfloat16 is a floating type to JAX, not to numpy.
    if not jnp.issubdtype(
        np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype, jnp.floating
    ):
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}")


def check_same_shape(**arrays) -> None:
    shapes = {k: tuple(np.shape(v)) for k, v in arrays.items()}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise ValueError(f"shapes must match: {desc}")


def check_min_spatial(name: str, x, minimum: int) -> None:
    h, w = np.shape(x)[-3], np.shape(x)[-2]
    if h < minimum or w < minimum:
        raise ValueError(
            f"{name} must be at least {minimum}x{minimum} pixels, got shape {tuple(np.shape(x))}"
        )
