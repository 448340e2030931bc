import numpy as np
import pytest
from PIL import Image

from lab_common.data.images import read_rgb


def test_read_rgb_converts_and_names_a_corrupt_file(tmp_path):
    gray = tmp_path / "g.png"
    Image.fromarray(np.full((4, 5), 7, np.uint8)).save(gray)
    img = read_rgb(gray)
    assert img.mode == "RGB" and img.size == (5, 4)
    bad = tmp_path / "bad.jpg"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.jpg.*replace or remove"):
        read_rgb(bad)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="text.png"):
        read_rgb(tmp_path / "text.png")
