"""The main job: a four-click generalist for real images of any organ and modality.

Trained on the built-in domain-randomised set (`domain_random`, generated locally:
procedural shapes and, where Debian's mricron-data is installed, anatomical label maps
and T1 textures, every label with random intensities, blur, noise and bias; see
docs/data.md), grey and colour, objects from 8 px to the whole image. Crops and click
jitter scale with the object; plain BCE on the evolved level set (the class-balanced
BCE of eq. 6 pushes contours outwards); a cosine schedule over the whole run. Sized for
a 2-core CPU (about 50 minutes with the data generation).

    python train.py --config configs/default.py --workdir workdirs/default
"""

from dlset_jax.config import base_config, cpu_sized


def get_config():
    c = cpu_sized(base_config())
    c.data.update(name="domain_random", image_kinds=("grey", "rgb"))
    # margin 20% of the object's size (at least 3 px): every object fills the same
    # share of its crop; clicks jittered by up to 3% of its size (at least 1 px).
    c.data.update(relax=3, relax_fraction=0.2, pert=1, pert_fraction=0.03)
    c.data.update(augment_scale=(0.7, 1.4), augment_rotation=180.0)
    c.loss.update(balanced=False, warmup_epochs=0.3)
    c.train.update(num_epochs=1, num_steps=3000, log_every=50, checkpoint_every=250)
    # the mask threshold chosen on the validation split of the same generator
    c.eval.sweep_thresholds = True
    c.eval.real_benchmark = True
    return c
