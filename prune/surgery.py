"""Remove blocks from a model so that it is again a plain, loadable Hugging Face checkpoint.

Surgery keeps the kept blocks as they are (their weights and their own per-layer settings, such as a
Gemma2 layer's sliding window) and rewires what depends on the number and position of the blocks:
the block list, every layer-index attribute (the KV cache is indexed by it), the layer count in the
right (sub-)config, per-layer config lists such as ``layer_types``, and config entries that hold layer
indices or thresholds. The same rewiring, undone on exit, gives `blocks_skipped`.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from prune.anatomy import Anatomy, get_anatomy
from prune.anatomy.spec import resolve_attr
from prune.errors import AnatomyError, TargetError

logger = logging.getLogger(__name__)

Undo = Callable[[], None]


def remove_blocks(
    model: nn.Module,
    drop: Iterable[int],
    *,
    anatomy: Anatomy | None = None,
    inplace: bool = False,
    share_weights: bool = False,
) -> nn.Module:
    """Return `model` without the blocks at the indices in `drop`.

    Args:
        model: A transformers PreTrainedModel or a custom nn.Module (then pass `anatomy`).
        drop: Indices of the blocks to remove (0-based, any order, no duplicates).
        anatomy: The model's anatomy; computed with `get_anatomy(model)` when omitted.
        inplace: Modify `model` itself instead of a deep copy. By default the original stays untouched.
        share_weights: Copy the modules but not the weights: the result's parameters and buffers are the
            original's tensors, so the copy costs no memory (for a 7B model, 14 GB in bf16). The original's
            structure is still untouched, but training or repairing either model changes both; use it when
            both are only read (compared, saved) or the original is about to be discarded.

    Returns:
        The pruned model (a new object unless `inplace`). Its saved config loads with the stock
        transformers Auto classes.

    Raises:
        TargetError: an index is out of range, repeated, not an int, or every block would be removed.
        AnatomyError: the model's block list cannot be found or disagrees with `anatomy`.

    Example:
        >>> pruned = remove_blocks(model, [1, 3])  # doctest: +SKIP
        >>> pruned.config.num_hidden_layers  # doctest: +SKIP
        4
    """
    anatomy = anatomy if anatomy is not None else get_anatomy(model)
    keep = _keep_indices(anatomy, _checked_drop(drop, anatomy.num_blocks))
    _check_blocks(model, anatomy)
    target = model if inplace else _copy(model, share_weights=share_weights)
    tied = _tied_embeddings(target)
    if len(keep) < anatomy.num_blocks:
        _warn_index_sensitive(target, anatomy)
        _rewire(target, anatomy, keep)
    _retie(target, tied)
    return target


@contextmanager
def blocks_skipped(
    model: nn.Module, drop: Iterable[int], *, anatomy: Anatomy | None = None
) -> Iterator[nn.Module]:
    """Temporarily run `model` without the given blocks; no copy is made.

    Inside the context the model behaves like ``remove_blocks(model, drop)`` (block list, layer indices
    and config are rewired); on exit, even after an exception, everything is restored. Meant for the
    many uncached forward passes of a search over candidate block sets.

    Args:
        model: The model to run with blocks skipped.
        drop: Indices of the blocks to skip.
        anatomy: The model's anatomy; computed when omitted.

    Yields:
        `model` itself, rewired.

    Raises:
        TargetError: bad indices (as for `remove_blocks`).

    Example:
        >>> with blocks_skipped(model, [2, 3]):  # doctest: +SKIP
        ...     loss = model(**batch, labels=batch["input_ids"]).loss
    """
    anatomy = anatomy if anatomy is not None else get_anatomy(model)
    keep = _keep_indices(anatomy, _checked_drop(drop, anatomy.num_blocks))
    _check_blocks(model, anatomy)
    undo = _rewire(model, anatomy, keep) if len(keep) < anatomy.num_blocks else (lambda: None)
    try:
        yield model
    finally:
        undo()


def _copy(model: nn.Module, *, share_weights: bool) -> nn.Module:
    if not share_weights:
        return copy.deepcopy(model)
    # deepcopy returns what its memo maps an object's id to, so seeding the memo with every tensor the
    # model owns copies the module tree around the same tensors.
    tensors = [*model.parameters(), *model.buffers()]
    return copy.deepcopy(model, {id(tensor): tensor for tensor in tensors})


def _checked_drop(drop: Iterable[int], num_blocks: int) -> tuple[int, ...]:
    if isinstance(drop, (str, bytes)):
        raise TargetError(f"drop must be a list of block indices, not the string {drop!r}; pass e.g. [1, 3]")
    indices = tuple(drop)
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TargetError(f"block index {index!r} is not an int; pass indices 0..{num_blocks - 1}")
        if not 0 <= index < num_blocks:
            raise TargetError(
                f"block index {index} is out of range for a model with {num_blocks} blocks; "
                f"pass indices 0..{num_blocks - 1}"
            )
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if repeated:
        raise TargetError(f"block indices {repeated} are listed more than once; list each block once")
    if len(set(indices)) == num_blocks:
        raise TargetError(f"dropping all {num_blocks} blocks leaves no model; keep at least one block")
    return indices


def _keep_indices(anatomy: Anatomy, drop: tuple[int, ...]) -> list[int]:
    dropped = set(drop)
    return [i for i in range(anatomy.num_blocks) if i not in dropped]


def _check_blocks(model: nn.Module, anatomy: Anatomy) -> None:
    blocks = anatomy.blocks(model)
    if len(blocks) != anatomy.num_blocks:
        raise AnatomyError(
            f"{anatomy.block_path} has {len(blocks)} blocks but the anatomy says {anatomy.num_blocks}; "
            "recompute it with get_anatomy(model)"
        )


def _rewire(model: nn.Module, anatomy: Anatomy, keep: list[int]) -> Undo:
    """Point `model` at the kept blocks; returns a function that restores the previous state."""
    undos: list[Undo] = []
    try:
        undos.append(_slice_block_list(anatomy.blocks(model), keep))
        undos.append(_renumber(anatomy.blocks(model), anatomy.layer_index_attributes))
        for config in _layer_configs(model, anatomy):
            undos.append(_update_config(config, anatomy, keep))
    except BaseException:
        _run_undos(undos)
        raise
    return lambda: _run_undos(undos)


def _run_undos(undos: list[Undo]) -> None:
    for undo in reversed(undos):
        undo()


def _slice_block_list(blocks: nn.ModuleList, keep: list[int]) -> Undo:
    # Swap the ModuleList's contents rather than the list itself, so that references to it (and hooks
    # registered on it) stay valid.
    before = blocks._modules
    children = list(before.values())
    blocks._modules = OrderedDict((str(new), children[old]) for new, old in enumerate(keep))

    def undo() -> None:
        blocks._modules = before

    return undo


def _renumber(blocks: nn.ModuleList, attributes: tuple[str, ...]) -> Undo:
    saved: list[tuple[Any, str, Any]] = []
    for position, block in enumerate(blocks):
        for dotted in attributes:
            owner_path, _, name = dotted.rpartition(".")
            owner = resolve_attr(block, owner_path)
            if hasattr(owner, name):
                saved.append((owner, name, getattr(owner, name)))
                setattr(owner, name, position)

    def undo() -> None:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)

    return undo


def _layer_configs(model: nn.Module, anatomy: Anatomy) -> list[Any]:
    """Every config object that counts these blocks: the anatomy's one plus copies held by submodules."""
    main = anatomy.layer_config(model)
    if main is None:
        return []
    key = anatomy.layer_count_key
    configs = {id(main): main}
    # Some composite models build sub-models from a copy of the sub-config; those copies drive the
    # forward pass, so they must be rewired too. Same class and same layer count identify them.
    for module in model.modules():
        other = getattr(module, "config", None)
        if type(other) is type(main) and getattr(other, key, None) == anatomy.num_blocks:
            configs.setdefault(id(other), other)
    root = getattr(model, "config", None)
    if anatomy.config_path and root is not None and getattr(root, key, None) == anatomy.num_blocks:
        configs.setdefault(id(root), root)
    return list(configs.values())


