r"""The interactive benchmark of a workdir whose model takes corrective clicks.

    python scripts/interactive_benchmark.py --workdir workdirs/interactive \
        [--synthetic_objects 200] [--data_dir data/tfds] [--honour_width W] [--points_width W] [--out_dir D]

Synthetic: the first `--synthetic_objects` objects of the test split of each of
`--synthetic_data` (domain_random, the generalist's own generator; synthetic_prostate,
the paper's task simulated, 80 glands). Real (where Debian's mricron-data is
installed): the 60 Colin27 + AAL deep grey test objects, the jitter table, and the 3-D
table of their structures through the 8 test slices. Held-out real images of other
modalities (where `scripts/get_heldout_data.sh` put them, `--heldout_dir`): the curve
and NoC of every source of dlset_jax/heldout.py. Writes
`<workdir>/eval/interactive/{table.md,results.json,curve.png}` (see
dlset_jax/interactive_benchmark.py) and prints the table.
"""

import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).")
flags.DEFINE_string("data_dir", "data/tfds", "Where the data sets are built.")
flags.DEFINE_integer("synthetic_objects", 200, "Objects of the synthetic test split (0: none).")
flags.DEFINE_list(
    "synthetic_data",
    ["domain_random", "synthetic_prostate"],
    "The built-in data sets whose test split is scored (comma-separated).",
)
flags.DEFINE_string(
    "heldout_dir", "data/heldout", "Held-out images (scripts/get_heldout_data.sh); absent: none."
)
flags.DEFINE_string("out_dir", None, "Output directory (default: <workdir>/eval/interactive).")
flags.DEFINE_float(
    "honour_width",
    None,
    "Replaces the run's clicks.honour_width (0: the network's answer as it is).",
)
flags.DEFINE_float(
    "points_width",
    None,
    "Replaces the run's clicks.points_width (0: the answer need not contain the points).",
)
flags.mark_flags_as_required(["workdir"])


def synthetic_objects(name, data_dir, n):
    import numpy as np

    from dlset_jax.data import pipeline

    source = pipeline.load_source(name, data_dir, "test")
    out = []
    for r in range(len(source)):
        rec = source[r]
        image = np.asarray(rec["image"])
        image = image[..., 0] if np.all(image == image[..., :1]) else image
        for k, m in enumerate(np.asarray(rec["masks"])):
            if m.any() and len(out) < n:
                out.append({"image": image, "mask": m > 0, "id": f"{r}/{k}"})
        if len(out) >= n:
            break
    return out


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from dlset_jax import heldout, real_benchmark, segmenter
    from dlset_jax import interactive_benchmark as ib

    try:
        seg = segmenter.Segmenter.from_workdir(
            FLAGS.workdir,
            bucket_size=1,
            honour_width=FLAGS.honour_width,
            points_width=FLAGS.points_width,
        )
    except (FileNotFoundError, ValueError) as e:  # no checkpoint, or one of another model
        sys.exit(f"interactive_benchmark: {e}")
    if not seg.takes_corrections:
        print(
            f"interactive_benchmark: the model of {FLAGS.workdir} takes no corrective clicks "
            "(train one with configs/default.py:interactive)",
            file=sys.stderr,
        )
        return 2
    result = {"sets": {}, "jitter": {}, "3d": []}
    if FLAGS.synthetic_objects > 0:
        for name in FLAGS.synthetic_data:
            objs = synthetic_objects(name, FLAGS.data_dir, FLAGS.synthetic_objects)
            result["sets"][f"{name} test"] = ib.summarize_curves(ib.run_curves(seg, objs))
    if real_benchmark.available():
        objs = real_benchmark.test_objects(FLAGS.data_dir)
        result["sets"]["AAL deep grey test"] = ib.summarize_curves(ib.run_curves(seg, objs))
        result["jitter"] = ib.jitter_robustness(seg, objs)
        images, _, structures = ib.slab_structures(objs)
        result["3d"] = ib.run_3d(seg, images, structures, spacing=objs[0]["spacing"])
    else:
        print("mricron-data is not installed: real-image parts skipped", file=sys.stderr)
    for source in heldout.present(FLAGS.heldout_dir):
        objs = heldout.objects(FLAGS.heldout_dir, source)
        result["sets"][f"held-out {source}"] = ib.summarize_curves(ib.run_curves(seg, objs))
    out = FLAGS.out_dir or os.path.join(FLAGS.workdir, "eval", "interactive")
    ib.write(result, out)
    print(ib.table(result))
    return 0


if __name__ == "__main__":
    app.run(main)
