#!/usr/bin/env bash
# The GPU check of issue 18 in one command (the device tool takes one command of <= 2,000 chars):
#
#   bash tools/gpu_check.sh             # CUDA machine: tests, trainer smoke runs, benchmarks (~8 min)
#   bash tools/gpu_check.sh --dry-run   # anywhere, CPU: the same script end to end in < 1 min
#
# The packages run from this working tree (nothing is installed). Results go to
# ${OUT:-gpu_check_out}/gpu_check/ (gpu_check.log, summary.json, summary.md). Other arguments
# pass through to tools/gpu_check.py (--only SECTION..., --device). Exit status 1 when any
# section failed. PYTHON picks the interpreter (default python3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
src="$root/packages/common/src:$root/packages/lavit/src:$root/packages/clkd/src"
src="$src:$root/packages/trg-kd/src:$root/packages/gp-maml/src"
export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [ -z "${LAB_DATASETS:-}" ] && [ -d "$root/../shared/datasets" ]; then
    export LAB_DATASETS="$root/../shared/datasets"
fi
exec "${PYTHON:-python3}" tools/gpu_check.py --out "${OUT:-gpu_check_out}" "$@"
