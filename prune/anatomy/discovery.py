"""Find a model's block list: from its family data file, by generic discovery, or where the user names it.

Order of resolution in `get_anatomy`:
1. ``block_path`` given by the user: used as is (the only way for a custom nn.Module without config).
2. ``config.model_type`` has a family file: its candidate block paths are tried, first relative to
   ``model.base_model`` (so one entry serves the bare model and every head class), then to the root.
3. Generic discovery: the nn.ModuleList of same-class blocks whose length is the config's layer count.
Layer-index attributes come from the family file and from a generic scan of every block for ints named
like ``layer_idx`` that equal the block's position, so a new transformers attribute is not missed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from torch import nn

from prune.anatomy.mlp import discover_mlp, resolve_mlp
from prune.anatomy.spec import Anatomy, FamilySpec, load_families, resolve_attr
from prune.errors import AnatomyError

logger = logging.getLogger(__name__)

# Attribute names that hold a block's own position in the transformers code base (and common custom code).
LAYER_INDEX_NAMES = ("layer_idx", "layer_id", "layer_number", "layer_index")
# Config keys that count the decoder/encoder blocks, tried in order (attribute_map aliases resolve them).
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
# Sub-configs of composite (multimodal) configs that may hold the language model's layer count.
SUB_CONFIG_PATHS = ("", "text_config", "language_config", "llm_config")
# Per-layer config lists that generic discovery slices when their length is the layer count.
GENERIC_PER_LAYER_KEYS = ("layer_types",)


def get_anatomy(model: nn.Module, block_path: str | None = None) -> Anatomy:
    """Locate the repeated blocks of `model` and what in its config depends on them.

    Args:
        model: A transformers PreTrainedModel (any head class) or a custom nn.Module.
        block_path: Dotted path from the model root to the nn.ModuleList of blocks. Needed only for a
            custom module; it overrides the family file and discovery when given.

    Returns:
        The model's Anatomy.

    Raises:
        AnatomyError: the block list cannot be found, is not a ModuleList, or disagrees with the config.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        ...                                      num_attention_heads=4, vocab_size=128))
        >>> get_anatomy(model).block_path
        'model.layers'
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    family = load_families().get(model_type) if model_type else None
    if block_path is not None:
        return _user_anatomy(model, block_path, family)
    if family is not None:
        return _family_anatomy(model, *family)
    if config is not None:
        return _discovered_anatomy(model)
    raise AnatomyError(
        f"{type(model).__name__} has no transformers config, so its block list cannot be found; pass "
        f"block_path= (--block-path) naming it, one of: {_module_list_summary(model)}"
    )


def _family_anatomy(model: nn.Module, family: str, spec: FamilySpec) -> Anatomy:
    roots = _search_roots(model)
    for candidate in spec.block_paths:
        for prefix, root in roots:
            found = _try_resolve(root, candidate)
            if isinstance(found, nn.ModuleList) and len(found) > 0:
                path = f"{prefix}.{candidate}" if prefix else candidate
                return _build(model, family, path, found, spec)
    # A wrapper (a PEFT model, a user's module holding a transformers model) moves the blocks deeper:
    # fall back to the one ModuleList of same-class blocks whose length is the family's layer count.
    _, config = _find_layer_config(model, spec.config_paths, (spec.layer_count_key,))
    count = getattr(config, spec.layer_count_key, None) if config is not None else None
    matches = _counted_lists(model, count)
    if len(matches) == 1:
        return _build(model, family, matches[0][0], matches[0][1], spec)
    raise AnatomyError(
        f"{type(model).__name__} ({family} family) has none of the block lists {list(spec.block_paths)}; "
        f"pass block_path= (--block-path) naming it, one of: {_module_list_summary(model)}"
    )


