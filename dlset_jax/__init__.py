"""dlset_jax: deep level set segmentation with confidence map and boundary loss.

Layers (imports only run downwards, each layer uses only those below it):
  1. core, pure array functions: checks, guidance, corrections, levelset, losses,
     targets, metrics, outlines
  2. models/ (Flax networks)
  3. config (the schema), checkpoint (orbax; the one loader), readers, files (I/O),
     parallel (mesh, shardings), hostmem (memory back to the OS)
  4. data/ (builders, generators, grain pipeline); inference (crops + clicks -> level sets)
  5. segmenter, volume, segment_files (clicks -> masks in an image, through a volume,
     in files)
  6. train_lib, evaluate, real_benchmark, heldout, interactive_benchmark, reporting
     (loops, scoring, logs);
     app/ (the browser annotation tool over segmenter and segment_files)
  7. train.py, eval.py, predict.py, python -m dlset_jax.app (thin entry points)
"""

__version__ = "0.1.0"
