"""The paper's REFUGE setting: optic disc and cup, each its own object (two classes).

Same training as configs/paper_prostate.py; the data are the challenge's folders in
`data.manual_dir` (see docs/data.md), cropped around the disc as the paper did, with
the official 400/400/400 split.
"""

from dlset_jax.config import base_config, paper_training


def get_config():
    c = paper_training(base_config())
    c.data.name = "refuge_fundus"
    c.data.builder_config = "disc_crop"
    c.data.image_kinds = ("rgb",)
    return c
