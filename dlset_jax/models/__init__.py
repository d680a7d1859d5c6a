"""Flax Linen networks: the dilated ResNet encoder, skip fusion, PSP heads."""

from __future__ import annotations

import jax.numpy as jnp

from dlset_jax.models.deep_level_set import HEADS, DeepLevelSet, param_count, param_labels
from dlset_jax.models.resnet import ResNet

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_model(model_config) -> DeepLevelSet:
    """``DeepLevelSet`` from ``config.model`` (an ml_collections ConfigDict or a
    mapping): depth, width, output_stride, frozen_backbone_bn,
    compute_dtype ('float32' | 'bfloat16'), in_channels; optional
    fusion_channels (128), fusion_align_corners (False), psp_channels (128),
    psp_bins ((1, 2, 3, 6))."""
    get = model_config.get
    dtype_name = get("compute_dtype", "float32")
    if dtype_name not in _DTYPES:
        raise ValueError(f"compute_dtype must be one of {sorted(_DTYPES)}, got {dtype_name!r}")
    return DeepLevelSet(
        depth=int(get("depth", 101)),
        width=int(get("width", 64)),
        in_channels=int(get("in_channels", 4)),
        output_stride=int(get("output_stride", 8)),
        frozen_bn=bool(get("frozen_backbone_bn", True)),
        dtype=_DTYPES[dtype_name],
        fusion_channels=int(get("fusion_channels", 128)),
        fusion_align_corners=bool(get("fusion_align_corners", False)),
        psp_channels=int(get("psp_channels", 128)),
        psp_bins=tuple(get("psp_bins", (1, 2, 3, 6))),
    )


__all__ = ["DeepLevelSet", "ResNet", "HEADS", "create_model", "param_count", "param_labels"]
