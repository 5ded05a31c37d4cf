"""Linear CKA with the unbiased HSIC estimator, accumulated over minibatches, and MSRS.

HSIC_1(K, L) = <K~, L~> / (n (n - 3)) with K~ the U-centred Gram matrix (Song et al. 2012; Szekely &
Rizzo 2014): zero the diagonal, then K~_ab = K_ab - r_a/(n-2) - r_b/(n-2) + s/((n-1)(n-2)) off the
diagonal, with r the row sums and s the total. Minibatch CKA (Nguyen et al. 2021) sums HSIC_1 over
minibatches for every pair of hidden states and normalises at the end:
CKA_ij = acc_ij / sqrt(acc_ii acc_jj). Memory is O(S^2 + S n^2) per minibatch of n samples.

MSRS (RedTest, Lu et al. 2024) is a soft count of block-output pairs whose CKA exceeds eps.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from prune.metrics.base import MIN_GROUP, SUMS, Metric, RunningSum, Samples, check_count, register_metric
from prune.vocab import MSRS_BETA, MSRS_EPS


def u_centre(gram: Tensor) -> Tensor:
    """U-centre Gram matrices ([..., n, n], n >= 4) as in the unbiased HSIC estimator.

    Example:
        >>> k = torch.ones(5, 5)
        >>> u_centre(k).abs().max().item() < 1e-6  # a constant kernel carries no dependence
        True
    """
    n = gram.shape[-1]
    if n < MIN_GROUP:
        raise ValueError(f"U-centring needs at least {MIN_GROUP} samples, got {n}")
    eye = torch.eye(n, dtype=torch.bool, device=gram.device)
    k = gram.masked_fill(eye, 0.0)
    rows = k.sum(-1, keepdim=True)
    total = rows.sum(-2, keepdim=True)
    centred = k - rows / (n - 2) - rows.transpose(-1, -2) / (n - 2) + total / ((n - 1) * (n - 2))
    return centred.masked_fill_(eye, 0.0)


def hsic_pairs(features: Tensor) -> Tensor:
    """Unbiased HSIC of linear kernels for every pair of representations of the same n samples.

    Uses Song et al.'s closed form with K the Gram matrix with a zeroed diagonal, r = K 1, s = 1^T K 1:
    HSIC_1 = [tr(K_i K_j) + s_i s_j / ((n-1)(n-2)) - 2 r_i . r_j / (n-2)] / (n (n-3)),
    equal to <U-centred K_i, U-centred K_j> / (n (n-3)) without forming the U-centred matrices.

    Args:
        features: [S, n, d] (any float dtype): S representations of n >= 4 samples.

    Returns:
        float64 [S, S] on CPU with entry (i, j) = HSIC_1(X_i X_i^T, X_j X_j^T).

    Example:
        >>> x = torch.randn(2, 10, 3)
        >>> h = hsic_pairs(x)
        >>> h.shape, bool(h[0, 1] == h[1, 0])
        (torch.Size([2, 2]), True)
    """
    s, n, _ = features.shape
    if n < MIN_GROUP:
        raise ValueError(f"unbiased HSIC needs at least {MIN_GROUP} samples, got {n}")
    features = features.float()
    # Centring features leaves the U-centred Gram unchanged (it only adds a_i + a_j + c terms, which
    # U-centring removes) and keeps float32 accurate when hidden states share a large offset.
    # Written into a fresh contiguous tensor: the input may be a strided view, and bmm needs rows.
    x = torch.sub(
        features,
        features.mean(1, keepdim=True),
        out=torch.empty_like(features, memory_format=torch.contiguous_format),
    )
    grams = torch.bmm(x, x.transpose(1, 2))
    grams.diagonal(dim1=1, dim2=2).zero_()
    rows = grams.sum(-1).double()  # [S, n]
    totals = rows.sum(-1)  # [S]
    flat = grams.reshape(s, n * n)
    # The one O(S^2 n^2) product runs in float32 (as the Gram itself); the rest is float64.
    traces = (flat @ flat.T).double()
    hsic = traces + totals[:, None] * totals[None, :] / ((n - 1) * (n - 2)) - 2.0 * (rows @ rows.T) / (n - 2)
    return (hsic / (n * (n - 3))).cpu()


def _add_hsic(total: Tensor, samples: Samples) -> None:
    for group in samples.groups():
        total += hsic_pairs(group)


def _add_groups(total: Tensor, samples: Samples) -> None:
    total += samples.num_groups


SUMS.register(
    "hsic",
    RunningSum("hsic", lambda s: (s, s), _add_hsic, "sum over minibatches of unbiased HSIC, all pairs"),
)
SUMS.register(
    "hsic_groups",
    RunningSum("hsic_groups", lambda s: (), _add_groups, "minibatches behind the HSIC sum"),
)


def cka_matrix(sums: Mapping[str, Tensor]) -> Tensor:
    """[L+1, L+1] minibatch linear CKA between every pair of hidden states (diagonal 1).

    Example:
        >>> acc = torch.tensor([[4.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
        >>> cka_matrix({"hsic": acc, "hsic_groups": torch.tensor(1.0)})[0, 1].item()
        1.0
    """
    check_count(
        sums["hsic_groups"], "CKA minibatches (of at least 4 valid tokens, or 4 sequences when pooled)"
    )
    acc = sums["hsic"].double()
    diag = torch.diagonal(acc).clamp(min=torch.finfo(torch.float64).tiny)
    cka = acc / torch.sqrt(diag[:, None] * diag[None, :])
    cka = (cka + cka.T) / 2
    cka.fill_diagonal_(1.0)
    return cka


def cka_input_output(sums: Mapping[str, Tensor]) -> Tensor:
    """[L]: CKA between the input and the output of each block (RedTest's layer score)."""
    return torch.diagonal(cka_matrix(sums), offset=1).clone()


register_metric(
    Metric(
        "cka",
        ("hsic", "hsic_groups"),
        cka_matrix,
        "minibatch linear CKA (unbiased HSIC) between all hidden states, [L+1, L+1]",
    )
)
register_metric(
    Metric(
        "cka_io",
        ("hsic", "hsic_groups"),
        cka_input_output,
        "linear CKA between the input and the output of each block, [L]",
    )
)


def msrs(similarity: Tensor, beta: float = MSRS_BETA, eps: float = MSRS_EPS) -> tuple[float, float]:
    """Model Structural Redundancy Score: sum over i<j of (1 + tanh(beta (S_ij - eps))) / 2.

    Args:
        similarity: [L, L] CKA matrix of the block outputs (drop the embedding row and column of the
            [L+1, L+1] "cka" result: ``cka[1:, 1:]``).
        beta: Sharpness of the soft threshold.
        eps: Similarity above which a pair counts as redundant.

    Returns:
        (raw score, score divided by the number of pairs L (L - 1) / 2).

    Example:
        >>> raw, norm = msrs(torch.eye(3))
        >>> round(raw, 6), round(norm, 6)
        (0.0, 0.0)
    """
    from prune.errors import DataError

    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1] or similarity.shape[0] < 2:
        raise DataError(
            f"MSRS needs a square L x L similarity matrix with L >= 2, got shape {tuple(similarity.shape)}; "
            "pass cka[1:, 1:]"
        )
    s = similarity.double()
    n = s.shape[0]
    i, j = torch.triu_indices(n, n, offset=1)
    raw = float(((1.0 + torch.tanh(beta * (s[i, j] - eps))) / 2).sum())
    return raw, raw / (n * (n - 1) / 2)


__all__ = ["MIN_GROUP", "cka_input_output", "cka_matrix", "hsic_pairs", "msrs", "u_centre"]
