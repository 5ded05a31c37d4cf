"""The options of a pruning run, declared once, in one group per stage.

Each group (`ModelOptions`, `DataOptions`, `CollectOptions`, `ScoreOptions`, `PlanOptions`,
`RepairOptions`, `WidthOptions`, `EvalOptions`, `OutputOptions`, `HubOptions`) holds the knobs of one
stage of `prune.stages`; a stage reads only its group. `PruneOptions` composes them all, so a recipe
stays one flat mapping (``target: 8-layers``, ``seq_len: 512``) and ``opts.strategy`` works as before;
`prune-llm analyze` and `prune-llm eval` compose the groups they need (`prune.command_options`). The CLI generates its flags from
these models (`prune.cli.flags`), so a recipe key and its flag cannot drift apart: adding a knob is one
field in one group, read by its stage.

This module must stay light to import (no torch): the CLI builds `--help` from it.
"""

from __future__ import annotations

import math
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prune.vocab import (
    CKA_MINIBATCH,
    CKA_WINDOW,
    MSRS_BETA,
    MSRS_EPS,
    DeviceMapName,
    DtypeName,
    SearchObjective,
    TokenMode,
)

__all__ = [
    "CKA_MINIBATCH",
    "CKA_WINDOW",
    "OPTION_GROUPS",
    "BudgetOptions",
    "CollectOptions",
    "DataOptions",
    "EvalOptions",
    "HubOptions",
    "ModelOptions",
    "OutputOptions",
    "PlanOptions",
    "PruneOptions",
    "RepairOptions",
    "ScoreOptions",
    "WidthOptions",
]

# The width methods of `prune.width.methods.FFN_METHODS` (checked equal by a test; a Literal gives the
# CLI its choices without importing torch).
FfnMethodName = Literal["squeeze", "squeeze-forward", "textbook", "pivot", "magnitude", "wanda", "flap"]


_G = TypeVar("_G", bound=BaseModel)


