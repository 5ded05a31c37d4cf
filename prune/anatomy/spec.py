"""Family data files and the resolved `Anatomy` of one model.

A family file (``prune/anatomy/families/<family>.json``) says where a family keeps its blocks and which
config entries depend on the number or the position of the blocks. It is validated by the frozen
pydantic model `FamilySpec`; an unknown key is an error, so a typo cannot silently disable a rule.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from prune.anatomy.attrs import resolve_attr
from prune.anatomy.mlp import MlpAnatomy, MlpSpec
from prune.errors import AnatomyError


class IndexSensitiveFlag(BaseModel):
    """A boolean config entry that, when true, makes a block's computation depend on its index."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(description="Config key, e.g. 'scale_attn_by_inverse_layer_idx'.")
    message: str = Field(description="What changes after renumbering, logged as a warning.")


class FamilySpec(BaseModel):
    """Where one model family keeps its blocks, as written in its JSON data file.

    Block paths are tried in order, first relative to ``model.base_model`` and then to the model root, so
    one entry ("layers") serves the bare model class and every head class of the family.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_types: tuple[str, ...] = Field(min_length=1, description="config.model_type values of this family.")
    block_paths: tuple[str, ...] = Field(
        min_length=1, description="Candidate dotted paths of the block list."
    )
    config_paths: tuple[str, ...] = Field(
        default=("",),
        description="Candidate dotted paths under model.config of the config that counts the layers ('' = top).",
    )
    layer_count_key: str = Field(
        default="num_hidden_layers", description="Config key holding the layer count."
    )
    per_layer_config_keys: tuple[str, ...] = Field(
        default=(), description="Config lists with one entry per block, sliced to the kept blocks."
    )
    layer_index_attributes: tuple[str, ...] = Field(
        default=(),
        description="Dotted attributes inside a block holding its index; missing ones are skipped.",
    )
    layer_threshold_keys: tuple[str, ...] = Field(
        default=(),
        description="Config ints meaning 'blocks below this index'; remapped to the kept blocks below it.",
    )
    layer_index_list_keys: tuple[str, ...] = Field(
        default=(),
        description="Config lists of block indices; kept entries are renumbered, dropped ones removed.",
    )
    index_sensitive_flags: tuple[IndexSensitiveFlag, ...] = Field(
        default=(), description="Config flags under which renumbering changes the computation (warned about)."
    )
    mlp: MlpSpec | None = Field(
        default=None, description="Where each block's MLP is (repair and width squeezing need it)."
    )

    @field_validator("block_paths", "config_paths")
    @classmethod
    def _dotted(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for path in paths:
            if path.startswith(".") or path.endswith(".") or ".." in path:
                raise ValueError(f"malformed dotted path {path!r}")
        return paths


@functools.cache
def load_families() -> dict[str, tuple[str, FamilySpec]]:
    """All family files, indexed by model_type: ``{model_type: (family name, spec)}``.

    Raises:
        AnatomyError: a family file is invalid or two files claim the same model_type.
    """
    index: dict[str, tuple[str, FamilySpec]] = {}
    for entry in sorted((resources.files("prune.anatomy") / "families").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        family = entry.name.removesuffix(".json")
        try:
            spec = FamilySpec.model_validate(json.loads(entry.read_text(encoding="utf-8")))
        except (ValidationError, json.JSONDecodeError) as exc:
            raise AnatomyError(f"family file {entry.name} is invalid ({exc}); fix the file") from exc
        for model_type in spec.model_types:
            if model_type in index:
                raise AnatomyError(
                    f"model_type {model_type!r} is claimed by {index[model_type][0]}.json and {entry.name}; "
                    "keep it in one family file"
                )
            index[model_type] = (family, spec)
    return index


@dataclass(frozen=True)
class Anatomy:
    """Where a model keeps its repeated blocks and what depends on their number and position.

    Attributes:
        family: Family file name ("llama"), "discovered" or "custom".
        block_path: Dotted path from the model root to the nn.ModuleList, e.g. "model.layers".
        num_blocks: Length of the block list.
        config_path: Dotted path under model.config of the sub-config holding the layer count ("" = top).
        layer_count_key: Config key of the layer count; None for a custom module without config.
        per_layer_config_keys: Config lists of length num_blocks to slice.
        layer_index_attributes: Dotted attributes inside a block holding its index.
        layer_threshold_keys: Config ints meaning "blocks below this index" (Qwen2's max_window_layers).
        layer_index_list_keys: Config lists of block indices.
        index_sensitive_flags: (config key, message) pairs: when the flag is true, renumbering changes
            the computation and surgery logs the message.
        mlp: Where each block's MLP is (`prune.anatomy.mlp.MlpAnatomy`), None when not known.

    Example:
        >>> anatomy = get_anatomy(model)  # doctest: +SKIP
        >>> anatomy.blocks(model)[0]  # doctest: +SKIP
    """

    family: str
    block_path: str
    num_blocks: int
    config_path: str
    layer_count_key: str | None
    per_layer_config_keys: tuple[str, ...] = ()
    layer_index_attributes: tuple[str, ...] = ()
    layer_threshold_keys: tuple[str, ...] = ()
    layer_index_list_keys: tuple[str, ...] = ()
    index_sensitive_flags: tuple[tuple[str, str], ...] = field(default=())
    mlp: MlpAnatomy | None = None

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The block list of `model` (which must have this anatomy)."""
        try:
            blocks = resolve_attr(model, self.block_path)
        except (AttributeError, IndexError) as exc:
            raise AnatomyError(
                f"model has no block list at {self.block_path!r}; recompute the anatomy with get_anatomy(model)"
            ) from exc
        if not isinstance(blocks, nn.ModuleList):
            raise AnatomyError(
                f"{self.block_path!r} is a {type(blocks).__name__}, not an nn.ModuleList; pass block_path= "
                "(--block-path) naming the ModuleList of blocks"
            )
        return blocks

    def layer_config(self, model: nn.Module) -> Any:
        """The (sub-)config that holds the layer count, or None for a module without config."""
        config = getattr(model, "config", None)
        if config is None or self.layer_count_key is None:
            return None
        return resolve_attr(config, self.config_path)

    def require_mlp(self, purpose: str) -> MlpAnatomy:
        """The MLP anatomy, or an AnatomyError saying that `purpose` (e.g. "width squeezing") needs it."""
        if self.mlp is None:
            raise AnatomyError(
                f"{purpose} needs to know where each block's MLP is, and the {self.family} anatomy does not "
                'say; add an "mlp" entry to the family file (see prune/anatomy/families/llama.json)'
            )
        return self.mlp