def _build(model: nn.Module, family: str, path: str, blocks: nn.ModuleList, spec: FamilySpec) -> Anatomy:
    config_path, config = _find_layer_config(model, spec.config_paths, (spec.layer_count_key,))
    if config is None:
        raise AnatomyError(
            f"{type(model).__name__} config has no {spec.layer_count_key!r} under {list(spec.config_paths)}; "
            "fix the family file or pass block_path= (--block-path)"
        )
    _check_count(model, path, blocks, config, spec.layer_count_key)
    n = len(blocks)
    return Anatomy(
        family=family,
        block_path=path,
        num_blocks=n,
        config_path=config_path,
        layer_count_key=spec.layer_count_key,
        per_layer_config_keys=_present_lists(config, spec.per_layer_config_keys, n),
        layer_index_attributes=_layer_index_attributes(blocks, spec.layer_index_attributes),
        layer_threshold_keys=tuple(k for k in spec.layer_threshold_keys if _is_int(getattr(config, k, None))),
        layer_index_list_keys=tuple(
            k for k in spec.layer_index_list_keys if isinstance(getattr(config, k, None), (list, tuple))
        ),
        index_sensitive_flags=tuple((flag.key, flag.message) for flag in spec.index_sensitive_flags),
        mlp=resolve_mlp(spec.mlp, config) if spec.mlp is not None else discover_mlp(blocks[0], config),
    )


def _discovered_anatomy(model: nn.Module) -> Anatomy:
    config_path, config = _find_layer_config(model, SUB_CONFIG_PATHS, LAYER_COUNT_KEYS)
    if config is None:
        raise AnatomyError(
            f"{type(model).__name__} config has no layer count ({', '.join(LAYER_COUNT_KEYS)}); pass "
            f"block_path= (--block-path) naming the block list, one of: {_module_list_summary(model)}"
        )
    key = next(k for k in LAYER_COUNT_KEYS if _is_int(getattr(config, k, None)))
    count = getattr(config, key)
    matches = _counted_lists(model, count)
    if len(matches) != 1:
        found = "none" if not matches else "several: " + ", ".join(name for name, _ in matches)
        raise AnatomyError(
            f"cannot tell which nn.ModuleList of {type(model).__name__} holds its {count} blocks ({found}); "
            f"pass block_path= (--block-path) naming it, one of: {_module_list_summary(model)}"
        )
    path, blocks = matches[0]
    return Anatomy(
        family="discovered",
        block_path=path,
        num_blocks=len(blocks),
        config_path=config_path,
        layer_count_key=key,
        per_layer_config_keys=_present_lists(config, GENERIC_PER_LAYER_KEYS, len(blocks)),
        layer_index_attributes=_layer_index_attributes(blocks, ()),
        mlp=discover_mlp(blocks[0], config),
    )


def _user_anatomy(model: nn.Module, block_path: str, family: tuple[str, FamilySpec] | None) -> Anatomy:
    blocks = _try_resolve(model, block_path)
    if not isinstance(blocks, nn.ModuleList):
        what = "nothing" if blocks is None else f"a {type(blocks).__name__}"
        raise AnatomyError(
            f"block_path {block_path!r} names {what}, not an nn.ModuleList of blocks in "
            f"{type(model).__name__}; pass block_path= (--block-path) naming one of: {_module_list_summary(model)}"
        )
    if len(blocks) == 0:
        raise AnatomyError(
            f"block_path {block_path!r} is an empty nn.ModuleList; name the list of blocks instead"
        )
    if family is not None:
        return _build(model, family[0], block_path, blocks, family[1])
    config_path, config = _find_layer_config(model, SUB_CONFIG_PATHS, LAYER_COUNT_KEYS)
    key = None
    if config is not None:
        key = next(k for k in LAYER_COUNT_KEYS if _is_int(getattr(config, k, None)))
        if [name for name, _ in _counted_lists(model, getattr(config, key))] != [block_path]:
            # The config's count is not (only) this list's, e.g. a vision tower or one half of an
            # encoder-decoder: updating it would corrupt the other list's count, so leave the config alone.
            logger.warning(
                "config %s=%s does not count only %s; surgery will not update the config",
                key,
                getattr(config, key),
                block_path,
            )
            config_path, key = "", None
    return Anatomy(
        family="custom",
        block_path=block_path,
        num_blocks=len(blocks),
        config_path=config_path if key else "",
        layer_count_key=key,
        per_layer_config_keys=_present_lists(config, GENERIC_PER_LAYER_KEYS, len(blocks)) if key else (),
        layer_index_attributes=_layer_index_attributes(blocks, ()),
        mlp=discover_mlp(blocks[0], config),
    )


