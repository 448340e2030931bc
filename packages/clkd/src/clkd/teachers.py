"""Public CIFAR teacher checkpoints → the zoo: mdistiller / RepDistiller ResNets.

mdistiller (``download_ckpts/cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth``) and
RepDistiller (``save/models/<name>_vanilla/ckpt_epoch_240.pth``) publish their CIFAR-100
teachers as ``{"model": state_dict, ...}`` with the key names of their CIFAR ResNets
(``conv1``/``bn1``, ``layer<s>.<i>.{conv1,bn1,conv2,bn2,downsample.{0,1}}``, ``fc``). The
``lab_common.distill.zoo`` ResNets hold the same tensors under timm-style names (``stem``,
``stages.<s-1>.<i>.{conv1,conv2,shortcut}.{conv,bn}``, ``head.fc``).
:func:`convert_resnet_state_dict` renames them; :func:`convert_teacher_checkpoint` writes a file
that ``clkd-train --teacher-checkpoint FILE`` (and ``trg-kd-train``) loads as its teacher::

    python -m clkd.teachers ckpt_epoch_240.pth runs/resnet32x4.pt --teacher cifar_resnet32x4
    clkd-train --dataset cifar100 --teacher cifar_resnet32x4 \\
        --teacher-checkpoint runs/resnet32x4.pt ...

Only the ResNet family (``resnet8/20/32/44/56/110``, ``resnet8x4``, ``resnet32x4``) is
converted; other architectures raise a ``ValueError`` naming the keys that were not understood.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lab_common import load_checkpoint, save_checkpoint
from lab_common.cli import positive_int, run_console
from lab_common.distill import create_model

__all__ = ["convert_resnet_state_dict", "convert_teacher_checkpoint", "main"]

_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(conv1|bn1|conv2|bn2|downsample\.0|downsample\.1)\.(\w+)$")
_BLOCK_PARTS = {
    "conv1": "conv1.conv",
    "bn1": "conv1.bn",
    "conv2": "conv2.conv",
    "bn2": "conv2.bn",
    "downsample.0": "shortcut.conv",
    "downsample.1": "shortcut.bn",
}
_TOP = {"conv1": "stem.conv", "bn1": "stem.bn", "fc": "head.fc"}


def _state_dict_of(checkpoint: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    """The tensors of a checkpoint: its ``model`` / ``state_dict`` entry, or the dict itself."""
    for key in ("model", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    return checkpoint


def convert_resnet_state_dict(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename an mdistiller / RepDistiller CIFAR ResNet state dict to the zoo's key names.

    Args:
        state: the checkpoint (``{"model": ...}`` or ``{"state_dict": ...}``) or its state dict;
            a ``module.`` prefix (DataParallel) is removed.

    Returns:
        A new state dict for ``cifar_resnet<depth>`` / ``cifar_resnet8x4`` / ``cifar_resnet32x4``
        (the tensors are shared, not copied).

    Raises:
        ValueError: a key is not a CIFAR ResNet key (e.g. a WRN or VGG checkpoint).
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in _state_dict_of(state).items():
        name = key.removeprefix("module.")
        top, _, leaf = name.partition(".")
        block = _BLOCK.match(name)
        if block:
            stage, index, part, leaf = block.groups()
            out[f"stages.{int(stage) - 1}.{index}.{_BLOCK_PARTS[part]}.{leaf}"] = value
        elif top in _TOP and "." not in leaf:
            out[f"{_TOP[top]}.{leaf}"] = value
        else:
            unknown.append(key)
    if unknown or not out:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ValueError(
            "not an mdistiller/RepDistiller CIFAR ResNet state dict: cannot map "
            f"{shown or 'no keys'} (only conv1/bn1/layer*/fc ResNets are converted)"
        )
    return out


def convert_teacher_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    teacher: str,
    num_classes: int = 100,
    in_chans: int = 3,
) -> dict[str, Any]:
    """Convert the public checkpoint ``src`` into the engine's teacher file ``dst``.

    The converted weights are loaded into a fresh ``teacher`` zoo model (strictly: every
    tensor must fit) before ``dst`` is written with the keys the distillation engine reads
    (``model``, ``model_name``, ``num_classes``, ``in_chans``; ``test_acc`` from the source's
    ``best_acc`` / ``accuracy`` when present). Returns that dict.
    """
    checkpoint = torch.load(os.fspath(src), map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{src} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    state = convert_resnet_state_dict(checkpoint)
    model = create_model(teacher, num_classes=num_classes, in_chans=in_chans)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{src} does not fit {teacher} with {num_classes} classes and {in_chans} input "
            f"channels (pick the matching --teacher / --num-classes): {err}"
        ) from err
    out: dict[str, Any] = {
        "model": model.state_dict(),
        "model_name": teacher,
        "num_classes": num_classes,
        "in_chans": in_chans,
        "source": os.fspath(src),
    }
    for key in ("best_acc", "accuracy", "test_acc"):
        if key in checkpoint:
            out["test_acc"] = float(checkpoint[key])
            break
    save_checkpoint(out, dst)
    load_checkpoint(dst)  # the engine's reader accepts it
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m clkd.teachers SRC DST --teacher NAME [--num-classes 100]``."""
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m clkd.teachers",
        description="Convert an mdistiller/RepDistiller CIFAR ResNet for --teacher-checkpoint.",
    )
    p.add_argument("src", help="the public checkpoint (ckpt_epoch_240.pth)")
    p.add_argument("dst", help="where to write the converted teacher file")
    p.add_argument("--teacher", required=True, help="zoo name, e.g. cifar_resnet32x4")
    p.add_argument("--num-classes", type=positive_int, default=100)
    a = p.parse_args(argv)
    return convert_teacher_checkpoint(a.src, a.dst, a.teacher, a.num_classes)


if __name__ == "__main__":
    raise SystemExit(run_console(main, prog="python -m clkd.teachers"))
