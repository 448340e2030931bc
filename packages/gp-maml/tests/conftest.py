import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _png(seed: int, size: int = 105) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size)) > 0.5).astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def shared_omniglot() -> Path:
    """The shared Omniglot subsets (``lab_common.shared_datasets_root() / "omniglot"``)."""
    from lab_common import shared_datasets_root

    try:
        path = shared_datasets_root() / "omniglot"
    except (FileNotFoundError, ValueError) as err:
        pytest.skip(f"shared datasets not available: {err}")
    if not (path / "images_background_small1.zip").is_file():
        pytest.skip(f"Omniglot small subsets not in {path}")
    return path


@pytest.fixture
def omniglot_zip(tmp_path) -> Path:
    """A tiny official-layout zip: 2 alphabets x 3 characters x 4 drawings."""
    path = tmp_path / "images_background_tiny.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for a in range(2):
            for c in range(3):
                for d in range(4):
                    name = (
                        f"images_background_tiny/alpha{a}/character{c + 1:02d}/{a}{c}_{d:02d}.png"
                    )
                    zf.writestr(name, _png(a * 100 + c * 10 + d))
    return path


@pytest.fixture
def cifar_root(tmp_path) -> Path:
    """A synthetic CIFAR-100 in torchvision's pickle layout: 6 images per class."""
    from gp_maml.datasets.cifar import _CIFAR_FS_TEST, _CIFAR_FS_VAL

    others = [f"class{i:02d}" for i in range(100 - len(_CIFAR_FS_VAL) - len(_CIFAR_FS_TEST))]
    names = sorted(others + _CIFAR_FS_VAL + _CIFAR_FS_TEST)
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    rng = np.random.default_rng(0)
    for split, per in (("train", 5), ("test", 1)):
        fine = np.repeat(np.arange(100), per)
        entry = {
            "data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
            "fine_labels": fine.tolist(),
            "coarse_labels": (fine // 5).tolist(),
        }
        (base / split).write_bytes(pickle.dumps(entry))
    (base / "meta").write_bytes(pickle.dumps({"fine_label_names": names}))
    return tmp_path
