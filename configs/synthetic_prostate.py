"""The built-in synthetic_prostate data on a 2-core CPU (the paper's task, simulated).

Sized (dlset_jax.config.cpu_sized) to train, evaluate and print test metrics in
minutes on a laptop-class CPU. The paper's settings (ResNet-101, SGD, 100 epochs) are
in configs/paper_prostate.py.

    python train.py --config configs/synthetic_prostate.py --workdir workdirs/prostate
"""

from dlset_jax.config import base_config, cpu_sized


def get_config():
    c = cpu_sized(base_config())
    c.data.name = "synthetic_prostate"
    return c
