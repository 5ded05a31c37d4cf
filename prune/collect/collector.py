"""Streaming collection of layer statistics with forward hooks.

One forward pass per batch: a pre-hook on block 0 captures its input (h_0) and a hook on each block
its output (h_{l+1}); the hook on the last block then stops the forward pass, since nothing after it
(final norm, LM head, loss) is needed. The hidden states of one batch are reduced to running sums and
dropped before the next batch, except the tokens CKA buffers until they fill a window of W tokens
(`prune.collect.minibatches`); memory is bounded by the batch and the window, not the number of tokens.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from prune.collect.batches import check_batch, rows_within_budget, to_device, valid_mask
from prune.collect.minibatches import MinibatchStream
from prune.collect.stats import CollectError, LayerStats, atomic_torch_save, read_state
from prune.errors import AnatomyError
from prune.finite import check_finite_states
from prune.forward import forward_accepts
from prune.metrics import METRICS, SUMS, Samples, sums_for
from prune.metrics.base import GROUP_SUMS, MIN_GROUP
from prune.sizes import parameter_count
from prune.vocab import CKA_MINIBATCH, CKA_WINDOW, TOKEN_MODES, TokenMode


class _StopForward(Exception):
    """Raised by the hook on the last block: the rest of the forward pass is not needed."""


class _HiddenStateCapture:
    """Hooks that record h_0 (input of block 0) and h_{l+1} (output of block l) for one forward pass."""

    def __init__(self, blocks: nn.ModuleList) -> None:
        self.num_blocks = len(blocks)
        self.states: list[Tensor | None] = [None] * (self.num_blocks + 1)
        self._handles = [blocks[0].register_forward_pre_hook(self._on_input, with_kwargs=True)]
        for index, block in enumerate(blocks):
            self._handles.append(block.register_forward_hook(self._make_output_hook(index)))

    def _store(self, position: int, value: Tensor) -> None:
        if self.states[position] is not None:
            raise AnatomyError(
                f"hidden state {position} was produced twice in one forward pass (blocks reused?); "
                "pass block_path naming a list of distinct blocks"
            )
        self.states[position] = value.detach()

    def _on_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if args and isinstance(args[0], Tensor):
            hidden = args[0]
        elif isinstance(kwargs.get("hidden_states"), Tensor):
            hidden = kwargs["hidden_states"]
        else:
            raise AnatomyError(
                "block 0 was called without a hidden-states tensor (first argument or hidden_states=); "
                "pass block_path naming the list of transformer blocks"
            )
        self._store(0, hidden)

    def _make_output_hook(self, index: int):
        last = index == self.num_blocks - 1

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            hidden = output if isinstance(output, Tensor) else output[0]
            self._store(index + 1, hidden)
            if last:
                raise _StopForward

        return hook

    def run(self, model: nn.Module, batch: Any, extra: dict[str, Any]) -> list[Tensor]:
        """Run `model` on `batch` and return the L+1 hidden states it produced."""
        self.states = [None] * (self.num_blocks + 1)
        try:
            if isinstance(batch, dict):
                model(**batch, **extra)
            else:
                model(batch, **extra)
        except _StopForward:
            pass
        missing = [i for i, s in enumerate(self.states) if s is None]
        if missing:
            raise AnatomyError(
                f"the forward pass did not produce hidden states {missing} (of {self.num_blocks + 1}); "
                "pass block_path naming the blocks the model actually runs"
            )
        states, self.states = self.states, [None] * (self.num_blocks + 1)
        return states  # type: ignore[return-value]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _input_device(model: nn.Module) -> torch.device:
    """Where inputs go: the input embeddings' device (first device of a dispatched model)."""
    getter = getattr(model, "get_input_embeddings", None)
    with contextlib.suppress(Exception):
        embeddings = getter() if getter is not None else None
        weight = getattr(embeddings, "weight", None)
        if weight is not None and weight.device.type != "meta":
            return weight.device
    for param in model.parameters():
        # Offloaded weights sit on "meta"; accelerate's hooks move CPU inputs where they are needed.
        return param.device if param.device.type != "meta" else torch.device("cpu")
    return torch.device("cpu")


