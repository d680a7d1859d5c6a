"""The built-in synthetic fundus data (optic disc and cup, two classes), CPU-sized."""

from dlset_jax.config import base_config, cpu_sized


def get_config():
    c = cpu_sized(base_config())
    c.data.name = "synthetic_fundus"
    c.data.image_kinds = ("rgb",)
    return c
