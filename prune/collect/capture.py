"""Running sums over the activations of any module inside the blocks: Gram and cross matrices for repair
and width squeezing.

The layer statistics (`prune.collect.collect_stats`) read the hidden states between blocks. Fitting a map
needs more: the output of a block's MLP, the input of its down projection, the hidden state a few blocks
later. A *capture site* names such a tensor (a block, a module inside it, its input or its output); a
*site sum* names the float64 running sum to build from one or more sites' valid tokens (``X^T X``,
``X^T Y``, column sums, ...). `collect_site_sums` runs the calibration batches once, hooks only the
sites asked for, stops the forward pass after the deepest block any site needs, and keeps nothing but
the sums between batches: memory is the size of the sums (O(d^2) per Gram), whatever the number of
tokens. Within a batch, each sum is added as soon as its sites are captured, during the forward pass,
and a site is freed after its last sum, so only the activations a sum still waits for are held.

Products are computed per batch in float32 on the activations' device (the one O(n d^2) step) and added
to float64 totals on the CPU; padding and skipped tokens are excluded with the same mask and token
budget as the layer statistics, and processes are reduced by summation, so a data-parallel or resumed
run gives the totals of one uninterrupted process (to float tolerance).

Example:
    >>> sites = {"mlp": CaptureSite(3, "mlp", "output"), "h": CaptureSite(3)}
    >>> sums = [gram("mlp_gram", "mlp"), cross("mlp_h", "mlp", "h")]
    >>> stats = collect_site_sums(model, batches, sites, sums)  # doctest: +SKIP
    >>> stats.sums["mlp_gram"].shape  # doctest: +SKIP
    torch.Size([576, 576])
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prune.anatomy.spec import resolve_attr
from prune.collect.batch_sums import _BatchSums, _token_shape, site_rows
from prune.collect.batches import budgeted_batches, process_share, state_file_for, valid_mask
from prune.collect.collector import _input_device
from prune.collect.stats import CollectError, atomic_torch_save, read_state
from prune.errors import AnatomyError, DataError
from prune.forward import forward_accepts
from prune.sizes import parameter_count


@dataclass(frozen=True)
class CaptureSite:
    """One tensor to capture in each forward pass.

    Attributes:
        block: Index of the block in the anatomy's block list.
        module: Dotted path of a module inside the block ("" = the block itself).
        io: "input" (first positional argument or ``hidden_states=``) or "output" (the tensor, or the
            first element of a tuple output).
    """

    block: int
    module: str = ""
    io: Literal["input", "output"] = "output"

    def describe(self) -> str:
        where = f"block {self.block}" + (f" {self.module}" if self.module else "")
        return f"{self.io} of {where}"


@dataclass(frozen=True)
class SiteSum:
    """A float64 running sum over the valid tokens of some sites.

    Attributes:
        name: Key of the total in the result.
        sites: Names of the sites it reads (keys of the `sites` mapping).
        update: ``f(*rows) -> Tensor``: the batch's increment from the sites' rows, each float32
            ``[n, d_i]`` (the same n valid tokens in the same order); any shape, added in float64.
    """

    name: str
    sites: tuple[str, ...]
    update: Callable[..., Tensor]


def gram(name: str, site: str) -> SiteSum:
    """``X^T X`` [d, d] of a site's activations X [n, d]."""
    return SiteSum(name, (site,), lambda x: x.T @ x)


def cross(name: str, left: str, right: str) -> SiteSum:
    """``X^T Y`` [d_x, d_y] of two sites' activations over the same tokens."""
    return SiteSum(name, (left, right), lambda x, y: x.T @ y)


def column_sum(name: str, site: str) -> SiteSum:
    """Per-feature sum [d] of a site's activations."""
    return SiteSum(name, (site,), lambda x: x.sum(0))


def column_square_sum(name: str, site: str) -> SiteSum:
    """Per-feature sum of squares [d] of a site's activations."""
    return SiteSum(name, (site,), lambda x: (x * x).sum(0))


def difference_gram(name: str, left: str, right: str) -> SiteSum:
    """``(X - Y)^T (X - Y)`` [d, d]: the residual energy between two sites of the same width."""

    def update(x: Tensor, y: Tensor) -> Tensor:
        diff = x - y
        return diff.T @ diff

    return SiteSum(name, (left, right), update)


@dataclass
class SiteStats:
    """Totals of a capture run.

    Attributes:
        sums: float64 CPU totals by `SiteSum` name, reduced over processes.
        num_tokens: Valid tokens the sums were taken over (all processes).
        info: JSON-able facts about the run (batches, budget, sites).
    """

    sums: dict[str, Tensor]
    num_tokens: int
    info: dict[str, Any] = field(default_factory=dict)


