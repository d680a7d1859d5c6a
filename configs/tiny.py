"""A tiny configuration for tests and smoke runs (seconds per step on a CPU)."""

from dlset_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "synthetic_prostate"
    c.data.builder_config = "tiny"
    c.data.resolution = 32
    c.data.augment = False
    c.model.depth = 18
    c.model.width = 4
    c.model.fusion_channels = 8
    c.model.psp_channels = 8
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    c.loss.warmup_epochs = 1
    c.train.batch_size = 2
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.eval_every = 0
    c.train.checkpoint_every = 2
    c.eval.batch_size = 2
    c.eval.num_overlays = 2
    return c
