"""The paper's prostate MR setting (section 4.2), for GPUs.

ResNet-101 (output stride 8), batch 10, 100 epochs, lr 3e-4 decayed by 0.3 every 10
epochs, SGD with momentum 0.9 and weight decay 1e-6 (the authors' code), heads at 10x,
gradient norm clipped at 10, T = 5, 256x256 crops, confidence map + eq. 8 boundary loss
(dlset_jax.config.paper_training). Reads NIfTI image/label volumes from
`data.manual_dir` (see docs/data.md); split by patient 70/10/20. Pass ImageNet weights
with `--config.model.pretrained=resnet101.pth`.
"""

from dlset_jax.config import base_config, paper_training


def get_config():
    c = paper_training(base_config())
    c.data.name = "medical_volumes"
    c.data.builder_config = "prostate"
    return c