class _StopForward(Exception):
    """Raised after the deepest block any site needs: the rest of the forward pass is not needed."""


class _SiteHooks:
    def __init__(self, blocks: nn.ModuleList, sites: Mapping[str, CaptureSite]) -> None:
        self.captured: dict[str, Tensor] = {}
        self.seen: set[str] = set()
        # called with a site's name as soon as it is captured (the sums consume it during the forward pass)
        self.on_capture: Callable[[str], None] | None = None
        self._handles = []
        for name, site in sites.items():
            if not 0 <= site.block < len(blocks):
                raise CollectError(
                    f"capture site {name!r} names block {site.block}; the model has blocks 0-{len(blocks) - 1}"
                )
            try:
                module = resolve_attr(blocks[site.block], site.module)
            except (AttributeError, IndexError) as exc:
                raise AnatomyError(
                    f"capture site {name!r}: block {site.block} has no module {site.module!r}"
                ) from exc
            if site.io == "input":
                handle = module.register_forward_pre_hook(self._input_hook(name), with_kwargs=True)
            else:
                handle = module.register_forward_hook(self._output_hook(name))
            self._handles.append(handle)
        deepest = max(site.block for site in sites.values())
        self._handles.append(blocks[deepest].register_forward_hook(self._stop))

    def _keep(self, name: str, value: Any) -> None:
        if not isinstance(value, Tensor):
            raise AnatomyError(f"capture site {name!r} produced a {type(value).__name__}, not a tensor")
        if name in self.seen:
            raise AnatomyError(
                f"capture site {name!r} ran twice in one forward pass (a module reused?); name another module"
            )
        self.seen.add(name)
        # A copy: the model may add into the tensor it returned (Falcon's MLP output gets the attention
        # output added in place), and a sum may wait for another site.
        self.captured[name] = value.detach().clone()
        if self.on_capture is not None:
            self.on_capture(name)

    def reset(self) -> None:
        """Forget the last forward pass's captures."""
        self.captured, self.seen = {}, set()

    def _input_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            value = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))
            self._keep(name, value)

        return hook

    def _output_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self._keep(name, output if isinstance(output, Tensor) else output[0])

        return hook

    @staticmethod
    def _stop(module: nn.Module, args: tuple, output: Any) -> None:
        raise _StopForward

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def collect_site_sums(
    model: nn.Module,
    batches: Iterable[Any],
    sites: Mapping[str, CaptureSite],
    sums: Sequence[SiteSum],
    *,
    anatomy: Any = None,
    accelerator: Any = None,
    max_tokens: int | None = None,
    skip_tokens: int = 0,
    state_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
    desc: str = "collecting activation sums",
    save_every: int = 50,
) -> SiteStats:
    """Run calibration batches through `model` and accumulate `sums` over the captured `sites`.

    Args:
        model: A transformers model or an nn.Module with an anatomy.
        batches: Dicts of tensors (``model(**batch)``) or tensors, as for `collect_stats`.
        sites: Named capture sites.
        sums: The running sums to build; each reads some of the sites.
        anatomy: Where the blocks are; found with ``get_anatomy`` if None.
        accelerator: Optional ``accelerate.Accelerator`` (device, mixed precision, processes; give each
            process its own shard of the batches: the totals are summed over processes).
        max_tokens: Token budget, exactly as in `collect_stats` (per process: its share).
        skip_tokens: Leave each sequence's first N valid tokens out.
        state_path: Resumable run: partial sums saved there every `save_every` batches, on an error and
            at the end; a rerun with the same path, sites, sums and batches continues where it stopped.
        progress: Show a progress bar (main process only).
        desc: Its label.
        save_every: Batches between two saves of `state_path`.

    Returns:
        The reduced totals.

    Raises:
        CollectError: no sites or sums, a sum reads an unknown site, a budget below 1, a state file of
            another run.
    """
    if not sites or not sums:
        raise CollectError("collect_site_sums needs at least one capture site and one sum")
    names = [s.name for s in sums]
    if len(set(names)) != len(names) or "tokens" in names:
        raise CollectError(f"sum names must be unique and not 'tokens', got {names}")
    for entry in sums:
        unknown = [site for site in entry.sites if site not in sites]
        if unknown:
            raise CollectError(f"sum {entry.name!r} reads unknown sites {unknown}; define them in `sites`")
    if max_tokens is not None and max_tokens < 1:
        raise CollectError(f"max_tokens must be a positive number of tokens, got {max_tokens}")
    if anatomy is None:
        from prune.anatomy import get_anatomy

        anatomy = get_anatomy(model)
    blocks = anatomy.blocks(model)

    rank, world, budget = process_share(max_tokens, accelerator)
    fingerprint = {
        "model": f"{type(model).__name__}|{parameter_count(model)}|{len(blocks)}",
        "sites": {name: [s.block, s.module, s.io] for name, s in sorted(sites.items())},
        "sums": {s.name: list(s.sites) for s in sums},
        "max_tokens": max_tokens,
        "skip_tokens": skip_tokens,
        "num_processes": world,
    }
    totals: dict[str, Tensor] = {}
    tokens = 0
    consumed = 0
    state_file = state_file_for(state_path, rank, world)
    if state_file is not None and os.path.exists(state_file):
        state = read_state(state_file)
        if state.get("fingerprint") != fingerprint:
            raise CollectError(
                f"state file {state_file} belongs to another run (other model, sites, sums or budget); "
                "delete it to start over"
            )
        totals = {k: v.double() for k, v in state["sums"].items()}
        tokens, consumed = int(state["tokens"]), int(state["batches"])

    def save_state() -> None:
        if state_file is not None:
            atomic_torch_save(
                {
                    "format_version": 1,
                    "fingerprint": fingerprint,
                    "batches": consumed,
                    "tokens": tokens,
                    "sums": totals,
                },
                state_file,
            )

    device = accelerator.device if accelerator is not None else _input_device(model)
    extra = {"use_cache": False} if forward_accepts(model, "use_cache") else {}
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    hooks = _SiteHooks(blocks, sites)
    bar = None
    if progress and (accelerator is None or accelerator.is_main_process):
        from tqdm.auto import tqdm

        total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
        bar = tqdm(total=total, initial=consumed, desc=desc, unit="batch")
    try:
        with torch.no_grad():
            for index, batch, remaining in budgeted_batches(
                batches,
                consumed=consumed,
                # read before every batch, after the previous one added its tokens
                remaining=lambda: None if budget is None else budget - tokens,  # noqa: B023
                skip_tokens=skip_tokens,
                device=device,
            ):
                hooks.reset()
                shape = _token_shape(batch)
                pending = None
                if shape is not None:  # the mask is known before the forward pass: sum during it
                    mask = valid_mask(batch, torch.empty((*shape, 0), device=device), remaining, skip_tokens)
                    pending = _BatchSums(totals, sums, hooks.captured, mask)
                    hooks.on_capture = pending.ready
                try:
                    with autocast(), contextlib.suppress(_StopForward):
                        if isinstance(batch, dict):
                            model(**batch, **extra)
                        else:
                            model(batch, **extra)
                finally:
                    hooks.on_capture = None
                missing = [name for name in sites if name not in hooks.seen]
                if missing:
                    raise AnatomyError(
                        f"the forward pass did not run capture sites {missing} "
                        f"({', '.join(sites[m].describe() for m in missing)}); name modules the model runs"
                    )
                if pending is None:
                    reference = next((v for v in hooks.captured.values() if v.dim() == 3), None)
                    if reference is None:
                        raise DataError(
                            "a calibration batch has no attention_mask, input_ids or inputs_embeds and no "
                            "capture site keeps [batch, tokens, features]; pass dict batches with input_ids"
                        )
                    mask = valid_mask(batch, reference, remaining, skip_tokens)
                    del reference
                    pending = _BatchSums(totals, sums, hooks.captured, mask)
                    pending.ready()
                tokens += int(mask.sum())
                hooks.reset()
                del mask, pending
                consumed = index + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(tokens=tokens, refresh=False)
                if state_file is not None and consumed % save_every == 0:
                    save_state()
    except BaseException:
        save_state()
        raise
    finally:
        hooks.remove()
        if bar is not None:
            bar.close()
    save_state()
    if not totals:
        raise CollectError("no calibration tokens reached the capture sites; pass more calibration data")
    count = torch.tensor(float(tokens), dtype=torch.float64)
    if world > 1:
        totals = {
            name: accelerator.reduce(t.to(accelerator.device), reduction="sum").cpu()
            for name, t in totals.items()
        }
        count = accelerator.reduce(count.to(accelerator.device), reduction="sum").cpu()
    info = {"batches": consumed, "max_tokens": max_tokens, "skip_tokens": skip_tokens, "num_processes": world}
    return SiteStats(sums=totals, num_tokens=int(count), info=info)


__all__ = [
    "CaptureSite",
    "SiteStats",
    "SiteSum",
    "collect_site_sums",
    "column_square_sum",
    "column_sum",
    "cross",
    "difference_gram",
    "gram",
    "site_rows",
]
