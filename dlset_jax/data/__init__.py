"""Data: synthetic generators, TFDS builders and the grain input pipeline.

Submodules (import what you need; ``builders`` imports tensorflow_datasets):
  synthetic      procedural MR-like prostate slices and fundus crops (numpy)
  domain_random  domain-randomised training images from label maps (numpy)
  builders       TFDS builders (array_record, no TensorFlow)
  pipeline       load_source / load_split, make_train_loader, make_eval_iterator
File readers (images, volumes, DICOM, points files) are ``dlset_jax.readers``.
See docs/data.md.
"""
