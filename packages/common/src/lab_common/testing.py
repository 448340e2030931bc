"""Pytest conventions shared by every package's tests (imports pytest: for tests only)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import pytest
import torch

__all__ = ["DEVICES", "CUDA_SKIP_REASON", "run_torchrun"]

CUDA_SKIP_REASON = "no CUDA device on this machine; CUDA tests run where a GPU is present"

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
