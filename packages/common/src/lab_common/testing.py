"""Pytest conventions shared by every package's tests (imports pytest: for tests only)."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Sequence

import pytest
import torch

__all__ = [
    "DEVICES",
    "CUDA_SKIP_REASON",
    "OPTIONAL_SKIP_PREFIX",
    "require_optional",
    "run_torchrun",
]

CUDA_SKIP_REASON = "no CUDA device on this machine; CUDA tests run where a GPU is present"
#: How a skip for a missing optional dependency begins: ``optional dependency not installed:
#: <module>`` (``tools/gpu_check.py`` reads it to tell such skips from a missing GPU).
OPTIONAL_SKIP_PREFIX = "optional dependency not installed:"

#: ``@pytest.mark.parametrize("device", DEVICES)``: CPU always, CUDA when available; the CUDA
#: cases carry the ``cuda`` marker (``pytest -m cuda`` selects them).
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON),
        ],
    ),
]


def require_optional(module: str) -> types.ModuleType:
    """Import ``module`` (an optional dependency, e.g. ``pycocotools``), or skip the caller.

    The skip reason is ``OPTIONAL_SKIP_PREFIX`` followed by the module's top-level name, so a
    plain test run shows what is missing and the GPU check can tell it from a missing GPU.
    Call it in a test or fixture (a module-level call skips the whole file).
    """
    __tracebackhide__ = True  # a skip reports the caller's line, not this one
    top = module.partition(".")[0]
    return pytest.importorskip(module, reason=f"{OPTIONAL_SKIP_PREFIX} {top}")


def run_torchrun(
    args: Sequence[str], nproc: int = 2, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``torchrun --standalone --nproc_per_node nproc <args>`` (one thread per rank).

    ``args`` is a script path or ``-m module`` plus its arguments. Fails the calling test with
    the tail of stderr when any rank exits non-zero; ``--standalone`` picks a free port.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", str(nproc), *map(str, args)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc
