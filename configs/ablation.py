"""The four rows of the paper's Table 1 on the built-in data (CPU-sized).

    python train.py --config configs/ablation.py:baseline --workdir runs/baseline
    (baseline | cm | bd | cm_bd)

baseline = DELSE (heatmap guidance, no boundary loss); cm = + confidence map;
bd = + boundary loss (eq. 8); cm_bd = both (the paper's method).
"""

from dlset_jax.config import base_config, cpu_sized

VARIANTS = {
    "baseline": ("heatmap", "none"),
    "cm": ("heatmap+cm", "none"),
    "bd": ("heatmap", "eq8"),
    "cm_bd": ("heatmap+cm", "eq8"),
}


def get_config(variant="cm_bd"):
    if variant not in VARIANTS:
        raise ValueError(f"ablation variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    c = cpu_sized(base_config())
    c.data.guidance, c.loss.boundary = VARIANTS[variant]
    return c
