#!/usr/bin/env bash
# The GPU check's dry run in an environment like the lent GPU machine's (see the README's
# "GPU check"): Python 3.12, torch 2.11, torchvision 0.26, timm $TIMM, neither pycocotools nor
# higher, on a copy of the working tree as the device tool sends it (tracked and untracked files
# that git does not ignore, no ../shared beside it, so no $LAB_DATASETS), run twice: without
# wheels, then with the wheels of .whl/ (tools/gpu_wheels.sh) as the device call carries them.
#
#   nice -n 10 bash tools/gpu_like_dry_run.sh           # ~2 min (+ ~2 min to build the venv once)
#   nice -n 10 bash tools/gpu_like_dry_run.sh --tests   # + each package's fast tier there (~4 min)
#
# VENV (default ~/venv-gpu-like) is built on first use from PyPI (torch's CUDA wheel with its
# nvidia-* libraries: about 4 GB; `import torch` fails without them), with $PY312 (default: a
# python3.12 on PATH or under ~/.pyenv/versions). Results: ${OUT:-gpu_like_out}/{plain,wheels}/
# (gpu_like_out/ in the repository root by default, ignored by git).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$HOME/venv-gpu-like}"
out="$(realpath -m "${OUT:-$root/gpu_like_out}")"
timm_version="${TIMM:-1.0.31}"
#: the lent machine's versions where KINDS.md names them (timm's is not named there: the newest)
pins=(torch==2.11.0 torchvision==0.26.0 "timm==$timm_version" numpy==2.5.2 onnx==1.23.1
    onnxscript==0.7.2 scipy pytest pytest-xdist matplotlib pillow tqdm scikit-learn)
run_tests=0
[ "${1:-}" = "--tests" ] && run_tests=1

if [ ! -x "$venv/bin/python" ]; then
    py312="${PY312:-$(command -v python3.12 || ls "$HOME"/.pyenv/versions/3.12*/bin/python3.12 | tail -1)}"
    echo "building $venv with $py312"
    "$py312" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}"
fi
"$venv/bin/python" - <<'EOF'
import importlib.util, sys
present = [m for m in ("pycocotools", "higher") if importlib.util.find_spec(m)]
if present:
    sys.exit(f"{sys.prefix} has {present}: the lent machine has neither; uninstall them")
EOF
"$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null |
    grep -iE '^(torch|torchvision|timm|numpy|scipy|pytest|onnx) ' | tr -s ' ' | paste -sd ';'

work="$(mktemp -d "${TMPDIR:-/tmp}/gpu_like.XXXXXX")"
trap 'rm -rf "$work"' EXIT
copy="$work/repo"  # what a device call sends: no ../shared beside it
mkdir -p "$copy"
(cd "$root" && git ls-files -z -co --exclude-standard |
    tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -xf - -C "$copy"
[ -d "$root/.whl" ] && cp -r "$root/.whl" "$copy/.whl"
echo "working tree as sent: $(du -sm "$copy" | cut -f1) MiB (the device tool's limit: 64 MiB)"
mkdir -p "$work/no_wheels" "$out"
status=0
for kind in plain wheels; do
    wheels="$work/no_wheels"
    if [ "$kind" = wheels ]; then
        if ! compgen -G "$copy/.whl/*.whl" >/dev/null; then
            echo "== wheels: skipped (no .whl/: run tools/gpu_wheels.sh)"
            continue
        fi
        wheels="$copy/.whl"
    fi
    rm -rf "${out:?}/$kind"
    start=$SECONDS
    rc=0
    (cd "$copy" && env -u LAB_DATASETS OUT="$out/$kind" PYTHON="$venv/bin/python" \
        GPU_CHECK_WHEELS="$wheels" bash tools/gpu_check.sh --dry-run >"$work/$kind.log" 2>&1) ||
        rc=$?
    echo "== $kind: exit $rc in $((SECONDS - start)) s; $out/$kind/gpu_check/summary.md"
    grep -E '^== [a-z]+: (ok|failed)|^gpu_check(\.sh)?: ' "$work/$kind.log" || true
    [ "$rc" = 0 ] || status=1
done

if [ "$run_tests" = 1 ]; then
    src="$copy/packages/common/src:$copy/packages/lavit/src:$copy/packages/clkd/src"
    src="$src:$copy/packages/trg-kd/src:$copy/packages/gp-maml/src"
    # the fast tier needs the shared datasets; the packages are not installed (as on the GPU
    # machine), so each package's version-vs-metadata test fails
    datasets="${LAB_DATASETS:-$root/../shared/datasets}"
    for folder in common lavit clkd trg-kd gp-maml; do
        start=$SECONDS
        line="$(cd "$copy/packages/$folder" && PYTHONPATH="$src" LAB_DATASETS="$datasets" \
            OMP_NUM_THREADS=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" \
            -n 2 -rfEs 2>&1 | tee "$out/tests_$folder.log" | tail -1)" || true
        echo "== tests $folder ($((SECONDS - start)) s): $line"
        grep -E '^(FAILED|ERROR) ' "$out/tests_$folder.log" || true
    done
fi
exit "$status"