def _search_roots(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(prefix, module) pairs to resolve family block paths from: the base model first, then the root."""
    base = getattr(model, "base_model", None)
    roots: list[tuple[str, nn.Module]] = []
    if isinstance(base, nn.Module) and base is not model:
        prefix = next((name for name, module in model.named_modules() if module is base), None)
        if prefix is not None:
            roots.append((prefix, base))
    roots.append(("", model))
    return roots


def _find_layer_config(model: nn.Module, paths: tuple[str, ...], keys: tuple[str, ...]) -> tuple[str, Any]:
    config = getattr(model, "config", None)
    if config is None:
        return "", None
    for path in paths:
        sub = _try_resolve(config, path)
        if sub is not None and any(_is_int(getattr(sub, key, None)) for key in keys):
            return path, sub
    return "", None


def _check_count(model: nn.Module, path: str, blocks: nn.ModuleList, config: Any, key: str) -> None:
    count = getattr(config, key)
    if count != len(blocks):
        raise AnatomyError(
            f"{type(model).__name__}.{path} has {len(blocks)} blocks but config {key}={count}; fix the config "
            "or pass block_path= (--block-path) naming the right block list"
        )


def _layer_index_attributes(blocks: nn.ModuleList, declared: tuple[str, ...]) -> tuple[str, ...]:
    """Declared attributes present in the blocks, plus any found by the generic scan (declared first)."""
    present = [attr for attr in declared if _is_int(_try_resolve(blocks[0], attr))]
    scanned = [attr for attr in scan_layer_index_attributes(blocks) if attr not in present]
    return tuple(present + scanned)


def scan_layer_index_attributes(blocks: nn.ModuleList) -> tuple[str, ...]:
    """Dotted attributes (inside a block) named like ``layer_idx`` whose value is the block's position.

    An attribute qualifies only when every block has it and its value equals the block's index, which
    tells a layer index apart from any other int that happens to share the name.

    Args:
        blocks: The block list.

    Example:
        >>> scan_layer_index_attributes(model.model.layers)  # doctest: +SKIP
        ('self_attn.layer_idx',)
    """
    candidates = list(_index_like_attributes(blocks[0]))
    return tuple(
        attr for attr in candidates if all(_try_resolve(block, attr) == i for i, block in enumerate(blocks))
    )


def _index_like_attributes(block: nn.Module) -> Iterator[str]:
    for name, module in block.named_modules():
        for attr in LAYER_INDEX_NAMES:
            if _is_int(vars(module).get(attr)):
                yield f"{name}.{attr}" if name else attr


def _module_lists(model: nn.Module) -> Iterator[tuple[str, nn.ModuleList]]:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            yield name, module


def _module_list_summary(model: nn.Module) -> str:
    lists = [f"{name} ({len(ml)} x {type(ml[0]).__name__})" for name, ml in _module_lists(model)]
    return ", ".join(lists) if lists else "(the model has no nn.ModuleList; put its blocks in one)"


def _counted_lists(model: nn.Module, count: Any) -> list[tuple[str, nn.ModuleList]]:
    """ModuleLists of same-class blocks whose length is `count`: the candidates for the block list."""
    return [(name, ml) for name, ml in _module_lists(model) if len(ml) == count and _same_class(ml)]


def _same_class(blocks: nn.ModuleList) -> bool:
    return len({type(block) for block in blocks}) == 1


def _present_lists(config: Any, keys: tuple[str, ...], length: int) -> tuple[str, ...]:
    return tuple(
        k
        for k in keys
        if isinstance(getattr(config, k, None), (list, tuple)) and len(getattr(config, k)) == length
    )


def _try_resolve(root: Any, dotted: str) -> Any:
    try:
        return resolve_attr(root, dotted)
    except (AttributeError, IndexError, TypeError):
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Layer-count keys of families without a data file (GPT-2 style, T5 style).
_GENERIC_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def config_block_count(config: Any) -> int | None:
    """The number of blocks a config declares, read without building the model (None when unknown).

    Lets a run check its target against the model before the weights load.

    Example:
        >>> from transformers import BertConfig
        >>> config_block_count(BertConfig(num_hidden_layers=6))
        6
    """
    model_type = getattr(config, "model_type", None)
    family = load_families().get(model_type) if model_type else None
    candidates = (
        [(path, family[1].layer_count_key) for path in family[1].config_paths]
        if family is not None
        else [(path, key) for path in ("", "text_config") for key in _GENERIC_COUNT_KEYS]
    )
    for path, key in candidates:
        sub = _try_resolve(config, path) if path else config
        value = getattr(sub, key, None) if sub is not None else None
        if _is_int(value):
            return int(value)
    return None
