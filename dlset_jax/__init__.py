"""dlset_jax: deep level set segmentation with confidence map and boundary loss.

Layering (imports only run downwards):
  core (pure array functions): guidance, levelset, losses, targets, metrics
  models/ (Flax Linen networks)
  data/ (data sets and the input pipeline), predict
  train_lib, checkpoint, evaluate, reporting, hostmem (the edges: files, devices, memory)
"""

__version__ = "0.1.0"
