"""Flax Linen networks: the dilated ResNet encoder, skip fusion, PSP heads."""

from __future__ import annotations

from dlset_jax.models.deep_level_set import HEADS, DeepLevelSet, param_count, param_labels
from dlset_jax.models.resnet import FAST, REFERENCE, Formulation, ResNet

# Config fields of `model` that are not the network's: read by the training set-up.
NOT_ARCHITECTURE = ("pretrained",)


def create_model(model_config, formulation: Formulation = FAST) -> DeepLevelSet:
    """`DeepLevelSet(**config.model)`, less the fields in `NOT_ARCHITECTURE`.

    `model_config`: an ml_collections ConfigDict or a mapping with every field of the
    config schema's `model` (its defaults live there only). `formulation`: how it is
    evaluated (`resnet.Formulation`: the same function; REFERENCE for tests).
    """
    fields = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    for k in NOT_ARCHITECTURE:
        fields.pop(k, None)
    fields["psp_bins"] = tuple(fields["psp_bins"])
    return DeepLevelSet(**fields, formulation=formulation)


__all__ = [
    "DeepLevelSet",
    "FAST",
    "REFERENCE",
    "Formulation",
    "ResNet",
    "HEADS",
    "NOT_ARCHITECTURE",
    "create_model",
    "param_count",
    "param_labels",
]
