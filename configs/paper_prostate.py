"""The paper's prostate MR setting (section 4.2), for GPUs.

ResNet-101 (output stride 8), batch 10, 100 epochs, lr 3e-4 decayed by 0.3 every 10
epochs, SGD with momentum 0.9 and weight decay 1e-6 (the authors' code), heads at 10x,
gradient norm clipped at 10, T = 5, 256x256 crops, confidence map + eq. 8 boundary loss.
Reads NIfTI image/label volumes from `data.manual_dir` (see docs/data.md); split by
patient 70/10/20. Pass ImageNet weights with `--config.model.pretrained=resnet101.pth`.
"""

from dlset_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "medical_volumes"
  c.data.builder_config = "prostate"
  c.data.resolution = 256
  c.model.depth = 101
  c.model.frozen_backbone_bn = True   # as the authors, with ImageNet weights
  c.optim.name = "sgd"
  c.train.batch_size = 10
  c.train.num_epochs = 100
  c.train.eval_every = 2000
  c.train.checkpoint_every = 1000
  c.eval.sweep_thresholds = True
  return c
