"""Skip fusion and pyramid-pooling (PSP) heads, plus the resampling helpers.

Resampling is written as small interpolation / pooling matrices applied along H
and W (``einsum``), built with numpy at trace time from the static shapes. This
reproduces PyTorch's ``F.interpolate(mode='bilinear', align_corners=...)`` and
``nn.AdaptiveAvgPool2d`` exactly, and its backward pass is a matmul as well
(no gather/scatter).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlset_jax.models.resnet import BN_EPS, BN_MOMENTUM, conv


def linear_interp_matrix(n_in: int, n_out: int, align_corners: bool = True) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D linear interpolation, PyTorch's conventions.

    ``align_corners=True``: output i samples input ``i * (n_in - 1) / (n_out - 1)``
    (the first and last samples coincide). ``False``: half-pixel centres,
    ``(i + 0.5) * n_in / n_out - 0.5`` clamped at 0, as ``F.interpolate`` with a
    target size.
    """
    i = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        src = np.maximum((i + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = src - lo
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), lo), 1.0 - w)
    np.add.at(m, (np.arange(n_out), hi), w)
    return m


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging matrix of ``nn.AdaptiveAvgPool`` (bins may overlap):
    bin i averages ``[floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out))``."""
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def _apply_hw(x, mh: np.ndarray, mw: np.ndarray):
    """Apply (H', H) and (W', W) matrices to NHWC ``x``."""
    # HIGHEST keeps float32 exact on accelerators (no TF32); the matrices are small.
    prec = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(mh, x.dtype), x, precision=prec)
    return jnp.einsum("pw,bowc->bopc", jnp.asarray(mw, x.dtype), x, precision=prec)


def resize_bilinear(x, size: Sequence[int], align_corners: bool = True):
    """Bilinear resize of NHWC ``x`` to ``size = (H', W')`` (PyTorch semantics,
    no antialiasing)."""
    h, w = x.shape[1:3]
    oh, ow = size
    if (h, w) == (oh, ow):
        return x
    return _apply_hw(x, linear_interp_matrix(h, oh, align_corners),
                     linear_interp_matrix(w, ow, align_corners))


def adaptive_avg_pool(x, bins: int | Sequence[int]):
    """``nn.AdaptiveAvgPool2d(bins)`` for NHWC ``x``."""
    bh, bw = (bins, bins) if isinstance(bins, int) else bins
    h, w = x.shape[1:3]
    return _apply_hw(x, adaptive_pool_matrix(h, bh), adaptive_pool_matrix(w, bw))


def _bn(train: bool, dtype, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                        dtype=dtype, name=name)


class SkipFusion(nn.Module):
    """The authors' "skip4" fusion: stem, layer1, layer2 and layer4 features each
    go through 3x3 conv (``channels``, no bias) + BN + ReLU, are resized
    bilinearly to the stem's resolution (stride 2) and concatenated
    (4 * channels).

    ``align_corners=False`` is what the authors' ``nn.Upsample(scale_factor=...,
    mode='bilinear')`` does (PyTorch's default); True is offered as an option.
    """
    channels: int = 128
    align_corners: bool = False
    dtype: Any = jnp.float32
    sources: Sequence[str] = ("stem", "layer1", "layer2", "layer4")

    @nn.compact
    def __call__(self, feats: dict, train: bool = False):
        size = feats["stem"].shape[1:3]
        outs = []
        for src in self.sources:
            y = conv(self.channels, 3, dtype=self.dtype, name=f"conv_{src}")(feats[src])
            y = nn.relu(_bn(train, self.dtype, f"bn_{src}")(y))
            outs.append(resize_bilinear(y, size, self.align_corners))
        return jnp.concatenate(outs, axis=-1)


class PSPHead(nn.Module):
    """Pyramid pooling head (PSPNet; the authors' ``PSPModule``).

    For each bin count b: adaptive average pool to b x b, 1x1 conv to in/4
    channels (no bias) + BN + ReLU, bilinear resize back (corners aligned).
    Concatenate the pooled maps and the input, 1x1 conv to ``channels`` (no
    bias) + BN + ReLU, final 1x1 conv (with bias) to ``n_out``.
    """
    n_out: int
    channels: int = 128
    bins: Sequence[int] = (1, 2, 3, 6)
    dtype: Any = jnp.float32
    # Authors: normal(0, 0.01) for every conv of the heads (their weight_init).
    kernel_init: Any = nn.initializers.normal(0.01)

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = x.shape[-1]
        size = x.shape[1:3]
        priors = []
        for b in self.bins:
            y = adaptive_avg_pool(x, b)
            y = conv(c // 4, 1, dtype=self.dtype, kernel_init=self.kernel_init,
                     name=f"pool{b}_conv")(y)
            y = nn.relu(_bn(train, self.dtype, f"pool{b}_bn")(y))
            priors.append(resize_bilinear(y, size, align_corners=True))
        y = jnp.concatenate(priors + [x], axis=-1)
        y = conv(self.channels, 1, dtype=self.dtype, kernel_init=self.kernel_init,
                 name="bottleneck_conv")(y)
        y = nn.relu(_bn(train, self.dtype, "bottleneck_bn")(y))
        return conv(self.n_out, 1, dtype=self.dtype, kernel_init=self.kernel_init,
                    use_bias=True, name="final")(y)
