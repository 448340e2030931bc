#!/usr/bin/env bash
# The wheels the GPU check can use on the lent machine, which has neither pycocotools nor higher
# and reaches no package index: CPython 3.12, manylinux x86-64 (the device README's recipe),
# saved to .whl/ (ignored by git). The device call carries them (carry [".whl"]) and
# tools/gpu_check.sh installs them into a temporary site folder and expects their modules.
#
#   bash tools/gpu_wheels.sh        # on a machine with pip and an index: about 1 MB
#
# --no-deps: their needs (numpy for pycocotools, torch for higher) are on the lent machine.
# The folder is emptied first: two versions of one wheel would stop the install there.
# PYTHON picks the interpreter that runs pip (default python3; any version works).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
wheels=(pycocotools==2.0.11 higher==0.2.1)
dest="$root/.whl"
mkdir -p "$dest"
rm -f "$dest"/*.whl
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
"$python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${platforms[@]}" -d "$dest" "${wheels[@]}"
ls -l "$dest"
