"""Shared fixtures: a tiny LaViT configuration that exercises every code path quickly."""

import os
import subprocess
import sys
from collections.abc import Callable, Sequence

import pytest
import torch

import lavit
from lab_common.testing import require_optional

#: 32x32 input, grids 8/4/2/1, one VA + one LA block per stage, key grid 4x4 -> 4x4 -> 2x2 -> 1x1
#: (non-square LA in stage 0, a shrinking key grid for the attention residual).
TINY = dict(
    img_size=32,
    num_classes=7,
    depths=(2, 2, 2, 2),
    la_depths=(1, 1, 1, 1),
    embed_dims=(16, 32, 48, 64),
    num_heads=(1, 2, 3, 4),
    mlp_ratios=(2, 2, 2, 2),
    sr_ratios=(2, 1, 1, 1),
)


#: a small paper-layout LaViT (7x7 windows, VA + LA per stage) for the dense-prediction tests
SMALL_BACKBONE = dict(
    depths=(2, 2, 2, 2),
    la_depths=(1, 1, 1, 1),
    embed_dims=(32, 64, 96, 128),
    num_heads=(1, 2, 3, 4),
    mlp_ratios=(2, 2, 2, 2),
    img_size=128,
)


@pytest.fixture
def small_backbone() -> dict:
    return dict(SMALL_BACKBONE)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple:
    """Six training and four validation scenes (folders), made once per test file.

    Needs pycocotools (lavit's ``detection`` extra): its tests skip where it is not installed.
    """
    from lavit.dense_data import make_scenes

    require_optional("pycocotools")

    root = tmp_path_factory.mktemp("scenes")
    return make_scenes(root / "train", 6, "train", seed=0), make_scenes(root / "val", 4, "val")


@pytest.fixture
def tiny_kwargs() -> dict:
    return dict(TINY)


@pytest.fixture
def tiny_model() -> lavit.LaViT:
    torch.manual_seed(0)
    return lavit.LaViT(**TINY).eval()


@pytest.fixture
def tiny_input() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def run_modules() -> Callable[..., list[subprocess.CompletedProcess]]:
    """Run ``python -m <module> <args>`` commands side by side; their completed processes.

    Each command is ``(module, *args)`` and gets this process's environment (so PYTHONPATH
    reaches the sources under test) with one torch thread.
    """

    def run(*commands: Sequence[str], timeout: float = 300) -> list[subprocess.CompletedProcess]:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", *map(str, cmd)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for cmd in commands
        ]
        done = []
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        return done

    return run
