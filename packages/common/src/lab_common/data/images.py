"""Reading one image file, with an error that names the file when it is unreadable."""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

__all__ = ["read_rgb"]


def read_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open ``path`` as an RGB ``PIL.Image`` (the loader of the project's image folders).

    Raises:
        ValueError: the file is truncated, corrupt or not an image; the message names it.
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise ValueError(
            f"cannot read image {os.fspath(path)} ({type(err).__name__}: {err}); "
            "replace or remove the file"
        ) from err