def _fingerprint(model: nn.Module, num_blocks: int) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") if config is not None else ""
    params = parameter_count(model)
    return f"{type(model).__name__}|{name}|{params}|{num_blocks}"


def _validate(
    metrics: Sequence[str],
    token_mode: str,
    max_tokens: int | None,
    group_size: int,
    skip_tokens: int,
    cka_minibatch: int,
    cka_window: int,
) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = [metrics]
    names = tuple(dict.fromkeys(metrics))
    if not names:
        raise CollectError(f"no metrics requested; pass some of: {', '.join(METRICS.names())}")
    for name in names:
        if name not in METRICS:
            raise CollectError(f"unknown metric {name!r}; choose from: {', '.join(METRICS.names())}")
    if token_mode not in TOKEN_MODES:
        raise CollectError(f"unknown token_mode {token_mode!r}; choose from: {', '.join(TOKEN_MODES)}")
    if max_tokens is not None and max_tokens < 1:
        raise CollectError(
            f"max_tokens must be a positive number of tokens, got {max_tokens}; pass e.g. 100000"
        )
    if isinstance(skip_tokens, bool) or not isinstance(skip_tokens, int) or skip_tokens < 0:
        raise CollectError(
            f"skip_tokens must be a whole number of tokens >= 0, got {skip_tokens!r}; pass 0 (keep every "
            "token) or e.g. 1 (leave out each sequence's first token)"
        )
    if group_size < MIN_GROUP:
        raise CollectError(
            f"group_size must be at least {MIN_GROUP} sequences, got {group_size}; pass e.g. 64"
        )
    if cka_minibatch < MIN_GROUP:
        raise CollectError(
            f"cka_minibatch must be at least {MIN_GROUP} tokens, got {cka_minibatch}; pass e.g. {CKA_MINIBATCH}"
        )
    if cka_window < cka_minibatch:
        raise CollectError(
            f"cka_window ({cka_window} tokens) must hold at least one minibatch of cka_minibatch "
            f"({cka_minibatch}) tokens; pass e.g. cka_window={16 * cka_minibatch}"
        )
    return names


