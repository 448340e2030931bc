"""Diagonality-preserving (DP) loss of LaViT.

The paper's recovered text names a diagonality-preserving loss that keeps the transformed
attention well-formed (close to symmetric, each token's attention to itself dominant); its
exact formula is not recovered. :func:`dp_loss` scores one attention map ``A`` of ``N``
tokens with a symmetry term and a diagonal-dominance term, in two variants:

* ``variant="intended"`` (default): on row-stochastic (softmax-normalised) attention ``P``,
  ``sym = sum_ij |P_ij - P_ji| / (2N)`` plus ``diag = mean_i (1 - P_ii)``
  (``= mean_i (sum_{j!=i} P_ij - (N-1) P_ii) / N`` shifted to be non-negative). Both terms lie
  in ``[0, 1]``; the loss is ``0`` exactly for the identity map and small for symmetric,
  diagonal-dominant maps. Mean-reduced over all leading (batch, head) dimensions.
* ``variant="literal"``: ``sum_ij |A_ij - A_ji| + sum_i ((N - 1) A_ii - sum_{j != i} A_ij)`` on
  whatever is passed (the model passes the pre-softmax scores), summed over tokens and averaged
  over the leading dimensions: an earlier reading of the loss, whose diagonal term lowers the
  diagonal when minimised and which is unbounded below on scores.
"""

import torch

__all__ = ["DP_LOSS_VARIANTS", "dp_loss"]

DP_LOSS_VARIANTS = ("intended", "literal")


def dp_loss(
    attn: torch.Tensor, variant: str = "intended", valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Diagonality-preserving loss of square attention maps.

    Args:
        attn: ``(..., N, N)`` attention. Row-stochastic probabilities for ``"intended"``,
            raw scores for ``"literal"``.
        variant: ``"intended"`` (bounded, rewards diagonal dominance) or ``"literal"``
            (the earlier reading, see the module docstring).
        valid: optional ``(..., N)`` boolean mask of real tokens, broadcastable against
            ``attn.shape[:-1]`` (padded tokens of an attention window are ``False``). Each map
            is then scored on its ``valid x valid`` sub-matrix, with ``N`` its number of real
            tokens.

    Returns:
        Scalar loss, averaged over the leading dimensions.
    """
    if variant not in DP_LOSS_VARIANTS:
        raise ValueError(f"dp_loss variant must be one of {DP_LOSS_VARIANTS}, got {variant!r}")
    if attn.dim() < 2 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(
            f"dp_loss needs square attention maps (..., N, N), got shape {tuple(attn.shape)}"
        )
    if valid is None:
        n = attn.shape[-1]
        row = None
    else:
        if valid.shape[-1] != attn.shape[-1]:
            raise ValueError(
                f"valid mask of shape {tuple(valid.shape)} does not match maps of shape "
                f"{tuple(attn.shape)} (its last dimension must be N={attn.shape[-1]})"
            )
        row = valid.to(attn.dtype)
        attn = attn * (row[..., :, None] * row[..., None, :])
        n = row.sum(dim=-1)
    asym = (attn - attn.transpose(-1, -2)).abs().sum(dim=(-2, -1))
    diag = attn.diagonal(dim1=-2, dim2=-1)
    if variant == "intended":
        miss = 1.0 - diag if row is None else (1.0 - diag) * row
        loss = asym / (2 * n) + miss.sum(dim=-1) / n
    else:
        off_diag = attn.sum(dim=-1) - diag
        per_token = (n if row is None else n[..., None]) - 1
        term = per_token * diag - off_diag
        loss = asym + (term if row is None else term * row).sum(dim=-1)
    return loss.mean()
