"""Data: synthetic generators, TFDS builders and the grain input pipeline.

Submodules (import what you need; ``builders`` imports tensorflow_datasets):
  synthetic  procedural MR-like prostate slices and fundus crops (numpy)
  readers    image / volume I/O and label map -> objects, errors name the file
  builders   TFDS builders (array_record, no TensorFlow)
  pipeline   load_source, make_train_loader, make_eval_iterator
See docs/data.md.
"""
