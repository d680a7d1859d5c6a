"""Dilated ResNet encoder (torchvision layout), Flax Linen, NHWC.

Layout and parameter names follow torchvision's ``resnet18/34/50/101`` so that
ImageNet weights map one to one (see ``convert.py``):

  conv1, bn1                         stem: 7x7 stride 2 conv, BN, ReLU  (stride 2)
  (max pool 3x3 stride 2)                                               (stride 4)
  layer1_0 .. layer4_N               residual stages; torchvision's ``layer1.0``
                                     is ``layer1_0`` here, ``downsample.0`` /
                                     ``downsample.1`` are ``downsample_conv`` /
                                     ``downsample_bn``.

Bottleneck blocks put the stride on the 3x3 convolution (torchvision's
"ResNet v1.5"; the authors' DeepLab-style blocks put it on the first 1x1,
which only matters for stage 2 here since stages 3 and 4 have stride 1 at output
stride 8).

Output stride 8: stages 3 and 4 have stride 1 and EVERY block of them uses
dilation 2 and 4 (as in the authors' network and DeepLab; torchvision's
``replace_stride_with_dilation`` instead gives the first block of a dilated stage
the previous dilation). Output stride 16: stage 4 has stride 1 and dilation 2.

Frozen BatchNorm (``frozen_bn=True``, the authors' choice for the backbone):
the layer always normalises with the running statistics (``batch_stats`` are
never updated, whatever ``train`` says) and ``stop_gradient`` is applied to its
``scale`` and ``bias``, so they get exactly zero gradient. The variables keep
the names and shapes of ``nn.BatchNorm`` (params ``scale``/``bias``,
batch_stats ``mean``/``var``), so the parameter tree is the same frozen or
not. NOTE: a zero gradient is not "no update" under weight decay or
momentum with a non-zero history; the training code should also mask these
leaves (``deep_level_set.param_labels(..., frozen_bn=True)`` labels them
``'frozen'``, for ``optax.multi_transform`` with ``optax.set_to_zero()``).

``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``); parameters and batch
statistics stay float32, BatchNorm statistics are computed in float32.

Speed on XLA:CPU: the one place for it is ``Formulation`` below (what each part
gains: docs/history.md; why: the project's shared performance notes).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision / Kaiming initialisation for convolutions: normal, fan_out, ReLU gain.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

STAGE_DEPTHS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}
BN_EPS = 1e-5
# PyTorch's BatchNorm momentum 0.1 (weight of the new batch) is Flax's 0.9.
BN_MOMENTUM = 0.9


def is_bottleneck(depth: int) -> bool:
    if depth not in STAGE_DEPTHS:
        raise ValueError(f"depth must be one of {sorted(STAGE_DEPTHS)}, got {depth}")
    return depth >= 50


def stage_strides_dilations(output_stride: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Strides and dilations of stages 1-4 for the given output stride."""
    if output_stride == 8:
        return (1, 2, 1, 1), (1, 1, 2, 4)
    if output_stride == 16:
        return (1, 2, 2, 1), (1, 1, 1, 2)
    if output_stride == 32:
        return (1, 2, 2, 2), (1, 1, 1, 1)
    raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")


@dataclasses.dataclass(frozen=True)
class Formulation:
    """How the network is evaluated: the same function and the same parameters either
    way, only faster on XLA:CPU (the training-step benchmark, benchmarks/train_step.py
    ``--impls fast,reference``, measures 2.75x for ResNet-101 at 128 px).

    matmul_1x1: 1x1 convolutions as ``Conv1x1``, a matmul whose custom VJP puts the
      wider operand on the left (autodiff of ``nn.Conv`` makes the weight gradient an
      image-sized convolution; a plain dot makes XLA transpose slowly).
    block_barrier: each residual block's output divided by a run-time 1
      (``runtime_one``, bit-exact), so that XLA's fusion does not recompute the
      residual stream of earlier blocks inside later fusions.
    fused_heads: the four PSP heads evaluated jointly (``heads.fused_psp_heads``:
      pooling once, no 1024-channel map at stride 2).
    merged_resize: with fused heads, one full-size resize product for all terms.
    """

    matmul_1x1: bool = True
    block_barrier: bool = True
    fused_heads: bool = True
    merged_resize: bool = True


FAST = Formulation()
REFERENCE = Formulation(
    matmul_1x1=False, block_barrier=False, fused_heads=False, merged_resize=False
)


@jax.custom_vjp
def matmul(x, w):
    """``x @ w`` over the last axis of ``x`` (any leading shape), ``w`` (C_in, C_out).

    The custom VJP computes the weight gradient as a dot product over the flattened
    pixels with the wider of (x, cotangent) as the left operand. XLA:CPU otherwise
    copies the right-hand operand through a slow transpose loop, and autodiff of a
    1x1 ``nn.Conv`` turns the weight gradient into a convolution with an image-sized
    window (docs/performance.md, cause 2).
    """
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _matmul_fwd(x, w):
    return matmul(x, w), (x, w)


