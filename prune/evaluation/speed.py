"""Size and speed of any model: parameters, bytes on disk, latency, throughput and peak memory.

Methods (also reported in the protocol of a comparison):
- parameters: number of unique parameter elements (tied weights counted once).
- size: bytes of the unique tensors of the state dict, i.e. what a safetensors checkpoint stores, not
  counting its small JSON header; tied weights counted once.
- latency: median wall time of one forward pass (no gradient, no KV cache) on a batch of
  ``batch_size`` x ``seq_len`` tokens, after ``warmup`` untimed passes, over ``repeats`` timed passes or
  more; CUDA is synchronised around each timed pass. Throughput = batch_size * seq_len / median latency.
  A causal LM's evaluation already runs such passes (the perplexity windows, both models interleaved),
  so their times are used (`latency_from_passes`) instead of running the same passes again; otherwise a
  fixed batch of random ids is timed (`speed_metrics`).
- peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during one forward (weights included) after
  resetting the peak; on CPU, the largest rise of the process RSS above its value before the forward,
  sampled every millisecond by a thread, after returning freed heap pages to the OS (glibc
  ``malloc_trim``): activations and temporaries only, weights excluded.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import sys
import threading
import time
from typing import Any

import torch

from prune.errors import DataError
from prune.forward import forward_accepts
from prune.sizes import parameter_count, size_metrics, state_dict_bytes  # noqa: F401 (kept importable here)


def _dummy_inputs(model: torch.nn.Module, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 1000)
    generator = torch.Generator().manual_seed(0)
    # Ids from the upper half of the vocabulary avoid special tokens (pad/cls/eos sit at the low ids).
    ids = torch.randint(vocab // 2, vocab, (batch_size, seq_len), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class _RssSampler:
    """Samples the process RSS every millisecond in a thread; `peak` is the largest value seen."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


@torch.no_grad()
def speed_metrics(
    model: torch.nn.Module,
    *,
    batch_size: int = 8,
    seq_len: int = 256,
    warmup: int = 2,
    repeats: int = 5,
    inputs: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Latency (ms per batch, median), throughput (tokens/s) and peak memory (MB) of a forward pass.

    Args:
        model: Any model taking ``input_ids`` and ``attention_mask``.
        batch_size: Rows per batch (ignored when `inputs` is given).
        seq_len: Tokens per row (ignored when `inputs` is given).
        warmup: Untimed passes first (allocator, kernels, caches).
        repeats: Timed passes; the median is reported.
        inputs: A fixed batch to time instead of random ids from the upper half of the vocabulary.

    Example:
        >>> speed_metrics(model, batch_size=4, seq_len=128)["latency_ms"] > 0  # doctest: +SKIP
        True
    """
    if batch_size < 1 or seq_len < 1 or warmup < 0 or repeats < 1:
        raise DataError("speed needs batch_size >= 1, seq_len >= 1, warmup >= 0 and repeats >= 1; fix them")
    device = next(model.parameters()).device
    batch = inputs if inputs is not None else _dummy_inputs(model, batch_size, seq_len)
    batch = {k: v.to(device) for k, v in batch.items()}
    tokens = int(batch["input_ids"].numel())
    cuda = device.type == "cuda"

    def forward() -> None:
        model(**batch, use_cache=False) if forward_accepts(model, "use_cache") else model(**batch)

    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            forward()
        times = []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            forward()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        peak_mb = _peak_memory_mb(forward, device)
    finally:
        model.train(was_training)
    latency = statistics.median(times)
    return {"latency_ms": latency * 1e3, "tokens_per_s": tokens / latency, "peak_memory_mb": peak_mb}


def latency_from_passes(
    passes: list[tuple[tuple[int, int], float]], *, batch_size: int, seq_len: int, warmup: int, repeats: int
) -> dict[str, float] | None:
    """Latency and throughput from forward passes already timed elsewhere, or None if there are too few.

    Only passes of exactly ``batch_size`` x ``seq_len`` tokens count; the first `warmup` of them are left
    out; at least `repeats` must remain (then all of them are used, median reported).

    Example:
        >>> latency_from_passes([((2, 4), 9.0), ((2, 4), 1.0), ((2, 4), 2.0)], batch_size=2, seq_len=4,
        ...                     warmup=1, repeats=2)["latency_ms"]
        1500.0
    """
    times = [seconds for shape, seconds in passes if shape == (batch_size, seq_len)][warmup:]
    if len(times) < max(1, repeats):
        return None
    latency = statistics.median(times)
    return {
        "latency_ms": latency * 1e3,
        "tokens_per_s": batch_size * seq_len / latency,
        "timed_passes": len(times),
    }


@torch.no_grad()
def peak_memory_mb(model: torch.nn.Module, *, batch_size: int, seq_len: int) -> float:
    """Peak memory of one forward pass on ``batch_size`` x ``seq_len`` random ids (see the module docstring).

    Example:
        >>> peak_memory_mb(model, batch_size=8, seq_len=256) >= 0  # doctest: +SKIP
        True
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in _dummy_inputs(model, batch_size, seq_len).items()}

    def forward() -> None:
        model(**batch, use_cache=False) if forward_accepts(model, "use_cache") else model(**batch)

    was_training = model.training
    model.eval()
    try:
        return _peak_memory_mb(forward, device)
    finally:
        model.train(was_training)


def _peak_memory_mb(forward: Any, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        forward()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    gc.collect()
    _release_free_heap()
    with _RssSampler() as sampler:
        before = sampler.peak
        forward()
    return max(0, sampler.peak - before) / 2**20


def _release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so the RSS rise of the next forward is its own.

    Without this, memory freed by the warm-up passes stays in the process and is silently reused, and the
    measured rise would be near zero.
    """
    if not sys.platform.startswith("linux"):
        return
    # Not glibc (musl, ...): nothing to trim, and the measurement is merely less precise.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
