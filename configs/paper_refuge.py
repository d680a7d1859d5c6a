"""The paper's REFUGE setting: optic disc and cup, each its own object (two classes).

Same training as configs/paper_prostate.py; the data are the challenge's folders in
`data.manual_dir` (see docs/data.md), cropped around the disc as the paper did, with
the official 400/400/400 split.
"""

from dlset_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "refuge_fundus"
  c.data.builder_config = "disc_crop"
  c.data.resolution = 256
  c.model.depth = 101
  c.model.frozen_backbone_bn = True
  c.optim.name = "sgd"
  c.train.batch_size = 10
  c.train.num_epochs = 100
  c.train.eval_every = 2000
  c.train.checkpoint_every = 1000
  c.eval.sweep_thresholds = True
  return c