def _update_config(config: Any, anatomy: Anatomy, keep: list[int]) -> Undo:
    saved: list[tuple[str, Any]] = []

    def assign(key: str, value: Any) -> None:
        saved.append((key, getattr(config, key)))
        setattr(config, key, value)

    assign(anatomy.layer_count_key, len(keep))
    for key in anatomy.per_layer_config_keys:
        values = getattr(config, key, None)
        if isinstance(values, (list, tuple)) and len(values) == anatomy.num_blocks:
            assign(key, type(values)(values[i] for i in keep))
    for key in anatomy.layer_threshold_keys:
        threshold = getattr(config, key, None)
        if isinstance(threshold, int):
            # "layers below the threshold" stays the same set of kept layers, counted in the new numbering.
            assign(key, sum(1 for i in keep if i < threshold))
    for key in anatomy.layer_index_list_keys:
        indices = getattr(config, key, None)
        if isinstance(indices, (list, tuple)):
            assign(key, type(indices)(keep.index(i) for i in indices if i in keep))

    def undo() -> None:
        for key, value in reversed(saved):
            setattr(config, key, value)

    return undo


def _warn_index_sensitive(model: nn.Module, anatomy: Anatomy) -> None:
    config = anatomy.layer_config(model)
    for key, message in anatomy.index_sensitive_flags:
        if getattr(config, key, False) is True:
            logger.warning("%s", message)


def _tied_embeddings(model: nn.Module) -> bool:
    try:
        inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return False
    return inputs is not None and outputs is not None and outputs.weight is inputs.weight


def _retie(model: nn.Module, was_tied: bool) -> None:
    # deepcopy keeps shared parameters shared; this guards the invariant should a copy ever break it.
    if was_tied and not _tied_embeddings(model):
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