def _matmul_bwd(res, g):
    x, w = res
    dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())))
    x2 = x.reshape(-1, x.shape[-1])
    g2 = g.reshape(-1, g.shape[-1])
    contract = (((0,), (0,)), ((), ()))
    if x2.shape[1] >= g2.shape[1]:
        dw = jax.lax.dot_general(x2, g2, contract)
    else:
        dw = jax.lax.dot_general(g2, x2, contract).T
    return dx.astype(x.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Conv1x1(nn.Module):
    """A 1x1 convolution (stride s: subsample ``x[:, ::s, ::s]``) as ``matmul``.

    Same variables as ``nn.Conv(features, (1, 1))``: ``kernel`` (1, 1, C_in, C_out) and,
    with ``use_bias``, ``bias`` (C_out,); same dtype promotion. Called without ``x``
    (``in_features`` given instead) it returns ``(kernel, bias)`` as stored, so that a
    parent can combine several kernels (the fused heads).
    """

    features: int
    stride: int = 1
    use_bias: bool = False
    dtype: Any = None
    kernel_init: Any = conv_init
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x=None, *, in_features: int | None = None):
        cin = x.shape[-1] if x is not None else in_features
        kernel = self.param("kernel", self.kernel_init, (1, 1, cin, self.features), jnp.float32)
        bias = (
            self.param("bias", self.bias_init, (self.features,), jnp.float32)
            if self.use_bias
            else None
        )
        if x is None:
            return kernel, bias
        dtype = self.dtype or jnp.result_type(x.dtype, kernel.dtype)
        if self.stride != 1:
            x = x[:, :: self.stride, :: self.stride, :]
        y = matmul(x.astype(dtype), kernel[0, 0].astype(dtype))
        if bias is not None:
            y = y + bias.astype(dtype)
        return y


def runtime_one(x):
    """1.0 computed at run time from ``x`` (XLA cannot fold it), without gradient.

    ``y / runtime_one(x)`` is bit-exact and stops XLA:CPU from duplicating the
    elementwise ops that produced ``y`` into every fusion that reads it
    (docs/performance.md, cause 1). Finite whatever ``x[0]`` holds.
    """
    x0 = jax.lax.stop_gradient(x.ravel()[0])
    return 1 + 0 * jnp.where(jnp.abs(x0) < 1, x0, jnp.asarray(0.5, x0.dtype))


def barrier(y, one):
    """``y / one`` (``one`` from ``runtime_one``), or ``y`` when ``one`` is None."""
    if one is None:
        return y
    return y / one.astype(y.dtype)


def conv(
    features: int,
    kernel: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    dtype: Any = None,
    name: str | None = None,
    use_bias: bool = False,
    kernel_init=conv_init,
    matmul_1x1: bool = True,
) -> nn.Module:
    """A convolution with PyTorch's symmetric padding ``dilation * (k - 1) // 2``.

    1x1 convolutions are ``Conv1x1`` (same variables as ``nn.Conv``) with
    ``matmul_1x1`` (``Formulation``).
    """
    if kernel == 1 and matmul_1x1:
        return Conv1x1(
            features,
            stride=stride,
            use_bias=use_bias,
            dtype=dtype,
            kernel_init=kernel_init,
            name=name,
        )
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=kernel_init,
        name=name,
    )


class FrozenBatchNorm(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (see module doc).

    Same variables as ``nn.BatchNorm``; ``y = (x - mean) / sqrt(var + eps) * scale + bias``
    with the scale and shift folded in float32 and applied in ``dtype``.
    """

    epsilon: float = BN_EPS
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        mul = jax.lax.stop_gradient(scale) * jax.lax.rsqrt(var.value + self.epsilon)
        add = jax.lax.stop_gradient(bias) - mean.value * mul
        dtype = self.dtype or x.dtype
        return x.astype(dtype) * mul.astype(dtype) + add.astype(dtype)


def batch_norm(
    train: bool, *, frozen: bool = False, dtype: Any = None, name: str | None = None
) -> nn.Module:
    """BatchNorm in PyTorch's conventions (eps 1e-5, momentum 0.1), or frozen."""
    if frozen:
        return FrozenBatchNorm(dtype=dtype, name=name)
    return nn.BatchNorm(
        use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=dtype, name=name
    )


def _residual(block, x, out, train: bool, one):
    """`relu(out + shortcut(x))` / one: the end every block shares (called inside its
    compact `__call__`, so the shortcut's layers are the block's own)."""
    if block.downsample:
        x = conv(
            block.planes * block.expansion,
            1,
            stride=block.stride,
            dtype=block.dtype,
            name="downsample_conv",
            matmul_1x1=block.formulation.matmul_1x1,
        )(x)
        x = batch_norm(train, frozen=block.frozen_bn, dtype=block.dtype, name="downsample_bn")(x)
    return barrier(nn.relu(out + x), one)


class _Block(nn.Module):
    """The fields every residual block has."""

    planes: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    frozen_bn: bool = False
    dtype: Any = None
    formulation: Formulation = FAST


class BasicBlock(_Block):
    """Two 3x3 convolutions (ResNet-18/34). ``one`` (optional, ``runtime_one``): the
    output is divided by it, a fusion barrier (see ``barrier``)."""

    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool, one=None):
        bn = lambda name: batch_norm(train, frozen=self.frozen_bn, dtype=self.dtype, name=name)
        s, d = self.stride, self.dilation
        out = conv(self.planes, 3, stride=s, dilation=d, dtype=self.dtype, name="conv1")(x)
        out = nn.relu(bn("bn1")(out))
        out = conv(self.planes, 3, dilation=d, dtype=self.dtype, name="conv2")(out)
        return _residual(self, x, bn("bn2")(out), train, one)


