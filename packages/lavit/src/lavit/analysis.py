"""Attention saturation analysis: how alike are consecutive layers' attention maps?

Works for LaViT and for timm ViTs whose attention modules follow timm's convention (a
``fused_attn`` switch and an ``attn_drop`` dropout applied to the softmax probabilities:
``vit``/``deit``, ``pvt_v2``). :func:`capture_attention` temporarily switches those modules to
the explicit path and hooks ``attn_drop``; nothing global is touched and everything is
restored on exit.

The plots use matplotlib's object API (:class:`matplotlib.figure.Figure`): this module never
picks a backend, the caller does.

CLI (writes ``similarity.json``, ``similarity.png`` and ``attention_<model>.png``; from Python,
:func:`run_analysis` with an :class:`AnalysisConfig`)::

    python -m lavit.analysis --models lavit_small deit_small_patch16_224 pvt_v2_b2 \
        --checkpoint lavit_small=runs/s/model.pth --out runs/analysis
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import clean_state_dict

from lab_common import load_checkpoint
from lab_common.cli import check_model_name, positive_int, run_console

from .lavit import LessAttention
from .train import MODELS_HINT

__all__ = [
    "AnalysisConfig",
    "build_parser",
    "capture_attention",
    "cli",
    "consecutive_similarity",
    "main",
    "plot_attention_maps",
    "run_analysis",
]


@dataclass(frozen=True)
class AnalysisConfig:
    """What :func:`run_analysis` (``lavit-analysis``) compares and where it writes."""

    #: timm model names, analysed in this order.
    models: tuple[str, ...] = ("lavit_small", "deit_small_patch16_224", "pvt_v2_b2")
    #: model name -> checkpoint (models without one keep their random init); one in a
    #: ``lavit-train`` run folder is built with the run's ``config.json`` settings.
    checkpoints: Mapping[str, str] = field(default_factory=dict)
    #: image file (``None``: a smooth random image, deterministic, no data needed).
    image: str | None = None
    img_size: int = 224
    #: output folder: ``similarity.json``, ``similarity.png``, ``attention_<model>.png``.
    out: str = "runs/analysis"

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models is empty; name at least one timm model (--models)")
        if self.img_size < 1:
            raise ValueError(f"img_size must be >= 1, got {self.img_size}")
        extra = sorted(set(self.checkpoints) - set(self.models))
        if extra:
            raise ValueError(
                f"checkpoints given for {extra}, which are not in models {list(self.models)}; "
                "add them to --models or drop their --checkpoint"
            )


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "attn_drop", None), nn.Dropout)
        and (hasattr(m, "fused_attn") or isinstance(m, LessAttention))
    ]


@torch.no_grad()
def capture_attention(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Run ``model(x)`` in eval mode; return each attention layer's ``(B, H, N_q, N_k)`` probs.

    Layers are listed in execution order as ``(module name, probabilities)``.
    """
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no attention modules with an attn_drop dropout; "
            "capture_attention supports LaViT and timm ViT-style attention (vit, deit, pvt_v2)"
        )
    captured: list[tuple[str, torch.Tensor]] = []
    handles, fused = [], {}
    was_training = model.training
    model.eval()
    try:
        for name, m in modules:
            if hasattr(m, "fused_attn"):
                fused[name] = m.fused_attn
                m.fused_attn = False

            def hook(_mod, _inp, out, name=name):
                captured.append((name, out.detach().float()))

            handles.append(m.attn_drop.register_forward_hook(hook))
        model(x)
    finally:
        for h in handles:
            h.remove()
        for name, m in modules:
            if name in fused:
                m.fused_attn = fused[name]
        model.train(was_training)
    return captured


def consecutive_similarity(maps: list[tuple[str, torch.Tensor]]) -> list[dict]:
    """Cosine similarity of each pair of consecutive same-shape attention maps.

    Per pair: the cosine of the flattened ``(N_q, N_k)`` maps of each sample and head, averaged
    over samples and heads. Pairs across a change of shape (a new stage) are skipped.
    """
    out = []
    for i in range(len(maps) - 1):
        (name_a, a), (name_b, b) = maps[i], maps[i + 1]
        if a.shape != b.shape:
            continue
        cos = F.cosine_similarity(a.flatten(2), b.flatten(2), dim=-1)
        out.append(dict(layer=i, layer_a=name_a, layer_b=name_b, cosine=cos.mean().item()))
    return out