class _Group(BaseModel):
    """One stage's options: frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelOptions(_Group):
    """Which model, and how it is loaded."""

    model: str = Field(
        description="Model: a Hugging Face Hub id, an alias (`prune-llm models` lists them), "
        "a local folder, or a .gguf file."
    )
    block_path: str | None = Field(
        default=None, description="Dotted path of the block list (e.g. 'model.layers') for custom models."
    )
    device: str = Field(default="auto", description="Device: auto, cpu, cuda, cuda:N, mps.")
    device_map: DeviceMapName | None = Field(
        default=None,
        description="Spread a model too big for one GPU over all GPUs (accelerate's device_map); "
        "overrides --device.",
    )
    dtype: DtypeName = Field(
        default="auto", description="Dtype of the forward passes (statistics are always summed in float64)."
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow models whose code lives on the Hub (only for models you trust)."
    )


class DataOptions(_Group):
    """Calibration text and how it is cut into batches."""

    calib: str = Field(
        default="default",
        description="Calibration data: 'default' (offline news text when fetched, else WikiText-2 from the "
        "Hub), a local .txt/.csv/.json/.jsonl file or folder, or a Hub dataset 'name[:config][:split]'.",
    )
    calib_samples: int = Field(default=128, ge=1, description="Number of calibration sequences.")
    seq_len: int = Field(default=256, ge=8, description="Tokens per calibration/evaluation sequence.")
    batch_size: int = Field(default=8, ge=1, description="Sequences per forward pass.")
    text_column: str | None = Field(
        default=None,
        description="Column holding the text in the data (default: 'text' or the only string column).",
    )
    seed: int = Field(default=0, description="Seed for data shuffling and the random strategy.")


class CollectOptions(_Group):
    """How the statistics are collected over the calibration batches."""

    max_tokens: int | None = Field(
        default=None, ge=1, description="Stop collecting statistics after this many (non-padding) tokens."
    )
    skip_tokens: int = Field(
        default=0,
        ge=0,
        description="Leave the first N tokens of every calibration sequence out of the statistics: many LLMs "
        "park massive activations on the first token (an attention sink), which inflate CKA and MSRS; 1 leaves "
        "it out.",
    )
    cka_minibatch: int = Field(
        default=CKA_MINIBATCH,
        ge=4,
        description="Tokens per CKA minibatch, drawn at random across the sequences of a window (the unbiased "
        "HSIC sums cost (L+1) N^2 floats per minibatch of N tokens).",
    )
    cka_window: int = Field(
        default=CKA_WINDOW,
        ge=4,
        description="Valid tokens shuffled together before they are cut into CKA minibatches (rounded down to a "
        "multiple of --cka-minibatch). It should span many sequences (16+): raise it for long sequences; the "
        "collector buffers this many tokens of every hidden state.",
    )
    token_mode: TokenMode = Field(
        default="tokens",
        description="Compare hidden states of every token (tokens), their mean over each sequence (mean), or "
        "the last token (last).",
    )
    ffn_block_group: int | None = Field(
        default=None,
        ge=1,
        description="Blocks whose FFN statistics are collected in one calibration pass; one group is held at a "
        "time: a d_ff x d_ff float64 Gram per block (19 MB for d_ff 1536, 969 MB for 11008), two with "
        "--ffn-ridge auto (fitted-on and held-back sums). Default: as many blocks as keep those Grams within "
        "2 GiB (a 7B model: one block per pass with the auto ridge, two otherwise). Later groups are measured "
        "on the model with the earlier groups already squeezed.",
    )


class ScoreOptions(_Group):
    """How the scores are read: MSRS parameters and whether the last block is a candidate."""

    allow_last: bool = Field(
        default=False,
        description="Allow removing the last block (it is usually the most important); in an analysis, let "
        "the best spans and rankings include it.",
    )
    beta: float = Field(default=MSRS_BETA, description="MSRS sharpness beta (RedTest: 100).")
    eps: float = Field(default=MSRS_EPS, description="MSRS CKA threshold eps (RedTest: 0.8).")

    # Checked here rather than as flag bounds, so a bad value gets the message that names RedTest's value.
    @field_validator("beta")
    @classmethod
    def _beta(cls, value: float) -> float:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"beta must be a positive number, got {value!r}; RedTest uses --beta 100")
        return value

    @field_validator("eps")
    @classmethod
    def _eps(cls, value: float) -> float:
        if not -1.0 <= value <= 1.0:
            raise ValueError(
                f"eps must be a CKA value between -1 and 1, got {value!r}; RedTest uses --eps 0.8"
            )
        return value


class PlanOptions(_Group):
    """Which blocks are removed."""

    target: str | None = Field(
        default=None,
        description="How many blocks to keep or drop: 'N-layers' keeps N, 'drop-N' removes N, "
        "'P%' removes P percent of the blocks. Needed unless --ffn-keep is given (width only).",
    )
    strategy: str = Field(
        default="auto",
        description="How blocks are chosen: auto (the default: span-repair when the run repairs with linear, "
        "or the best after repair of several strategies' cuts with --auto-candidates; span with --repair "
        "none/scale or where no map can be fitted), "
        "span (contiguous blocks with the smallest angular distance), "
        "topk (independent blocks with the lowest score), span-repair (the closest spans refitted: the one with the lowest error after linear repair), cka (RedTest: the blocks whose output is most "
        "similar to their input by CKA are dropped), iterative (greedy removal scored on calibration loss), "
        "last, random.",
    )
    auto_candidates: str = Field(
        default="span-repair",
        description="With strategy auto and linear repair: the strategies whose cuts are compared, each scored "
        "plain and repaired with linear (one pass, no refit) on the held-back calibration sequences; the cut "
        "whose better form has the lowest loss is made (e.g. span-repair,topk,cka,span). Default span-repair "
        "alone, no comparison: measured, the comparison changed no SmolLM2-135M cut and chose a slightly "
        "worse MPNet cut, for about 5x the planning time (benchmarks/README.md).",
    )
    metric: str | None = Field(
        default=None,
        description="Score the strategy ranks by: bi, angular or cka for topk and iterative; angular or cka "
        "for span's distance; default: the strategy's own.",
    )
    search_objective: SearchObjective | None = Field(
        default=None,
        description="What the iterative strategy scores candidates on: loss (calibration loss, causal LMs), kl "
        "(KL from the original, causal LMs) or cosine (final hidden state, any model); default: loss for "
        "causal LMs, cosine for encoders.",
    )
    search_candidates: int = Field(
        default=4,
        ge=1,
        description="Iterative strategy: how many of the most redundant remaining blocks are evaluated per step.",
    )


class RepairOptions(_Group):
    """Training-free repair of the cut."""

    repair: str = Field(
        default="linear",
        description="Training-free repair of the cut, folded into the kept weights (no new parameters): linear "
        "(least squares, ReplaceMe: a full d x d map for pre-norm decoders, per-channel affine for post-norm "
        "encoders, per-channel scale for Gemma), scale (Prune&Comp: one magnitude-ratio scalar), none (plain cut).",
    )
    repair_order: Literal["sequential", "one-pass"] = Field(
        default="sequential",
        description="With several cut spans: fit each on the model with the earlier spans already cut and "
        "repaired (sequential, one calibration pass per span), or all on the original (one-pass).",
    )
    repair_objective: Literal["mse", "relative"] = Field(
        default="mse",
        description="What the repair fit minimises: mse (squared error of the hidden states, ReplaceMe) or "
        "relative (each token's error relative to its norm).",
    )
    refit: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Error-correcting refit: refit the down projections of the kept blocks, from the first "
        "junction on, so that the pruned model's residual stream tracks the original's on the calibration "
        "tokens (least squares from both models run in lockstep, folded into the existing weights: still a "
        "stock checkpoint). auto: after the repair of a cut in pre-norm decoders (exact there; measured "
        "better); on: also after an --ffn-keep squeeze and in post-norm encoders; off: the repair/squeeze "
        "alone (as does --repair none for a cut).",
    )
    repair_guard: bool = Field(
        default=True,
        description="After the repair (and refit) of a cut, compare the repaired model with the plain cut on "
        "held-back calibration sequences (drawn after the calibration ones, never fitted on: next-token loss "
        "for causal LMs, 1 - cosine of the final hidden state to the original's for encoders) and keep the "
        "plain cut if the repair made it worse; the report and card give both figures.",
    )
    refit_blocks: int = Field(
        default=3,
        ge=0,
        description="Refit this many blocks from the first junction on (0: every block after it). Default 3: "
        "on SmolLM2-135M 30 -> 24 it reached 47.42 held-out perplexity against 47.73 for every block, in "
        "half the refit time (the later refits fit the calibration tokens, not held-out text).",
    )
    refit_attention: bool = Field(
        default=True,
        description="The refit also refits each pre-norm block's attention output projection (o_proj, GPT-2 "
        "attn.c_proj, OPT out_proj, NeoX/Falcon dense) first, so that the stream after the attention residual "
        "tracks the original's, then the down projection on the updated activations (measured: SmolLM2 30 -> 24 "
        "50.87 -> 50.11, about 15% more refit time; post-norm encoders keep the down-only refit). "
        "--no-refit-attention refits the down projections only.",
    )


class WidthOptions(_Group):
    """FFN width squeezing after the cut."""

    ffn_keep: float | str | None = Field(
        default=None,
        description="Squeeze every FFN after the depth cut: the fraction of intermediate neurons each block "
        "keeps (e.g. 0.75), or 'auto:E' for the fewest neurons with which every block keeps a fraction E of "
        "its activation energy (e.g. auto:0.99). Every block keeps the same count (one config value).",
    )
    ffn_method: FfnMethodName = Field(
        default="squeeze",
        description="How FFN neurons are chosen and compensated: squeeze (output-aware selection + "
        "least-squares fold into the down projection), squeeze-forward (greedy forward variant), textbook "
        "(pivoted Cholesky of the activations + least squares, Ozen & Orailoglu), pivot (squeeze's selection, "
        "no compensation), magnitude, wanda, flap (baselines).",
    )
    ffn_ridge: float | Literal["auto"] = Field(
        default="auto",
        description="Damping of the FFN least-squares folds, relative to the mean neuron energy, or 'auto': "
        "chosen per block by the output error on every 5th calibration batch, held back from a first fit "
        "(the fold then uses all the batches).",
    )

    @field_validator("ffn_ridge")
    @classmethod
    def _ffn_ridge(cls, value: float | str) -> float | str:
        if value != "auto" and not value > 0:
            raise ValueError(f"ffn_ridge must be 'auto' or a positive number, got {value}")
        return value

    @field_validator("ffn_keep")
    @classmethod
    def _ffn_keep(cls, value: float | str | None) -> float | str | None:
        if value is not None:
            from prune.errors import TargetError
            from prune.width.budget import parse_ffn_keep

            try:
                parse_ffn_keep(value)
            except TargetError as err:  # pydantic reports ValueErrors as validation errors
                raise ValueError(str(err)) from None
        return value


class EvalOptions(_Group):
    """Before/after evaluation on held-out text."""

    eval: str = Field(
        default="default",
        description="Held-out data for before/after evaluation (same forms as --calib), or 'none' to skip.",
    )
    eval_samples: int = Field(default=64, ge=1, description="Number of held-out sequences to evaluate on.")
    eval_probe: bool = Field(
        default=False,
        description="Encoders: also train a logistic-regression probe on labelled sentences (Pang & Lee offline, "
        "SST-2 online) on each model's embeddings and report accuracy before/after (minutes on CPU).",
    )


class OutputOptions(_Group):
    """Where the pruned model is written."""

    out: str | None = Field(
        default=None, description="Folder to save the pruned model, tokenizer and report in."
    )
    force: bool = Field(default=False, description="Overwrite --out (and the --gguf file) if it exists.")
    gguf: Literal["f32", "f16", "bf16", "q8_0"] | None = Field(
        default=None,
        description="Also export the pruned model to GGUF for llama.cpp / Ollama with this tensor type, as "
        "<out>.<type>.gguf beside --out (needs pip install 'prune-llm[gguf]').",
    )


class BudgetOptions(_Group):
    """Pruning to a budget (`prune.budget`, #15): depth and FFN width chosen together."""

    budget: str | None = Field(
        default=None,
        description="Prune to a budget instead of a block count: the tool chooses how many blocks to cut (with "
        "--strategy and --repair) and how many FFN neurons to keep, scored on a held-back quarter of the "
        "calibration data. 'params:100M' (at most that many parameters), 'size:350MB' (weights in the "
        "checkpoint's dtype), 'latency:0.7x' (forward pass measured on this machine vs the original), "
        "'loss:1.10x' (the smallest model whose held-back perplexity stays within 1.10x). Replaces --target "
        "and --ffn-keep.",
    )

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: str | None) -> str | None:
        if value is not None:
            from prune.budget.spec import parse_budget
            from prune.errors import BudgetError

            try:
                parse_budget(value)
            except BudgetError as err:
                raise ValueError(str(err)) from None
        return value


