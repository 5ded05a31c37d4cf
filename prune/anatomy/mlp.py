"""The feed-forward part (MLP) of a block: where its projections are, how it sits in the residual stream.

Repair folds a fitted map into a block's down projection or into a norm after it, and width squeezing
slices the intermediate neurons of every MLP; both need to know, per family, which modules those are.
A family data file says it under ``"mlp"`` (validated by `MlpSpec`); families without a file get the
projections by discovery (`discover_mlp`), with the residual placement left unknown.

The placement decides which maps fold exactly (see `prune.fold`):

- ``pre_norm`` (Llama, Mistral, Qwen, Phi3, GPT-2, OPT, and with a parallel attention branch GPT-NeoX and
  Falcon): the block output is ``h + ... + down(a)``, linear in the down projection, so any d x d map of
  the MLP output folds into it.
- ``post_norm`` (BERT, RoBERTa, ELECTRA, MPNet, DistilBERT; OPT-350m style): the block output is
  ``LayerNorm(r + down(a))``; only a per-channel affine map of the output folds (into that LayerNorm).
- ``sandwich`` (Gemma2/3): ``h + post_norm(down(a))``: a per-channel scale folds into the post-MLP norm;
  a full map does not (the RMSNorm normalises whatever the down projection gives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from prune.errors import AnatomyError

Residual = Literal["pre_norm", "post_norm", "sandwich"]
Layout = Literal["linear", "conv1d"]


class MlpSpec(BaseModel):
    """Where a family keeps the MLP of a block, as written under ``"mlp"`` in its data file.

    Paths are dotted and relative to the block. Exactly one of ``up`` and ``gate_up`` is given; ``gate``
    only with ``up``. A fused ``gate_up`` projection holds the gate rows first and the up rows second
    (Phi3: ``gate, up = gate_up(x).chunk(2, dim=-1)``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    up: str | None = Field(
        default=None, description="Projection d -> d_ff (the 'up' or only input projection)."
    )
    gate: str | None = Field(default=None, description="Gate projection d -> d_ff of a gated MLP.")
    gate_up: str | None = Field(
        default=None, description="Fused gate+up projection d -> 2 d_ff (gate rows first)."
    )
    down: str = Field(description="Projection d_ff -> d whose output joins the residual stream.")
    attention_out: str | None = Field(
        default=None,
        description="The module whose output is the attention branch's contribution to the residual stream "
        "(the attention output projection; Gemma: post_attention_layernorm). With `down` it names every "
        "residual writer of a block, which the `scale` repair rescales.",
    )
    act: str | None = Field(default=None, description="Activation module between the projections.")
    intermediate_size_key: str = Field(description="Config key of d_ff (updated when neurons are removed).")
    layout: Layout = Field(default="linear", description="'linear' (nn.Linear) or 'conv1d' (GPT-2's Conv1D).")
    residual: Residual = Field(description="Where the MLP output meets the residual stream and the norms.")
    output_norm: str | None = Field(
        default=None, description="post_norm: the norm applied after the residual add (the block output)."
    )
    post_mlp_norm: str | None = Field(
        default=None, description="sandwich: the norm applied to the MLP output before the residual add."
    )
    post_norm_unless: str | None = Field(
        default=None,
        description="A boolean config key: when it is false the family is post_norm with `output_norm` "
        "(OPT's do_layer_norm_before).",
    )
    norm_weight_offset: float = Field(
        default=0.0, description="Norms compute x * (offset + weight): 1.0 for Gemma's RMSNorm, else 0."
    )

    @model_validator(mode="after")
    def _consistent(self) -> MlpSpec:
        if (self.up is None) == (self.gate_up is None):
            raise ValueError("give exactly one of 'up' and 'gate_up'")
        if self.gate is not None and self.gate_up is not None:
            raise ValueError("'gate' goes with 'up'; a fused projection is 'gate_up' alone")
        if self.residual == "post_norm" and self.output_norm is None:
            raise ValueError("a post_norm MLP needs 'output_norm'")
        if self.residual == "sandwich" and self.post_mlp_norm is None:
            raise ValueError("a sandwich MLP needs 'post_mlp_norm'")
        if self.post_norm_unless is not None and self.output_norm is None:
            raise ValueError("'post_norm_unless' needs the 'output_norm' it switches on")
        return self


@dataclass(frozen=True)
class MlpParts:
    """The modules of one block's MLP (None where the family has no such module)."""

    up: nn.Module | None
    gate: nn.Module | None
    gate_up: nn.Module | None
    down: nn.Module
    act: nn.Module | None
    output_norm: nn.Module | None
    post_mlp_norm: nn.Module | None
    attention_out: nn.Module | None = None

    @property
    def inputs(self) -> tuple[nn.Module, ...]:
        """The projections whose output rows are the intermediate neurons (sliced together)."""
        return tuple(m for m in (self.gate, self.up, self.gate_up) if m is not None)


@dataclass(frozen=True)
class MlpAnatomy:
    """The MLP of every block of one model, resolved against that model.

    Attributes:
        up, gate, gate_up, down, act, output_norm, post_mlp_norm, attention_out: dotted paths inside a
            block (None: absent).
        intermediate_size_key: config key of d_ff (None when discovered and the config names none).
        layout: "linear" or "conv1d".
        residual: "pre_norm", "post_norm", "sandwich", or None when unknown (discovered families).
        norm_weight_offset: 1.0 where norms compute x * (1 + weight) (Gemma), else 0.0.
        source: "family" (from the data file) or "discovered".
    """

    down: str
    up: str | None = None
    gate: str | None = None
    gate_up: str | None = None
    act: str | None = None
    intermediate_size_key: str | None = None
    layout: Layout = "linear"
    residual: Residual | None = None
    output_norm: str | None = None
    post_mlp_norm: str | None = None
    norm_weight_offset: float = 0.0
    source: str = "family"
    attention_out: str | None = None

    @property
    def gated(self) -> bool:
        """True when the down projection reads act(gate x) * (up x)."""
        return self.gate is not None or self.gate_up is not None

    def parts(self, block: nn.Module) -> MlpParts:
        """The MLP modules of `block`.

        Raises:
            AnatomyError: a declared module is missing from the block.
        """
        from prune.anatomy.attrs import resolve_attr

        def get(path: str | None) -> nn.Module | None:
            if path is None:
                return None
            try:
                return resolve_attr(block, path)
            except (AttributeError, IndexError) as exc:
                raise AnatomyError(
                    f'{type(block).__name__} has no MLP module {path!r}; fix the family file\'s "mlp" entry'
                ) from exc

        down = get(self.down)
        assert down is not None
        return MlpParts(
            up=get(self.up),
            gate=get(self.gate),
            gate_up=get(self.gate_up),
            down=down,
            act=get(self.act),
            output_norm=get(self.output_norm),
            post_mlp_norm=get(self.post_mlp_norm),
            attention_out=get(self.attention_out),
        )

    def intermediate_size(self, block: nn.Module) -> int:
        """d_ff of `block`: the number of inputs of its down projection."""
        from prune.fold import weight_matrix

        return int(weight_matrix(self.parts(block).down).shape[1])


def resolve_mlp(spec: MlpSpec, config: Any) -> MlpAnatomy:
    """The `MlpAnatomy` a family spec gives for a model with this (layer) config."""
    residual: Residual = spec.residual
    output_norm = spec.output_norm
    if spec.post_norm_unless is not None:
        post = getattr(config, spec.post_norm_unless, True) is False
        residual = "post_norm" if post else spec.residual
        output_norm = spec.output_norm if post else None
    return MlpAnatomy(
        up=spec.up,
        gate=spec.gate,
        gate_up=spec.gate_up,
        down=spec.down,
        act=spec.act,
        intermediate_size_key=spec.intermediate_size_key,
        layout=spec.layout,
        residual=residual,
        output_norm=output_norm,
        post_mlp_norm=spec.post_mlp_norm,
        norm_weight_offset=spec.norm_weight_offset,
        source="family",
        attention_out=spec.attention_out,
    )


# Names of MLP projections across code bases, in (input, gate, output) roles; tried by discovery.
_INPUT_NAMES = ("up_proj", "fc1", "c_fc", "dense_h_to_4h", "w1", "wi", "lin1", "fc_in", "intermediate.dense")
_GATE_NAMES = ("gate_proj", "w3", "wi_0")
_OUTPUT_NAMES = ("down_proj", "fc2", "c_proj", "dense_4h_to_h", "w2", "wo", "lin2", "fc_out", "output.dense")
_SIZE_KEYS = ("intermediate_size", "ffn_dim", "ffn_hidden_size", "n_inner", "hidden_dim", "d_ff")


def discover_mlp(block: nn.Module, config: Any) -> MlpAnatomy | None:
    """Find the MLP of a block of an unknown family by the usual projection names and shapes.

    The down projection is a linear module d_ff -> d whose input size a linear d -> d_ff in the same
    block produces; the residual placement cannot be read off the modules and is left unknown (None), so
    repair refuses a full-map fold there unless told otherwise.

    Returns:
        The anatomy, or None when no such pair of projections is found.
    """
    from prune.fold import weight_matrix

    linears = {name: m for name, m in block.named_modules() if _is_projection(m)}

    def find(names: tuple[str, ...]) -> str | None:
        for name in linears:
            if any(name == n or name.endswith("." + n) for n in names):
                return name
        return None

    up, down, gate = find(_INPUT_NAMES), find(_OUTPUT_NAMES), find(_GATE_NAMES)
    if up is None or down is None or up == down:
        return None
    up_w, down_w = weight_matrix(linears[up]), weight_matrix(linears[down])
    if up_w.shape[0] != down_w.shape[1] or up_w.shape[1] != down_w.shape[0]:
        return None
    if gate is not None and weight_matrix(linears[gate]).shape != up_w.shape:
        gate = None
    layout: Layout = "conv1d" if type(linears[down]).__name__ == "Conv1D" else "linear"
    key = next((k for k in _SIZE_KEYS if getattr(config, k, None) == up_w.shape[0]), None)
    return MlpAnatomy(
        up=up,
        gate=gate,
        down=down,
        intermediate_size_key=key,
        layout=layout,
        residual=None,
        source="discovered",
    )


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


__all__ = ["MlpAnatomy", "MlpParts", "MlpSpec", "discover_mlp", "resolve_mlp"]