def collect_stats(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    anatomy: Any = None,
    metrics: Sequence[str] = ("bi", "angular"),
    accelerator: Any = None,
    max_tokens: int | None = None,
    token_mode: TokenMode = "tokens",
    skip_tokens: int = 0,
    state_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
    group_size: int = 64,
    cka_minibatch: int = CKA_MINIBATCH,
    cka_window: int = CKA_WINDOW,
    seed: int = 0,
    save_every: int = 50,
) -> LayerStats:
    """Run calibration batches through `model` and accumulate the running sums the metrics need.

    Batches run under ``torch.no_grad()`` with ``use_cache=False`` where the model accepts it. Padding
    is excluded through ``batch["attention_mask"]`` (absent: every token counts). Sums are float64; the
    per-batch work (cosines, Gram matrices) is float32 on the device of h_0.

    Data parallel: with an ``accelerate.Accelerator`` of N processes, give each process its own shard of
    the batches (e.g. ``batches[accelerator.process_index::accelerator.num_processes]``); the sums are
    summed over processes at the end, so every process returns the same totals. Block influence and
    angular distance equal a one-process run on all the batches however they are sharded. CKA
    minibatches are cut from each process's own stream of samples (`prune.collect.minibatches`): in
    "tokens" mode each window of W = `cka_window` valid tokens is shuffled by the same seeded
    permutation and cut into minibatches of m = `cka_minibatch` tokens; in "mean"/"last" mode they are
    G = `group_size` consecutive sequences. CKA sums therefore equal a one-process run exactly when
    every process's shard is a run of whole windows of the one-process stream (its valid tokens, or
    sequences, a multiple of W, or G, except on the process holding the stream's end), e.g. packed
    batches of W tokens (or G sequences) dealt round-robin; otherwise they are the same estimator on
    a differently cut sample, equal up to its noise. Batch sizes and resuming never change the sums.

    Args:
        model: A transformers model or any nn.Module; dict batches run as ``model(**batch)``, tensor
            batches as ``model(batch)``.
        batches: Iterable of dicts of tensors (``input_ids``, ``attention_mask``, ...) or tensors.
        anatomy: Where the blocks are (``prune.anatomy.Anatomy``); found with ``get_anatomy`` if None.
        metrics: Names from :data:`prune.metrics.METRICS`.
        accelerator: Optional ``accelerate.Accelerator`` for device, mixed precision and processes;
            None uses the model's own device (the first device of a ``device_map`` model).
        max_tokens: Token budget: exactly this many valid tokens are used (the batch that crosses it
            contributes only its first tokens, in reading order); with N processes each process takes
            its share, max_tokens // N (the first max_tokens % N processes one more).
        token_mode: "tokens" (every valid token is a sample; CKA minibatches are tokens drawn across
            sequences), "mean" or "last" (one pooled vector per sequence).
        skip_tokens: Leave the first `skip_tokens` valid tokens of every sequence out of all statistics
            (and of the budget). Many LLMs park massive activations on the first token (an attention
            sink: a few dimensions far larger than the rest, carried through many blocks); linear CKA
            weighs samples by their norm, so that token makes the blocks carrying it look alike. 1
            leaves it out. 0 keeps every token.
        state_path: Resumable collection: the partial sums and the number of batches consumed are
            saved there every `save_every` batches, on an error, and at the end; a rerun with the same
            path and the same batches skips the consumed batches and continues.
        progress: Show a progress bar (main process only).
        group_size: G, sequences per CKA minibatch in "mean"/"last" mode.
        cka_minibatch: m, tokens per CKA minibatch in "tokens" mode (the Gram matrices cost
            (L+1) m^2 floats; the last minibatch of the data counts when it has >= 4 tokens).
        cka_window: W, valid tokens shuffled together before they are cut into minibatches (rounded
            down to a multiple of m); the collector buffers up to W tokens of all L+1 hidden states
            in the model's dtype.
        seed: Seed of the permutation that cuts each window into minibatches.
        save_every: Batches between two saves of `state_path`.

    Returns:
        The reduced statistics; ``.scores()`` gives each metric's result.

    Example:
        >>> stats = collect_stats(model, batches, metrics=["bi", "angular", "cka"])  # doctest: +SKIP
        >>> stats.scores()["bi"]  # doctest: +SKIP
    """
    names = _validate(metrics, token_mode, max_tokens, group_size, skip_tokens, cka_minibatch, cka_window)
    if anatomy is None:
        from prune.anatomy import get_anatomy

        anatomy = get_anatomy(model)
    blocks = anatomy.blocks(model)
    num_blocks = len(blocks)
    if num_blocks < 1:
        raise AnatomyError("the block list is empty; pass block_path naming the list of transformer blocks")
    sum_names = sums_for(names)
    totals = {name: SUMS.get(name).zeros(num_blocks + 1) for name in sum_names}

    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    device = accelerator.device if accelerator is not None else _input_device(model)
    budget = None if max_tokens is None else max_tokens // world + (1 if rank < max_tokens % world else 0)
    tokens = token_mode == "tokens"
    needs_groups = any(name in totals for name in GROUP_SUMS)
    if tokens:
        stream = MinibatchStream(cka_minibatch, cka_window, seed)
    else:
        stream = MinibatchStream(group_size, group_size, None)
    fingerprint = {
        "model": _fingerprint(model, num_blocks),
        "num_blocks": num_blocks,
        "metrics": sorted(names),
        "token_mode": token_mode,
        "group_size": None if tokens else group_size,
        # Fixed by the fingerprint: a state file of the per-sequence minibatches (before these keys)
        # or of another cut must not be continued with this one.
        "cka_minibatch": stream.size if tokens and needs_groups else None,
        "cka_window": stream.window if tokens and needs_groups else None,
        "cka_seed": seed if tokens and needs_groups else None,
        "max_tokens": max_tokens,
        "skip_tokens": skip_tokens,
        "num_processes": world,
    }
    state_file = None
    if state_path is not None:
        state_file = f"{os.fspath(state_path)}.rank{rank}" if world > 1 else os.fspath(state_path)
    consumed = 0
    if state_file is not None and os.path.exists(state_file):
        consumed, stream.pending = _resume(state_file, fingerprint, totals)

    def save_state() -> None:
        if state_file is not None:
            atomic_torch_save(
                {
                    "format_version": 1,
                    "fingerprint": fingerprint,
                    "batches": consumed,
                    "sums": totals,
                    "buffer": None if stream.pending is None else stream.pending.cpu(),
                },
                state_file,
            )

    extra = {"use_cache": False} if forward_accepts(model, "use_cache") else {}
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    capture = _HiddenStateCapture(blocks)
    bar = _progress_bar(batches, progress and (accelerator is None or accelerator.is_main_process), consumed)
    consistent = True
    try:
        # no_grad, not inference_mode: the minibatch buffer made here outlives the call (state file,
        # later batches) and inference tensors refuse in-place updates outside inference mode.
        with torch.no_grad():
            for index, batch in enumerate(batches):
                if index < consumed:
                    continue
                remaining = None if budget is None else budget - int(totals["tokens"])
                if remaining is not None and remaining <= 0:
                    break
                check_batch(batch, index)
                if remaining is not None:
                    batch = rows_within_budget(batch, remaining, skip_tokens)
                batch = to_device(batch, device)
                with autocast():
                    states = capture.run(model, batch, extra)
                stats_device = states[0].device
                states = [h.to(stats_device) for h in states]
                mask = valid_mask(batch, states[0], remaining, skip_tokens)
                check_finite_states(states, mask, index)  # NaN sums would only surface as NaN scores
                samples = Samples(states, mask, token_mode)
                del states  # `samples` releases them once stacked
                consistent = False
                if needs_groups:
                    stream.add(samples.rows, lambda cut: _add_minibatches(totals, cut, token_mode))
                for name in sum_names:
                    SUMS.get(name).update(totals[name], samples)
                consumed, consistent = index + 1, True
                del samples
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(tokens=int(totals["tokens"]), refresh=False)
                if state_file is not None and consumed % save_every == 0:
                    save_state()
    except BaseException:
        if consistent:
            save_state()
        raise
    finally:
        capture.remove()
        if bar is not None:
            bar.close()
    save_state()
    result = {name: total.clone() for name, total in totals.items()}
    if needs_groups:
        # The last incomplete window still gives minibatches; the state file keeps it pending.
        stream.flush(lambda cut: _add_minibatches(result, cut, token_mode))
    if world > 1:
        result = {
            name: accelerator.reduce(t.to(accelerator.device), reduction="sum").cpu()
            for name, t in result.items()
        }
    info = {
        "model": fingerprint["model"],
        "num_processes": world,
        "batches": consumed,
        "max_tokens": max_tokens,
        "skip_tokens": skip_tokens,
        "group_size": group_size,
        "cka_minibatch": fingerprint["cka_minibatch"],
        "cka_window": fingerprint["cka_window"],
    }
    return LayerStats(num_blocks=num_blocks, metrics=names, sums=result, token_mode=token_mode, info=info)


