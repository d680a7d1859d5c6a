"""Skip fusion and pyramid-pooling (PSP) heads, plus the resampling helpers.

Resampling is written as small interpolation / pooling matrices applied along H
and W (``einsum``), built with numpy at trace time from the static shapes. This
reproduces PyTorch's ``F.interpolate(mode='bilinear', align_corners=...)`` and
``nn.AdaptiveAvgPool2d`` exactly, and its backward pass is a matmul as well
(no gather/scatter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlset_jax.models.resnet import (
    BN_EPS,
    BN_MOMENTUM,
    FAST,
    Conv1x1,
    Formulation,
    conv,
    matmul,
)


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
    return _apply_hw(
        x, linear_interp_matrix(h, oh, align_corners), linear_interp_matrix(w, ow, align_corners)
    )


def adaptive_avg_pool(x, bins: int | Sequence[int]):
    """``nn.AdaptiveAvgPool2d(bins)`` for NHWC ``x``."""
    bh, bw = (bins, bins) if isinstance(bins, int) else bins
    h, w = x.shape[1:3]
    return _apply_hw(x, adaptive_pool_matrix(h, bh), adaptive_pool_matrix(w, bw))


def _bn_module(dtype) -> nn.BatchNorm:
    """BatchNorm for setup-style modules: pass ``use_running_average`` at call time."""
    return nn.BatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=dtype)


def _bn(train: bool, dtype, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=dtype, name=name
    )


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
    def __call__(self, feats: dict, train: bool = False, return_parts: bool = False):
        """The fused map (B, H/2, W/2, 4 * channels); with ``return_parts`` the list of
        per-source maps before resizing (each at its source's resolution), whose
        resized concatenation is the fused map."""
        size = feats["stem"].shape[1:3]
        outs = []
        for src in self.sources:
            y = conv(self.channels, 3, dtype=self.dtype, name=f"conv_{src}")(feats[src])
            y = nn.relu(_bn(train, self.dtype, f"bn_{src}")(y))
            outs.append(y if return_parts else resize_bilinear(y, size, self.align_corners))
        if return_parts:
            return outs
        return jnp.concatenate(outs, axis=-1)


class PSPHead(nn.Module):
    """Pyramid pooling head (PSPNet; the authors' ``PSPModule``).

    For each bin count b: adaptive average pool to b x b, 1x1 conv to in/4
    channels (no bias) + BN + ReLU, bilinear resize back (corners aligned).
    Concatenate the pooled maps and the input, 1x1 conv to ``channels`` (no
    bias) + BN + ReLU, final 1x1 conv (with bias) to ``n_out``.

    ``__call__`` evaluates exactly that. ``fused_psp_heads`` evaluates several
    heads on one input jointly, with the same variables, through the methods
    ``prior_terms``, ``input_kernel`` and ``finish``.
    """

    n_out: int
    in_channels: int = 512
    channels: int = 128
    bins: Sequence[int] = (1, 2, 3, 6)
    dtype: Any = jnp.float32
    # Authors: normal(0, 0.01) for every conv of the heads (their weight_init).
    kernel_init: Any = nn.initializers.normal(0.01)
    formulation: Formulation = FAST

    def setup(self):
        # The fused path needs the kernels themselves, hence Conv1x1 there; the plain
        # path follows matmul_1x1 (nn.Conv when off).
        f = self.formulation
        if f.fused_heads:
            make = lambda n, **kw: Conv1x1(n, dtype=self.dtype, kernel_init=self.kernel_init, **kw)
        else:
            make = lambda n, **kw: conv(
                n, 1, dtype=self.dtype, kernel_init=self.kernel_init, matmul_1x1=f.matmul_1x1, **kw
            )
        c4 = self.in_channels // 4
        for b in self.bins:
            setattr(self, f"pool{b}_conv", make(c4))
            setattr(self, f"pool{b}_bn", _bn_module(self.dtype))
        self.bottleneck_conv = make(self.channels)
        self.bottleneck_bn = _bn_module(self.dtype)
        self.final = make(self.n_out, use_bias=True)

    def _check(self, c: int):
        if c != self.in_channels:
            raise ValueError(f"PSPHead: expected {self.in_channels} input channels, got {c}")

    def _pool_branch(self, b: int, pooled, train: bool):
        y = getattr(self, f"pool{b}_conv")(pooled)
        return nn.relu(getattr(self, f"pool{b}_bn")(y, use_running_average=not train))

    def __call__(self, x, train: bool = False):
        self._check(x.shape[-1])
        size = x.shape[1:3]
        priors = [
            resize_bilinear(
                self._pool_branch(b, adaptive_avg_pool(x, b), train), size, align_corners=True
            )
            for b in self.bins
        ]
        y = jnp.concatenate(priors + [x], axis=-1)
        return self.finish(self.bottleneck_conv(y), train)

    def _bottleneck_kernel(self):
        c = self.in_channels
        return self.bottleneck_conv(in_features=len(self.bins) * (c // 4) + c)[0][0, 0]

    def prior_terms(self, pooled: dict, train: bool = False) -> list:
        """Per bin b, the pooled branch's contribution to the bottleneck conv before
        resizing: ``relu(bn(conv(pooled[b]))) @ W_b``, (B, b, b, channels)."""
        c4 = self.in_channels // 4
        kernel = self._bottleneck_kernel()
        out = []
        for i, b in enumerate(self.bins):
            self._check(pooled[b].shape[-1])
            y = self._pool_branch(b, pooled[b], train)
            out.append(matmul(y, kernel[i * c4 : (i + 1) * c4].astype(y.dtype)))
        return out

    def input_kernel(self):
        """The rows of the bottleneck kernel that multiply the input, (in_channels,
        channels)."""
        return self._bottleneck_kernel()[len(self.bins) * (self.in_channels // 4) :]

    def finish(self, pre, train: bool = False):
        """BN + ReLU of the bottleneck conv's output ``pre``, then the final conv."""
        y = nn.relu(self.bottleneck_bn(pre, use_running_average=not train))
        return self.final(y)


def _sum_resized(pieces, size, merged: bool = True):
    """``sum(resize_bilinear(z, size, ac) for z, ac in pieces)`` with ONE full-size
    product: each piece is resized along H alone, the results are concatenated
    along W with their W-matrices, and a single einsum resizes along W and sums
    (a full-size output is written once instead of once per piece)."""
    oh, ow = size
    full, zs, mws = None, [], []
    for z, ac in pieces:
        h, w = z.shape[1:3]
        if (h, w) == (oh, ow):
            full = z if full is None else full + z
            continue
        if not merged:
            z = resize_bilinear(z, size, ac)
            full = z if full is None else full + z
            continue
        mh = jnp.asarray(linear_interp_matrix(h, oh, ac), z.dtype)
        zs.append(jnp.einsum("oh,bhwc->bowc", mh, z, precision=jax.lax.Precision.HIGHEST))
        mws.append(linear_interp_matrix(w, ow, ac))
    if zs:
        mw = jnp.asarray(np.concatenate(mws, axis=1), zs[0].dtype)
        z = jnp.einsum(
            "pw,bowc->bopc", mw, jnp.concatenate(zs, axis=2), precision=jax.lax.Precision.HIGHEST
        )
        full = z if full is None else full + z
    return full


def fused_psp_heads(
    heads: Sequence[PSPHead],
    parts: Sequence,
    size: Sequence[int],
    align_corners: bool,
    train: bool = False,
) -> list:
    """``[head(fused, train) for head in heads]`` where ``fused`` is the
    concatenation of ``parts`` resized bilinearly to ``size`` (SkipFusion's output),
    without forming ``fused`` or the heads' full-resolution concatenations.

    Same math in another order (float rounding aside), using linearity:
      * pyramid pooling of ``fused``: pool and resize matrices composed, applied to
        each part at its own resolution, computed once for all heads;
      * the bottleneck conv of ``concat(priors + [fused])`` is split by rows:
        ``fused @ W_x`` for all heads at once is the sum over parts of
        ``resize(part @ W_x[rows of part])`` (parts of equal resolution summed
        before resizing), and each prior's term ``resize(p_b) @ W_b`` is
        ``resize(p_b @ W_b)``, computed at b x b and resized once per bin for all
        heads.
    """
    bins = tuple(heads[0].bins)
    ch = heads[0].channels
    if any(tuple(h.bins) != bins or h.channels != ch for h in heads):
        raise ValueError("fused_psp_heads: the heads must share bins and channels")
    oh, ow = size
    pooled = {}
    for b in bins:
        pieces = []
        for y in parts:
            h, w = y.shape[1:3]
            mh, mw = adaptive_pool_matrix(oh, b), adaptive_pool_matrix(ow, b)
            if (h, w) != (oh, ow):
                mh = mh @ linear_interp_matrix(h, oh, align_corners)
                mw = mw @ linear_interp_matrix(w, ow, align_corners)
            pieces.append(_apply_hw(y, mh, mw))
        pooled[b] = jnp.concatenate(pieces, axis=-1)

    wx = jnp.concatenate([h.input_kernel() for h in heads], axis=1)  # (C, n_heads * ch)
    groups, off = {}, 0
    for y in parts:
        z = matmul(y, wx[off : off + y.shape[-1]].astype(y.dtype))
        off += y.shape[-1]
        key = tuple(y.shape[1:3])
        groups[key] = groups[key] + z if key in groups else z
    priors = [h.prior_terms(pooled, train) for h in heads]
    pieces = [(z, align_corners) for z in groups.values()]
    pieces += [(jnp.concatenate([p[i] for p in priors], axis=-1), True) for i in range(len(bins))]
    pre = _sum_resized(pieces, size, heads[0].formulation.merged_resize)
    return [h.finish(pre[..., k * ch : (k + 1) * ch], train) for k, h in enumerate(heads)]
