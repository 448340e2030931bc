"""Shared fixtures: a tiny LaViT configuration that exercises every code path quickly."""

import json
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


@pytest.fixture
def write_coco() -> Callable[..., object]:
    """:func:`_write_coco`: a tiny COCO folder made in the test."""
    return _write_coco


def _write_coco(
    root, annotations: dict[int, list[tuple]], categories=(0, 5), size=64, stated_size=None
):
    """A COCO folder of ``size``-pixel random images: image id -> ``(ann id, category id,
    [x, y, w, h])`` rows, each with a polygon mask filling its box; ``stated_size`` (default
    ``size``) is the height/width the JSON states and the masks are decoded at."""
    from PIL import Image

    stated = stated_size or size
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    g = torch.Generator().manual_seed(0)
    for image_id, rows in annotations.items():
        pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(root / "images" / f"{image_id}.png")
        images.append(dict(id=image_id, file_name=f"{image_id}.png", height=stated, width=stated))
        for ann_id, category, (x, y, w, h) in rows:
            polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            anns.append(
                dict(
                    id=ann_id,
                    image_id=image_id,
                    category_id=category,
                    bbox=[x, y, w, h],
                    area=w * h,
                    iscrowd=0,
                    segmentation=[polygon],
                )
            )
    cats = [dict(id=c, name=f"c{c}") for c in categories]
    (root / "annotations.json").write_text(
        json.dumps(dict(images=images, annotations=anns, categories=cats))
    )
    return root
