"""t-SNE plot of (student) features; needs the optional ``tsne`` extra (scikit-learn)."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["plot_tsne"]


def plot_tsne(
    features: torch.Tensor,
    labels: torch.Tensor,
    path: str | Path,
    *,
    seed: int = 0,
    title: str = "t-SNE of student features",
) -> Path:
    """Embed ``features (N, D)`` in 2-D with scikit-learn's TSNE and save a scatter PNG.

    Points are coloured by ``labels (N,)``. Returns the PNG path.
    """
    try:
        from sklearn.manifold import TSNE
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plot_tsne needs scikit-learn: pip install 'trg-kd[tsne]'") from err
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays untouched

    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"expected features (N, D) and labels (N,), got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    n = features.shape[0]
    if n < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {n}")
    emb = TSNE(
        n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed
    ).fit_transform(features.detach().double().cpu().numpy())
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    scatter = ax.scatter(emb[:, 0], emb[:, 1], c=labels.cpu().numpy(), cmap="tab10", s=6)
    ax.legend(*scatter.legend_elements(), fontsize=6, loc="best", title="class")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
