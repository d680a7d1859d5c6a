"""The real-image benchmark of a trained workdir: Colin27 T1 + AAL deep grey test slabs.

    python scripts/real_image_benchmark.py --workdir workdirs/default [--data_dir data/tfds]
    python scripts/real_image_benchmark.py --workdir workdirs/default --contrast 0.15
    python scripts/real_image_benchmark.py --workdir workdirs/default --speckle 4
    python scripts/real_image_benchmark.py --workdir workdirs/default --speckle 1 --grain 2 --bmode 40
    python scripts/real_image_benchmark.py --workdir workdirs/default --split validation
    python scripts/real_image_benchmark.py --workdir workdirs/default --ties middle
    python scripts/real_image_benchmark.py --workdir workdirs/default --points_width 0

Needs Debian's mricron-data (`apt-get install mricron-data`). Segments the 60 test
objects through `Segmenter` from exact and +-2 px jittered clicks and writes
`<workdir>/eval/real/{table.md,results.json,worst.png}` (see dlset_jax/real_benchmark.py).
With `--contrast c` the slices' grey levels are first squeezed to c times their spread
about the mean (`real_benchmark.with_contrast`; a CT or MR mapped to a wide window),
written to `<workdir>/eval/real_contrast<c>/`. With `--speckle L` they are multiplied by
fully developed speckle of L looks (`real_benchmark.with_speckle`; what an ultrasound
image is made of), written to `<workdir>/eval/real_speckle<L>/`; `--grain G` sets the
speckle's correlation length (px, default 1) and `--bmode D` shows the speckled slice
log-compressed over D dB as a scanner does (`eval/real_speckle<L>_grain<G>_bmode<D>/`).
`--split validation` scores the 16 objects of the validation slabs instead
(`eval/real_validation/`). `--ties middle` (or `last`) clicks, where an extreme row or
column of a label holds several pixels, the middle (last) of them instead of the first
(`targets.extreme_points`; `eval/real_ties_middle/`): how much the figures depend on
where along a flat side the simulated user clicks. `--points_width W` replaces the run's
`clicks.points_width` (0: the answer need not contain its four points;
`eval/real_points<W>/`).
"""

import os
import sys

from absl import app, flags, logging

from dlset_jax.targets import TIE_RULES

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).")
flags.DEFINE_string("data_dir", "data/tfds", "Where the colin27_aal data set is built.")
flags.DEFINE_string("out_dir", None, "Output directory (default: <workdir>/eval/real).")
flags.DEFINE_float(
    "contrast", 1.0, "Squeeze each slice's grey levels to this share of their spread."
)
flags.DEFINE_integer(
    "speckle", 0, "Multiply each slice by speckle of this many looks (0: none).", lower_bound=0
)
flags.DEFINE_float("grain", 1.0, "The speckle's correlation length (px).")
flags.DEFINE_float(
    "bmode", 0.0, "Show the speckled slice log-compressed over this many dB (0: no).", lower_bound=0
)
flags.DEFINE_enum("split", "test", ["test", "validation"], "Which slabs of colin27_aal.")
flags.DEFINE_enum(
    "ties",
    "first",
    list(TIE_RULES),
    "Which pixel of a tied extreme row / column is clicked (the benchmark's: first).",
)
flags.DEFINE_float(
    "points_width",
    None,
    "Replaces the run's clicks.points_width (0: the answer need not contain the points).",
    lower_bound=0,
)
flags.register_validator("contrast", lambda v: v > 0, "--contrast must be > 0")
flags.register_validator("grain", lambda v: v > 0, "--grain must be > 0 (px)")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from dlset_jax import real_benchmark, segmenter

    if not real_benchmark.available():
        print("real_image_benchmark: mricron-data is not installed", file=sys.stderr)
        return 2
    try:
        seg = segmenter.Segmenter.from_workdir(FLAGS.workdir, points_width=FLAGS.points_width)
    except (FileNotFoundError, ValueError) as e:  # no checkpoint, or one of another model
        sys.exit(f"real_image_benchmark: {e}")
    objects = real_benchmark.test_objects(FLAGS.data_dir, FLAGS.split)
    parts = ["real"] + (["validation"] if FLAGS.split != "test" else [])
    if FLAGS.ties != "first":
        parts.append(f"ties_{FLAGS.ties}")
    if FLAGS.points_width is not None:
        parts.append(f"points{FLAGS.points_width:g}")
    if FLAGS.contrast != 1.0:
        objects = real_benchmark.with_contrast(objects, FLAGS.contrast)
        parts.append(f"contrast{FLAGS.contrast:g}")
    if FLAGS.speckle:
        objects = real_benchmark.with_speckle(
            objects, FLAGS.speckle, FLAGS.grain, display_db=FLAGS.bmode or None
        )
        parts.append(f"speckle{FLAGS.speckle}")
        if FLAGS.grain != 1.0:
            parts.append(f"grain{FLAGS.grain:g}")
        if FLAGS.bmode:
            parts.append(f"bmode{FLAGS.bmode:g}")
    elif FLAGS.grain != 1.0 or FLAGS.bmode:
        print("real_image_benchmark: --grain and --bmode need --speckle", file=sys.stderr)
        return 2
    name = "_".join(parts)
    result = real_benchmark.run(seg, objects, ties=FLAGS.ties)
    out = FLAGS.out_dir or os.path.join(FLAGS.workdir, "eval", name)
    real_benchmark.write(result, out)
    real_benchmark.worst_cases_figure(seg, objects, result, os.path.join(out, "worst.png"))
    print(real_benchmark.table(result))
    print("\n".join(real_benchmark.verdict(result)))
    return 0


if __name__ == "__main__":
    app.run(main)
