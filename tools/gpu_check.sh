#!/usr/bin/env bash
# The GPU check in one command (the device tool takes one command of <= 2,000 chars):
#
#   bash tools/gpu_check.sh             # CUDA machine: tests, trainer smoke runs, benchmarks (<= 7 min)
#   bash tools/gpu_check.sh --dry-run   # anywhere, CPU: the same script end to end in < 1 min
#
# The packages run from this working tree (nothing is installed). Wheels in .whl/ (fetched by
# tools/gpu_wheels.sh: pycocotools and higher for the lent machine's Python 3.12) are installed
# into a temporary site folder first, and the check expects their modules to import (--expect).
# Results go to ${OUT:-gpu_check_out}/gpu_check/ (gpu_check.log, summary.json, summary.md). Other
# arguments pass through to tools/gpu_check.py (--only SECTION..., --device, --expect MODULE...,
# --time-limit SECONDS). Exit status 1 when any section failed. PYTHON picks the interpreter
# (default python3), GPU_CHECK_WHEELS the wheel folder (default .whl).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
src="$root/packages/common/src:$root/packages/lavit/src:$root/packages/clkd/src"
src="$src:$root/packages/trg-kd/src:$root/packages/gp-maml/src"
export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [ -z "${LAB_DATASETS:-}" ] && [ -d "$root/../shared/datasets" ]; then
    export LAB_DATASETS="$root/../shared/datasets"
fi
args=(--out "${OUT:-gpu_check_out}")
wheels=("${GPU_CHECK_WHEELS:-$root/.whl}"/*.whl)
if [ -e "${wheels[0]}" ]; then
    site="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")"
    trap 'rm -rf "$site"' EXIT
    if "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --target "$site" "${wheels[@]}"; then
        export PYTHONPATH="$src:$site${PYTHONPATH#"$src"}"
        echo "gpu_check.sh: installed ${#wheels[@]} wheel(s) into $site: ${wheels[*]##*/}"
    else  # the check still runs; the expected modules that do not import fail it
        echo "gpu_check.sh: the wheels did not install; going on without them" >&2
    fi
    args+=(--expect)
    for wheel in "${wheels[@]}"; do  # pycocotools-2.0.11-cp312-...whl -> pycocotools
        name="${wheel##*/}"
        name="${name%%-*}"
        args+=("${name,,}")
    done
fi
"$python" tools/gpu_check.py "${args[@]}" "$@"
