"""One process of tests/test_distributed.py, started by torch.distributed.run (2 processes, gloo on CPU).

Each process collects statistics on its own shard of the same batches and saves what it got back
(the totals reduced over processes) to OUT_DIR/rank<r>_<mode>.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist
from accelerate import Accelerator
from test_distributed import cases, shard_for
from test_metrics import ALL, tiny_llama

from prune.collect import collect_stats


def main(out_dir: str) -> None:
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == 2, f"expected 2 processes, got {world}"
    model = tiny_llama()
    for case, mode, batches, options in cases():
        shard = shard_for(batches, rank, world, mode)
        stats = collect_stats(
            model, shard, metrics=ALL, accelerator=accelerator, token_mode=mode, progress=False, **options
        )
        stats.save(Path(out_dir) / f"rank{rank}_{case}.pt")
    accelerator.wait_for_everyone()
    # Tear gloo down before the interpreter does: left to the exit handlers, a process sometimes aborts
    # ("terminate called without an active exception") after its results are written, failing the run.
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