class HubOptions(_Group):
    """Publishing to the Hugging Face Hub."""

    push_to_hub: str | None = Field(
        default=None, description="Push the pruned model with a generated model card to this Hub repo."
    )
    private: bool = Field(default=False, description="Create the Hub repo as private.")
    revision: str | None = Field(default=None, description="Branch of the Hub repo to push to.")


# Pydantic collects the fields of the bases from the last one to the first: this order gives the
# flags in --help (and the keys of a saved recipe) the order of the run: model, plan, repair, width,
# data, collection, scores, evaluation, output, hub.
class PruneOptions(
    HubOptions,
    OutputOptions,
    EvalOptions,
    ScoreOptions,
    CollectOptions,
    DataOptions,
    BudgetOptions,
    WidthOptions,
    RepairOptions,
    PlanOptions,
    ModelOptions,
):
    """Everything a pruning run needs to know: all the groups, flat. Unknown keys are errors.

    Example:
        >>> opts = PruneOptions(model="minilm-l6", target="4-layers")
        >>> opts.strategy, opts.group(DataOptions).seq_len
        ('auto', 256)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    def group(self, group: type[_G]) -> _G:
        """This run's values of one group (a stage's own view of the options)."""
        return group.model_validate({name: getattr(self, name) for name in group.model_fields})

    @model_validator(mode="after")
    def _budget_alone(self) -> PruneOptions:
        if self.budget is not None and (self.target is not None or self.ffn_keep is not None):
            given = " and ".join(
                f for f, v in (("--target", self.target), ("--ffn-keep", self.ffn_keep)) if v
            )
            raise ValueError(
                f"--budget chooses the depth and the FFN width itself; drop {given} (or drop --budget to "
                "prune by hand)"
            )
        if self.budget is not None and self.refit == "on":
            raise ValueError(
                "--budget builds and scores its candidates without the refit, so --refit on would not be "
                "applied; drop --refit on (or prune by hand with --target/--ffn-keep and --refit on)"
            )
        return self

    @model_validator(mode="after")
    def _something_to_do(self) -> PruneOptions:
        if self.target is None and self.ffn_keep is None and self.budget is None:
            raise ValueError(
                "nothing to prune: pass --target (blocks to remove, e.g. 8-layers) and/or --ffn-keep "
                "(FFN width to keep, e.g. 0.75), or --budget (e.g. params:100M)"
            )
        return self


# Every group, for code that walks them (flag sections, the saved recipe).
OPTION_GROUPS: tuple[type[BaseModel], ...] = (
    ModelOptions,
    PlanOptions,
    RepairOptions,
    WidthOptions,
    BudgetOptions,
    DataOptions,
    CollectOptions,
    ScoreOptions,
    EvalOptions,
    OutputOptions,
    HubOptions,
)
