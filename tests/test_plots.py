"""Figures: valid PNG files that show what they should, and clear errors for bad input."""

from __future__ import annotations

import sys

import pytest
import torch

from prune.errors import PruneError
from prune.plots import plot_before_after, plot_block_scores, plot_cka_heatmap

image = pytest.importorskip("matplotlib.image")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels.dtype.kind == "f" and pixels.min() >= 0.0 and pixels.max() <= 1.0
    return pixels


def _red_pixels(pixels) -> int:
    rgb = pixels[..., :3]
    return int(((rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)).sum())


def _cka(size: int) -> torch.Tensor:
    # Similarity that decays with layer distance, like a real model's.
    index = torch.arange(size, dtype=torch.float64)
    return torch.exp(-(index[:, None] - index[None, :]).abs() / 4)


def _scores(num_blocks: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "bi": torch.rand(num_blocks, dtype=torch.float64) * 0.3,
        "cka_io": 1 - torch.rand(num_blocks, dtype=torch.float64) * 0.2,
        "angular": torch.rand(num_blocks + 1, num_blocks + 1, dtype=torch.float64) * 0.5,
    }


@pytest.mark.parametrize("size", [7, 81])
def test_cka_heatmap_is_a_png_image(tmp_path, size):
    path = plot_cka_heatmap(_cka(size), tmp_path / "sub" / "cka.png", title="decaying CKA")
    assert path == tmp_path / "sub" / "cka.png"
    pixels = _read_png(path)
    height, width = pixels.shape[:2]
    assert 300 < height < 1200 and 300 < width < 1400
    assert pixels[..., :3].std() > 0.1  # not a blank canvas


def test_cka_heatmap_accepts_labels_and_lists(tmp_path):
    labels = ["emb", *map(str, range(4))]
    path = plot_cka_heatmap(_cka(5).tolist(), tmp_path / "cka.png", labels=labels)
    _read_png(path)
    with pytest.raises(PruneError, match="one label per layer"):
        plot_cka_heatmap(_cka(5), tmp_path / "bad.png", labels=labels[:3])


@pytest.mark.parametrize("bad", [torch.zeros(3, 4), torch.zeros(0, 0), [[1.0, 0.5], [0.5]]])
def test_cka_heatmap_rejects_non_square(tmp_path, bad):
    with pytest.raises(PruneError, match="square matrix"):
        plot_cka_heatmap(bad, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_block_scores_marks_removed_blocks_in_red(tmp_path):
    scores = _scores(12)
    plain = _read_png(plot_block_scores(scores, tmp_path / "plain.png", title="scores"))
    marked = _read_png(plot_block_scores(scores, tmp_path / "marked.png", removed=[4, 5, 6]))
    assert plain[..., :3].std() > 0.05
    # The red crosses of the removed blocks add strongly red pixels that the plain figure lacks.
    assert _red_pixels(marked) > _red_pixels(plain) + 20


def test_block_scores_with_a_subset_of_metrics(tmp_path):
    _read_png(plot_block_scores({"bi": [0.1, 0.05, 0.2]}, tmp_path / "bi.png"))


def test_block_scores_rejects_bad_input(tmp_path):
    with pytest.raises(PruneError, match="no per-block score"):
        plot_block_scores({"cka": _cka(4)}, tmp_path / "x.png")
    with pytest.raises(PruneError, match="different lengths"):
        plot_block_scores({"bi": torch.zeros(4), "cka_io": torch.zeros(5)}, tmp_path / "x.png")
    with pytest.raises(PruneError, match="outside 0..3"):
        plot_block_scores({"bi": torch.zeros(4)}, tmp_path / "x.png", removed=[4])


def test_before_after_bars(tmp_path):
    before = {"perplexity": 18.2, "accuracy": 0.91, "params": 134_515_008, "note": "text", "flag": True}
    after = {"perplexity": 21.2, "accuracy": 0.88, "params": 120_000_000, "loss": 3.0}
    pixels = _read_png(plot_before_after(before, after, tmp_path / "ba.png", title="SmolLM2"))
    assert pixels[..., :3].std() > 0.05


def test_before_after_rejects_nothing_to_compare(tmp_path):
    with pytest.raises(PruneError, match="no numeric metric"):
        plot_before_after({"a": 1.0}, {"b": 2.0}, tmp_path / "x.png")
    with pytest.raises(PruneError, match="no numeric metric"):
        plot_before_after({"a": float("nan")}, {"a": 1.0}, tmp_path / "x.png")


def test_missing_matplotlib_names_the_fix(tmp_path, monkeypatch):
    # A None entry in sys.modules makes `import matplotlib...` raise ImportError, as if not installed.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PruneError, match=r"pip install matplotlib"):
        plot_cka_heatmap(_cka(3), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
