"""What a pruned configuration costs, computed from the model's structure without building it.

A configuration is a set of blocks to cut and the number of FFN neurons every kept block keeps (one
``intermediate_size`` for the whole checkpoint). Its parameter count is exact: the model's distinct
parameters, less each cut block's own parameters, less, in each kept block, the parameters one
intermediate neuron costs (its rows of the up/gate projections with their biases and its column of the
down projection) times the neurons removed. The size in bytes follows from the weights' element size.

Example:
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
    ...                                      num_attention_heads=4, vocab_size=128))
    >>> from prune.anatomy import get_anatomy
    >>> costs = ModelCosts.from_model(model, get_anatomy(model))
    >>> costs.params_after((1,), 48) == sum(p.numel() for p in model.parameters()) - costs.block_params[1] \\
    ...     - 3 * 16 * costs.neuron_params[0]
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from prune.anatomy.spec import Anatomy
from prune.errors import BudgetError


@dataclass(frozen=True)
class ModelCosts:
    """Per-block parameter costs of a model.

    Attributes:
        total_params: Distinct parameters of the whole model (tied weights once).
        block_params: Parameters owned by each block (none shared with the rest of the model).
        neuron_params: Parameters one intermediate neuron costs in each block's MLP (0 without MLP anatomy).
        intermediate_sizes: d_ff of each block (0 without MLP anatomy).
        bytes_per_param: Element size of the weights (2 for bf16/fp16, 4 for fp32).
    """

    total_params: int
    block_params: tuple[int, ...]
    neuron_params: tuple[int, ...]
    intermediate_sizes: tuple[int, ...]
    bytes_per_param: float

    @classmethod
    def from_model(cls, model: nn.Module, anatomy: Anatomy) -> ModelCosts:
        """Read the costs off `model` (which has `anatomy`)."""
        from prune.fold import weight_matrix

        blocks = anatomy.blocks(model)
        outside = {
            id(p) for name, p in model.named_parameters() if not name.startswith(anatomy.block_path + ".")
        }
        params = {id(p): p for p in model.parameters()}
        total = sum(p.numel() for p in params.values())
        weight_bytes = sum(p.numel() * p.element_size() for p in params.values())
        block_params, neuron_params, sizes = [], [], []
        for block in blocks:
            block_params.append(
                sum(
                    p.numel() for p in {id(q): q for q in block.parameters()}.values() if id(p) not in outside
                )
            )
            if anatomy.mlp is None:
                neuron_params.append(0)
                sizes.append(0)
                continue
            parts = anatomy.mlp.parts(block)
            down = weight_matrix(parts.down)
            d_ff = int(down.shape[1])
            per_neuron = int(down.shape[0])  # its column of the down projection
            for projection in parts.inputs:
                rows = weight_matrix(projection).shape[0] // d_ff  # 2 for a fused gate/up projection
                has_bias = getattr(projection, "bias", None) is not None
                per_neuron += rows * (int(weight_matrix(projection).shape[1]) + int(has_bias))
            neuron_params.append(per_neuron)
            sizes.append(d_ff)
        return cls(
            total_params=total,
            block_params=tuple(block_params),
            neuron_params=tuple(neuron_params),
            intermediate_sizes=tuple(sizes),
            bytes_per_param=weight_bytes / max(total, 1),
        )

    @property
    def num_blocks(self) -> int:
        return len(self.block_params)

    @property
    def intermediate_size(self) -> int:
        """The common d_ff (the largest if blocks differ)."""
        return max(self.intermediate_sizes, default=0)

    def params_after(self, drop: Iterable[int], keep_neurons: int | None = None) -> int:
        """Parameters after cutting `drop` and keeping `keep_neurons` FFN neurons per kept block.

        Args:
            drop: Indices of the blocks cut.
            keep_neurons: Neurons each kept block keeps; None keeps them all.
        """
        cut = set(drop)
        params = self.total_params - sum(self.block_params[i] for i in cut)
        if keep_neurons is not None:
            for i in range(self.num_blocks):
                if i not in cut:
                    removed = max(self.intermediate_sizes[i] - keep_neurons, 0)
                    params -= removed * self.neuron_params[i]
        return params

    def bytes_after(self, drop: Iterable[int], keep_neurons: int | None = None) -> float:
        """Bytes of weights after the same configuration (element size of the current weights)."""
        return self.params_after(drop, keep_neurons) * self.bytes_per_param

    def max_keep_within(self, drop: Iterable[int], max_params: float, multiple: int = 1) -> int | None:
        """The most neurons per kept block (a multiple of `multiple`) that fits in `max_params`.

        Returns:
            The count, d_ff when the cut alone fits, or None when even 1 neuron per block does not fit.
        """
        cut = set(drop)
        full = self.params_after(cut)
        if full <= max_params:
            return self.intermediate_size
        per_neuron = sum(self.neuron_params[i] for i in range(self.num_blocks) if i not in cut)
        if per_neuron == 0:
            return None
        remove = math.ceil((full - max_params) / per_neuron)
        keep = self.intermediate_size - remove
        keep = (keep // multiple) * multiple if multiple > 1 else keep
        return keep if keep >= max(multiple, 1) else None

    def check_width(self, keep_neurons: int) -> None:
        """A BudgetError unless 1 <= keep_neurons <= d_ff."""
        if not 1 <= keep_neurons <= self.intermediate_size:
            raise BudgetError(
                f"{keep_neurons} FFN neurons per block is out of range; pass 1 to {self.intermediate_size}"
            )


__all__ = ["ModelCosts"]
