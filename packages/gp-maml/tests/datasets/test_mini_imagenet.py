import numpy as np
import pytest
from PIL import Image

from gp_maml.datasets import mini_imagenet


def _write(root, classes=3, per=2):
    (root / "images").mkdir(parents=True)
    for split in ("train", "val", "test"):
        lines = ["filename,label"]
        for c in range(classes):
            for i in range(per):
                name = f"{split}{c}_{i}.jpg"
                Image.fromarray(np.full((90, 100, 3), c * 40, np.uint8)).save(
                    root / "images" / name
                )
                lines.append(f"{name},n0{split}{c}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


def test_reads_csv_split(tmp_path):
    _write(tmp_path / "mini")
    ds = mini_imagenet(tmp_path / "mini", "val", cache_dir=tmp_path / "cache")
    assert ds.images.shape == (6, 3, 84, 84) and ds.class_names == ["n0val0", "n0val1", "n0val2"]
    again = mini_imagenet(tmp_path / "mini", "val", cache_dir=tmp_path / "cache")
    assert (again.images == ds.images).all()


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.csv|images"):
        mini_imagenet(tmp_path, "train")
    _write(tmp_path / "m")
    (tmp_path / "m" / "test.csv").write_text("a;b\n")
    with pytest.raises(ValueError, match="filename,label"):
        mini_imagenet(tmp_path / "m", "test", use_cache=False)
    (tmp_path / "m" / "val.csv").write_text("filename,label\nmissing.jpg,n01\n")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        mini_imagenet(tmp_path / "m", "val", use_cache=False)