def _add_minibatches(totals: dict[str, Tensor], minibatches: Any, token_mode: str) -> None:
    """Add CKA minibatches (one window's) to the sums they feed."""
    window = Samples([], torch.zeros(0, 0, dtype=torch.bool), token_mode, minibatches)
    for name in GROUP_SUMS:
        if name in totals:
            SUMS.get(name).update(totals[name], window)


# Fingerprint keys added after format_version 1: what a state file saved without them meant.
_FINGERPRINT_DEFAULTS = {"skip_tokens": 0}


def _resume(
    state_file: str, fingerprint: dict[str, Any], totals: dict[str, Tensor]
) -> tuple[int, Tensor | None]:
    state = read_state(state_file)
    saved = {**_FINGERPRINT_DEFAULTS, **state.get("fingerprint", {})}
    for key, value in fingerprint.items():
        if saved.get(key) != value:
            raise CollectError(
                f"state file {state_file} was saved with {key}={saved.get(key)!r}, this run has {value!r}; "
                "delete the state file to start over"
            )
    for name in totals:
        totals[name] = state["sums"][name].double()
    return int(state["batches"]), state.get("buffer")


def _progress_bar(batches: Iterable[Any], enabled: bool, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    return tqdm(total=total, initial=initial, desc="collecting layer statistics", unit="batch")
