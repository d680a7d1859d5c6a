r"""Segments objects of your own image from four clicks each, with a trained workdir.

    # a PNG/JPEG/TIFF image, one object per --points (left right top bottom, "x,y")
    python predict.py --workdir workdirs/default --image slice.png \
        --points "31,60 97,58 62,24 66,95" --out_dir out/
    # a NIfTI volume: a slice index for the command-line points ...
    python predict.py --workdir workdirs/default --image case.nii.gz --slice 12 \
        --points "31,60 97,58 62,24 66,95" --out_dir out/
    # ... or a points file with a slice column (every slice that has points)
    python predict.py --workdir workdirs/default --image case.nii.gz \
        --points_file clicks.csv --ground_truth case_label.nii.gz --out_dir out/
    # a whole structure from four clicks on one slice (and its first and last slice)
    python predict.py --workdir workdirs/default --image case.nii.gz --slice 12 \
        --points "31,60 97,58 62,24 66,95" --propagate --extent 8,17 --out_dir out/
    # ... or from a folder holding one DICOM series (NIfTI label volume out)
    python predict.py --workdir workdirs/default --image series_folder/ --slice 12 \
        --points "31,60 97,58 62,24 66,95" --propagate --extent 8,17 --out_dir out/

Points files, one object per line: CSV with a header naming the columns x1,y1,x2,y2,
x3,y3,x4,y4 (left, right, top, bottom) and optionally class, slice, label; or JSON
(a list of {"points": [[x, y] x 4], "class", "slice", "label", "corrections"}). Or one
click per line, CSV with the columns object,kind,x,y (kind: extreme, four per object
in the order left, right, top, bottom; positive / negative: corrective clicks, for a
model trained with them) and optionally slice, class, label, first_slice, last_slice; with
--propagate a corrective click may name another slice than its object's four points (it
acts where the propagation reaches that slice). What is written, and
how inputs are read: `dlset_jax/segment_files.py`. Errors are one line on stderr and
exit status 1; nothing is written unless everything succeeded.
"""

import os
import sys
import warnings

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).")
flags.DEFINE_string(
    "image", None, "Image (PNG/JPEG/TIFF/BMP), NIfTI volume, DICOM file or DICOM series folder."
)
flags.DEFINE_string("out_dir", None, "Output directory (created).")
flags.DEFINE_multi_string("points", [], 'One object\'s four clicks "x,y x,y x,y x,y" (LRTB).')
flags.DEFINE_multi_string("class", [], "Class name of the --points object at the same position.")
flags.DEFINE_string("points_file", None, "CSV or JSON file of objects (see above).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_integer("slice", None, "Volume slice (NIfTI) or frame (DICOM) of the --points.")
flags.DEFINE_integer("page", None, "Page of a multi-page TIFF.")
flags.DEFINE_integer("axis", 2, "Volume axis to slice along.")
flags.DEFINE_boolean("rot90", True, "Rotate volume slices by 90 degrees (as the training data).")
flags.DEFINE_integer("channel", 0, "Channel of a 4-D volume.")
flags.DEFINE_string("spacing", None, "Pixel size ROW_MM,COL_MM (overrides the file's).")
flags.DEFINE_string("ground_truth", None, "Mask / label map (or label volume) to score against.")
flags.DEFINE_string("prefix", None, "Output file name prefix (default: the input's name).")
flags.DEFINE_boolean("reorder", False, "The points are unordered: name them by position.")
flags.DEFINE_float("threshold", None, "Mask = phi <= threshold (default: the run's).")
flags.DEFINE_integer(
    "bucket_size", None, "Batch bucket size (objects; default: dlset_jax.segmenter.BUCKET_SIZE)."
)
flags.DEFINE_boolean(
    "propagate", False, "NIfTI: each object through the volume from its slice (3-D)."
)
flags.DEFINE_string(
    "extent",
    None,
    "FIRST,LAST slice of the --points objects (--propagate); leave one empty (8, or ,17) "
    "to end that side where the structure does.",
)
flags.DEFINE_enum(
    "nonfinite",
    "error",
    ["error", "min"],
    "NaN/inf intensities: refuse (error), or read them as the file's lowest finite "
    "intensity (min: SPM writes NaN outside the brain).",
)
flags.mark_flags_as_required(["workdir", "image", "out_dir"])

PROG = "predict.py"


def main(argv) -> int:
    del argv
    # One line per problem on stderr: the libraries' info logs and warnings stay quiet.
    logging.set_verbosity(logging.ERROR)
    warnings.filterwarnings("ignore")
    from dlset_jax import checkpoint, readers, segment_files
    from dlset_jax import config as config_lib

    req = segment_files.Request(
        workdir=FLAGS.workdir,
        image=FLAGS.image,
        out_dir=FLAGS.out_dir,
        points=list(FLAGS.points),
        classes=list(FLAGS["class"].value),
        points_file=FLAGS.points_file,
        step=FLAGS.step,
        slice=FLAGS.slice,
        page=FLAGS.page,
        axis=FLAGS.axis,
        rot90=FLAGS.rot90,
        channel=FLAGS.channel,
        spacing=FLAGS.spacing,
        ground_truth=FLAGS.ground_truth,
        prefix=FLAGS.prefix,
        reorder=FLAGS.reorder,
        threshold=FLAGS.threshold,
        bucket_size=FLAGS.bucket_size,
        propagate=FLAGS.propagate,
        extent=FLAGS.extent,
        nonfinite=FLAGS.nonfinite,
    )
    try:
        summary = segment_files.run(req)
    except (
        segment_files.RequestError,
        readers.DataError,
        config_lib.ConfigError,
        checkpoint.CheckpointMismatchError,
        FileNotFoundError,
        ValueError,
        OSError,
    ) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, config_lib.ConfigError):
            msg = f"config mismatch: {msg}"
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1
    for line in segment_files.report_lines(summary, req.out_dir):
        print(line)
    return 0


def run_cli(argv) -> int:
    """Parses `argv` (without the program name) and runs `main` in this process."""
    FLAGS.unparse_flags()
    try:
        FLAGS([PROG, *argv])
    except flags.Error as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    return main([])


if __name__ == "__main__":
    app.run(main)