class Bottleneck(_Block):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 (x4 channels) (ResNet-50/101). ``one``: as
    in ``BasicBlock``."""

    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool, one=None):
        bn = lambda name: batch_norm(train, frozen=self.frozen_bn, dtype=self.dtype, name=name)
        s, d = self.stride, self.dilation
        m = self.formulation.matmul_1x1
        out = conv(self.planes, 1, dtype=self.dtype, name="conv1", matmul_1x1=m)(x)
        out = nn.relu(bn("bn1")(out))
        out = conv(self.planes, 3, stride=s, dilation=d, dtype=self.dtype, name="conv2")(out)
        out = nn.relu(bn("bn2")(out))
        out = conv(self.planes * 4, 1, dtype=self.dtype, name="conv3", matmul_1x1=m)(out)
        return _residual(self, x, bn("bn3")(out), train, one)


class ResNet(nn.Module):
    """Dilated ResNet encoder.

    Attributes:
      depth: 18, 34 (basic blocks), 50 or 101 (bottlenecks).
      width: channels of the stem; stages have width * (1, 2, 4, 8) "planes"
        (x4 output channels for bottlenecks). 64 is the standard network.
      in_channels: expected input channels (image channels + guidance).
      output_stride: 8 (paper), 16 or 32.
      frozen_bn: see the module docstring.
      dtype: compute dtype.
      formulation: how it is evaluated (``Formulation``; same function).

    Returns a dict of features (NHWC, compute dtype):
      ``stem`` (stride 2, after conv1/bn1/ReLU, before the max pool),
      ``layer1`` (stride 4), ``layer2`` (stride 8), ``layer3``, ``layer4``.
    """

    depth: int = 101
    width: int = 64
    in_channels: int = 4
    output_stride: int = 8
    frozen_bn: bool = False
    dtype: Any = jnp.float32
    formulation: Formulation = FAST

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"expected input (B, H, W, {self.in_channels}), got {x.shape}")
        block_cls = Bottleneck if is_bottleneck(self.depth) else BasicBlock
        strides, dilations = stage_strides_dilations(self.output_stride)
        x = x.astype(self.dtype)
        one = runtime_one(x) if self.formulation.block_barrier else None
        x = conv(self.width, 7, stride=2, dtype=self.dtype, name="conv1")(x)
        x = batch_norm(train, frozen=self.frozen_bn, dtype=self.dtype, name="bn1")(x)
        x = nn.relu(x)
        feats = {"stem": x}
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        in_ch = self.width
        for stage, n_blocks in enumerate(STAGE_DEPTHS[self.depth]):
            planes = self.width * 2**stage
            for b in range(n_blocks):
                stride = strides[stage] if b == 0 else 1
                needs_ds = b == 0 and (stride != 1 or in_ch != planes * block_cls.expansion)
                x = block_cls(
                    planes,
                    stride=stride,
                    dilation=dilations[stage],
                    downsample=needs_ds,
                    frozen_bn=self.frozen_bn,
                    dtype=self.dtype,
                    formulation=self.formulation,
                    name=f"layer{stage + 1}_{b}",
                )(x, train, one)
                in_ch = planes * block_cls.expansion
            feats[f"layer{stage + 1}"] = x
        return feats

    @property
    def feature_channels(self) -> dict[str, int]:
        e = 4 if is_bottleneck(self.depth) else 1
        return {
            "stem": self.width,
            "layer1": self.width * e,
            "layer2": 2 * self.width * e,
            "layer3": 4 * self.width * e,
            "layer4": 8 * self.width * e,
        }
