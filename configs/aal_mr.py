"""Real MR: the twelve deep grey structures of the AAL atlas on the Colin27 T1 brain.

Needs `apt-get install mricron-data` (BSD-3). One subject, so train and test are
separate slabs of axial slices with a gap (see docs/data.md). CPU-sized model; the
polygon through the four extreme points scores about 0.79 DSC on these objects, the
bar a model has to clear.
"""

from dlset_jax.config import base_config, cpu_sized


def get_config():
    c = cpu_sized(base_config())
    c.data.name = "colin27_aal"
    c.data.builder_config = "deep_grey"
    c.train.num_epochs = 40
    return c
