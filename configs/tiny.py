"""A tiny configuration for tests and smoke runs (seconds per step on a CPU)."""

from dlset_jax.config import base_config


def get_config():
    c = base_config()
    c.data.update(name="synthetic_prostate", builder_config="tiny", resolution=32, augment=False)
    c.model.update(depth=18, width=4, fusion_channels=8, psp_channels=8)
    c.optim.update(name="adam", learning_rate=1e-3)
    c.loss.warmup_epochs = 1.0
    c.train.update(batch_size=2, num_steps=4, log_every=2, eval_every=0, checkpoint_every=2)
    c.eval.update(batch_size=2, num_overlays=2)
    return c
