"""The deep level set network: dilated ResNet, skip fusion, four PSP heads.

``DeepLevelSet()(x, train)`` maps a crop ``x`` of shape (B, H, W, in_channels)
(image channels + guidance channel, NHWC) to a dict of float32 maps at the
input resolution (bilinear, corners aligned):

  ``phi0``   (B, H, W, 1)  initial level set function
  ``motion`` (B, H, W, 2)  motion map M, channel 0 = y, channel 1 = x
  ``g``      (B, H, W, 1)  curvature modulation, after a sigmoid
  ``logits`` (B, H, W, 2)  class logits, channel 0 = object, 1 = background

Parameters: top-level subtrees ``backbone`` (ResNet, torchvision names),
``fusion`` and ``head_phi0`` / ``head_motion`` / ``head_g`` / ``head_logits``.
``param_labels`` tells the backbone from the heads (the heads get 10x the
learning rate in the authors' training). BatchNorm statistics live in the
``batch_stats`` collection: apply with ``mutable=['batch_stats']`` when
``train=True``.

The four heads are evaluated jointly (``heads.fused_psp_heads``: shared pyramid
pooling, bottleneck convolutions split by rows so that no 1024-channel map is formed
at stride 2); ``formulation=Formulation(fused_heads=False)`` evaluates them one by one
on the concatenated fused map. Same variables and math either way.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlset_jax.models.heads import PSPHead, SkipFusion, fused_psp_heads, resize_bilinear
from dlset_jax.models.resnet import FAST, Formulation, ResNet

# name -> output channels, in the order the authors' four heads are built.
HEADS = {"phi0": 1, "motion": 2, "g": 1, "logits": 2}
BACKBONE = "backbone"


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class DeepLevelSet(nn.Module):
    """The network; its fields are exactly the config's `model.*` (but `pretrained`).

    Built as `models.create_model(config.model)`: the defaults live in the config
    schema (`dlset_jax/config.py`) only.
    """

    depth: int
    width: int
    in_channels: int
    output_stride: int
    frozen_backbone_bn: bool
    compute_dtype: str
    fusion_channels: int
    fusion_align_corners: bool
    psp_channels: int
    psp_bins: Sequence[int]
    # How the network is evaluated, not what it computes: not a config field.
    formulation: Formulation = FAST

    @property
    def dtype(self) -> Any:
        if self.compute_dtype not in _DTYPES:
            raise ValueError(
                f"compute_dtype must be one of {sorted(_DTYPES)}, got {self.compute_dtype!r}"
            )
        return _DTYPES[self.compute_dtype]

    @nn.compact
    def __call__(self, x, train: bool = False):
        size = x.shape[1:3]
        feats = ResNet(
            depth=self.depth,
            width=self.width,
            in_channels=self.in_channels,
            output_stride=self.output_stride,
            frozen_bn=self.frozen_backbone_bn,
            dtype=self.dtype,
            formulation=self.formulation,
            name=BACKBONE,
        )(x, train)
        fusion = SkipFusion(
            channels=self.fusion_channels,
            align_corners=self.fusion_align_corners,
            dtype=self.dtype,
            name="fusion",
        )
        heads = [
            PSPHead(
                n_out,
                in_channels=4 * self.fusion_channels,
                channels=self.psp_channels,
                bins=tuple(self.psp_bins),
                dtype=self.dtype,
                formulation=self.formulation,
                name=f"head_{name}",
            )
            for name, n_out in HEADS.items()
        ]
        if self.formulation.fused_heads:
            # Same math without the full-resolution concatenations (see fused_psp_heads).
            parts = fusion(feats, train, return_parts=True)
            ys = fused_psp_heads(
                heads, parts, feats["stem"].shape[1:3], self.fusion_align_corners, train
            )
        else:
            fused = fusion(feats, train)
            ys = [head(fused, train) for head in heads]
        # One resize of all heads' channels to the input resolution.
        y = resize_bilinear(
            jnp.concatenate([y.astype(jnp.float32) for y in ys], axis=-1), size, align_corners=True
        )
        out, off = {}, 0
        for name, n_out in HEADS.items():
            out[name] = y[..., off : off + n_out]
            off += n_out
        out["g"] = jax.nn.sigmoid(out["g"])
        return out

    def init_variables(self, rng, image_size: int | Sequence[int] = 64, batch: int = 1):
        """``init`` on a zero input of the given size (any size works later).

        Compiled as one program: run op by op, the initialisation of a ResNet dispatches
        (and compiles) hundreds of small operations, 20 s for the tiny test model on a
        CPU against 8 s compiled (0.5 s from a persistent compilation cache). One jitted
        function for every model (the module is its static argument), so the abstract
        evaluation a caller does first (``jax.eval_shape``) and the initialisation share
        one trace: tracing a ResNet costs seconds of Python.
        """
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        x = jnp.zeros((batch, *hw, self.in_channels), jnp.float32)
        return _init(self, rng, x)


@functools.partial(jax.jit, static_argnums=0)
def _init(model: DeepLevelSet, rng, x):
    return model.init(rng, x, train=False)


def param_labels(params, frozen_bn: bool = False):
    """Same tree as ``params`` with leaves ``'backbone'`` or ``'head'``.

    With ``frozen_bn=True`` the backbone's BatchNorm scale/bias leaves are
    labelled ``'frozen'`` (give them ``optax.set_to_zero()`` so that weight decay
    and momentum cannot move them either).
    """

    def label(path, _):
        top = path[0].key
        if top != BACKBONE:
            return "head"
        module = path[-2].key
        if frozen_bn and (module.startswith("bn") or module == "downsample_bn"):
            return "frozen"
        return "backbone"

    return jax.tree_util.tree_map_with_path(label, params)


def param_count(tree) -> int:
    """Number of scalars in a (params) tree; works on ShapeDtypeStructs too."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))