def plot_attention_maps(
    maps: list[tuple[str, torch.Tensor]], path: str | Path, title: str = ""
) -> Path:
    """Save one panel per layer: the head-averaged attention of the first sample."""
    from matplotlib.figure import Figure

    cols = min(6, len(maps))
    rows = math.ceil(len(maps) / cols)
    fig = Figure(figsize=(2.6 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    # the grid has up to cols - 1 more panels than maps; the spare ones are switched off below
    for ax, (name, a) in zip(axes.flat, maps, strict=False):
        ax.imshow(a[0].mean(0).cpu().numpy(), aspect="auto", cmap="viridis")
        ax.set_title(name.replace(".attn", ""), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(maps) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _plot_similarity(results: dict[str, list[dict]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for name, rows in results.items():
        ax.plot([r["layer"] for r in rows], [r["cosine"] for r in rows], marker="o", label=name)
    ax.set_xlabel("layer l (pair l, l+1)")
    ax.set_ylabel("cosine similarity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _load_image(path: str | None, size: int) -> torch.Tensor:
    if path is None:  # a smooth random image: deterministic, no data needed
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, size // 8, size // 8, generator=g)
        return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    from PIL import Image
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    tf = create_transform(size, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, crop_pct=1.0)
    if not Path(path).is_file():
        raise FileNotFoundError(f"--image {path}: no such file")
    try:
        with Image.open(path) as img:
            return tf(img.convert("RGB"))[None]
    except OSError as err:  # PIL's UnidentifiedImageError, a truncated file
        raise ValueError(f"--image {path} is not a readable image ({err})") from err


def _run_settings(checkpoint: Path, name: str, img_size: int) -> dict:
    """``timm.create_model`` keywords of the ``lavit-train`` run folder holding ``checkpoint``
    (its ``config.json``); ``{}`` outside a run folder."""
    path = checkpoint.parent / "config.json"
    run = json.loads(path.read_text()) if path.is_file() else None
    if not isinstance(run, dict) or not {"model", "model_kwargs", "img_size"} <= set(run):
        return {}
    if run["model"] != name:
        raise ValueError(f"{checkpoint} is a {run['model']} (see {path}), not a {name}")
    if not name.startswith("pvt_v2") and run["img_size"] != img_size:
        raise ValueError(
            f"{checkpoint} was trained at img_size {run['img_size']} (see {path}); "
            f"pass --img-size {run['img_size']}"
        )
    return dict(run["model_kwargs"])


def _create_model(name: str, img_size: int, checkpoint: str | None) -> nn.Module:
    """``name`` at ``img_size``, with ``checkpoint``'s weights and (in a ``lavit-train`` run
    folder) its run's settings; the number of classes is read from the checkpoint's head."""
    # pvt_v2 is size-agnostic; ViTs and LaViT are built for one input size
    kwargs = {} if name.startswith("pvt_v2") else {"img_size": img_size}
    if checkpoint is None:
        return timm.create_model(name, **kwargs)
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint {name}={checkpoint}: no such file")
    state = load_checkpoint(checkpoint)
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    state = clean_state_dict(state)
    model = timm.create_model(name, **kwargs, **_run_settings(Path(checkpoint), name, img_size))
    head = next(n for n, m in model.named_modules() if m is model.get_classifier())
    if f"{head}.weight" in state:
        model.reset_classifier(state[f"{head}.weight"].shape[0])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(f"{checkpoint} does not fit {name}: {first}") from err
    return model


def run_analysis(cfg: AnalysisConfig) -> dict[str, list[dict]]:
    """Compare the models' consecutive attention maps; write JSON and PNGs to ``cfg.out``.

    Returns model name -> :func:`consecutive_similarity` rows.
    """
    for name in cfg.models:
        check_model_name(name, timm.is_model, "--models", MODELS_HINT)
    x = _load_image(cfg.image, cfg.img_size)
    out = Path(cfg.out)
    results = {}
    for name in cfg.models:
        model = _create_model(name, cfg.img_size, cfg.checkpoints.get(name))
        maps = capture_attention(model, x)
        results[name] = consecutive_similarity(maps)
        plot_attention_maps(maps, out / f"attention_{name}.png", title=name)
        mean = sum(r["cosine"] for r in results[name]) / max(len(results[name]), 1)
        print(f"{name}: {len(maps)} attention layers, mean consecutive cosine {mean:.3f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "similarity.json").write_text(json.dumps(results, indent=2))
    _plot_similarity(results, out / "similarity.png")
    return results


def _checkpoint_entry(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected name=path.pth, got {text!r}")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    """The ``lavit-analysis`` parser; :func:`main` turns it into an :class:`AnalysisConfig`."""
    d = AnalysisConfig()
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="lavit-analysis", description=__doc__.splitlines()[0]
    )
    p.add_argument("--models", nargs="+", default=list(d.models), help="timm model names")
    p.add_argument(
        "--checkpoint",
        nargs="*",
        type=_checkpoint_entry,
        default=[],
        help="name=path.pth (timm-loadable), one per model to load",
    )
    p.add_argument("--image", default=d.image, help="image file (default: a smooth random image)")
    p.add_argument("--img-size", type=positive_int, default=d.img_size)
    p.add_argument("--out", default=d.out, help="output folder")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """``lavit-analysis`` without the exit status; returns :func:`run_analysis`'s result."""
    args = build_parser().parse_args(argv)
    cfg = AnalysisConfig(
        models=tuple(args.models),
        checkpoints=dict(args.checkpoint),
        image=args.image,
        img_size=args.img_size,
        out=args.out,
    )
    return run_analysis(cfg)


def cli() -> int:
    """Console script ``lavit-analysis``: 0 on success, 2 with one line on a user error."""
    return run_console(main, prog="lavit-analysis")


if __name__ == "__main__":
    raise SystemExit(cli())
