"""Load a resolved model (`prune.sources.resolve_model_source`) with the right head, device and dtype.

The Auto class comes from the checkpoint's own `architectures` through a small suffix table, so a
classifier keeps its head and a decoder-only LM gets its LM head. GGUF checkpoints are dequantized on load
and their quantizer state is cleared, so the result saves as an ordinary safetensors checkpoint.
Resolution (aliases, folders, .gguf files, Hub ids, offline help) lives in `prune.sources`; its public
names are importable from here too.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prune.assets import FIX as ASSETS_FIX
from prune.errors import DataError, ModelNotFoundError, PruneError

# Resolution lives in prune.sources; its names stay importable from here.
from prune.sources import (  # noqa: F401
    ModelSource,
    _aliases,
    _offline,
    _suggest,
    list_aliases,
    offline_aliases,
    resolve_model_source,
)
from prune.vocab import DEVICE_MAPS, ModelKind  # noqa: F401 (importable from here)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


# Architecture-name suffix -> (Auto class, kind). Order matters: the first matching suffix wins.
_HEADS: tuple[tuple[str, str, ModelKind], ...] = (
    ("ForCausalLM", "AutoModelForCausalLM", ModelKind.CAUSAL_LM),
    ("LMHeadModel", "AutoModelForCausalLM", ModelKind.CAUSAL_LM),
    ("ForSequenceClassification", "AutoModelForSequenceClassification", ModelKind.ENCODER),
    ("ForTokenClassification", "AutoModelForTokenClassification", ModelKind.ENCODER),
    ("ForQuestionAnswering", "AutoModelForQuestionAnswering", ModelKind.ENCODER),
    ("ForMaskedLM", "AutoModelForMaskedLM", ModelKind.ENCODER),
    ("ForMultipleChoice", "AutoModelForMultipleChoice", ModelKind.ENCODER),
    ("ForNextSentencePrediction", "AutoModelForNextSentencePrediction", ModelKind.ENCODER),
    ("ForPreTraining", "AutoModelForPreTraining", ModelKind.ENCODER),
    ("ForConditionalGeneration", "AutoModelForSeq2SeqLM", ModelKind.OTHER),
)

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


@dataclass
class LoadedModel:
    """A loaded model with its tokenizer, where it came from and its kind."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    source: ModelSource
    kind: ModelKind
    tokenizer_problem: str | None = None  # why `tokenizer` is None, in words (for the error that needs one)

    def require_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer, or a `DataError` that says why there is none and how to get one."""
        if self.tokenizer is None:
            raise DataError(
                f"{self.source.spec} has no usable tokenizer: {self.tokenizer_problem or 'none was found'}; "
                "copy the tokenizer files (tokenizer.json, tokenizer_config.json, vocab/merges) of the "
                "original model into the folder, or save one there with tokenizer.save_pretrained"
            )
        return self.tokenizer


def _auto_class(config: Any) -> tuple[str, ModelKind]:
    """Pick the Auto class and kind from a config's `architectures` (head kept) or its model type."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_encoder_decoder", False):
        return "AutoModelForSeq2SeqLM", ModelKind.OTHER
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    for arch in getattr(config, "architectures", None) or ():
        # Multimodal LMs such as Gemma 3 are registered as causal LMs under a ...ForConditionalGeneration name.
        if arch in causal_classes:
            return "AutoModelForCausalLM", ModelKind.CAUSAL_LM
        for suffix, auto_name, kind in _HEADS:
            if arch.endswith(suffix):
                return auto_name, kind
    # A bare backbone ("LlamaModel") or no architectures: a decoder-only family gets its LM head back.
    model_type = getattr(config, "model_type", None)
    if (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    ):
        return "AutoModelForCausalLM", ModelKind.CAUSAL_LM
    return "AutoModel", ModelKind.ENCODER


def model_kind(model: Any) -> ModelKind:
    """The kind of a model: "causal-lm" (causal LM head), "encoder" (per-token hidden states) or "other".

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> model_kind(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                                 intermediate_size=37))) == ModelKind.ENCODER
        True
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return ModelKind.OTHER
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = type(model).__name__
    if name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()) or name.endswith(
        ("ForCausalLM", "LMHeadModel")
    ):
        return ModelKind.CAUSAL_LM
    return ModelKind.ENCODER


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto" into cuda when available (else cpu); check an explicit device.

    Example:
        >>> str(resolve_device("cpu"))
        'cpu'
    """
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PruneError(f"unknown device {device!r}; pass auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PruneError(f"device {device!r} asked for but CUDA is not available; pass --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PruneError(f"device {device!r} asked for but MPS is not available; pass --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Turn "auto" into float32 on CPU, bfloat16 on CUDA when supported (else float32); or parse a name.

    Example:
        >>> import torch
        >>> resolve_dtype("bf16", torch.device("cpu"))
        torch.bfloat16
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if str(dtype).lower() not in _DTYPES:
        raise PruneError(f"unknown dtype {dtype!r}; pass auto, float32, bfloat16 or float16")
    return getattr(torch, _DTYPES[str(dtype).lower()])


def clear_gguf_state(model: Any) -> None:
    """Forget that a model was loaded from GGUF (its weights are already dequantized), so it saves.

    Example:
        >>> clear_gguf_state(object())  # no-op on anything without quantizer state
    """
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if getattr(model, "quantization_method", None) is not None:
        model.quantization_method = None
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")


def _head_missing(model: Any, missing_keys: Any) -> bool:
    """True when weights outside the backbone (the task or LM head) were absent from the checkpoint."""
    prefix = getattr(model, "base_model_prefix", "")
    return any(not prefix or not key.startswith(prefix + ".") for key in missing_keys)


try:
    from safetensors import SafetensorError as _SafetensorError
except ImportError:  # pragma: no cover - safetensors comes with transformers

    class _SafetensorError(Exception):  # type: ignore[no-redef]
        """Stand-in: nothing raises it."""


def _load_error(source: ModelSource, exc: Exception) -> ModelNotFoundError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (_SafetensorError, struct.error)):
        return ModelNotFoundError(
            f"cannot load {source.spec}: a weights file is truncated or corrupt ({first}); copy or download "
            "it again"
        )
    if isinstance(exc, ImportError):
        return ModelNotFoundError(
            f"cannot load {source.spec}: {first}; install the missing package (pip install 'prune-llm[gguf]' "
            "for .gguf files)"
        )
    if "trust_remote_code" in str(exc):
        return ModelNotFoundError(
            f"{source.spec} needs its own modelling code (shipped with the checkpoint) to load; pass "
            "--trust-remote-code (trust_remote_code=True in Python) if you trust that code"
        )
    if source.kind != "hub":
        return ModelNotFoundError(
            f"cannot load {source.spec} from {source.location} ({first}); check the path"
        )
    if _offline():
        fix = (
            f"{ASSETS_FIX} for the offline copy"
            if source.alias and _aliases()[source.alias].get("offline")
            else ""
        )
        fix = fix or "use a local folder or an alias with an offline copy"
        from prune.network import offline_variable

        switch = f"set {offline_variable() or 'HF_HUB_OFFLINE'}=0 or "
        return ModelNotFoundError(
            f"cannot load {source.location} from the Hub: you are offline; {switch}{fix}"
        )
    return ModelNotFoundError(
        f"cannot load {source.location} from the Hub ({first}); check the id, run `hf auth login` for gated "
        f"models, or pass a local folder. {_suggest(source.spec)}".strip()
    )


def load_model(
    spec: str | ModelSource,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    device_map: str | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a model and its tokenizer, in eval mode, on `device`, in `dtype`.

    Args:
        spec: alias, local folder, .gguf file, Hub id, or a resolved `ModelSource`.
        device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
        dtype: "auto" (float32 on CPU, bfloat16 on CUDA), "float32", "bfloat16", "float16" or a torch dtype.
        trust_remote_code: allow custom modelling code from the checkpoint.
        device_map: spread a model too big for one device over all of them ("auto", "balanced",
            "sequential"; needs accelerate and a GPU); overrides `device`. The collector moves the hidden
            states to one device for its sums, so statistics work the same.
        progress: show transformers' weight-loading progress bar.

    Raises:
        ModelNotFoundError: the model cannot be resolved or loaded (with the fix in the message).

    Example:
        >>> loaded = load_model("minilm-l6", device="cpu")  # doctest: +SKIP
        >>> loaded.kind, type(loaded.model).__name__  # doctest: +SKIP
        ('encoder', 'BertModel')
    """
    import transformers

    source = spec if isinstance(spec, ModelSource) else resolve_model_source(spec)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise PruneError(
            f"unknown device map {device_map!r}; choose one of: {', '.join(DEVICE_MAPS)} (or leave it unset)"
        )
    if device_map is None:
        # Big models go straight to the accelerator instead of through CPU memory first.
        device_map = None if dev.type == "cpu" else str(dev)
    load_kwargs = {"dtype": torch_dtype, "device_map": device_map, **kwargs}
    model = None
    bar_was_on = transformers.utils.logging.is_progress_bar_enabled()
    if not progress:
        transformers.utils.logging.disable_progress_bar()
    try:
        if source.gguf_file:
            # Almost every GGUF checkpoint is a decoder LM; trying that first skips one full parse of the
            # file (the GGUF reader is the slow part: seconds per parse). Others fall through to the config.
            try:
                model = transformers.AutoModelForCausalLM.from_pretrained(source.location, **load_kwargs)
            except ValueError:
                model = None
        if model is None:
            config = transformers.AutoConfig.from_pretrained(source.location, **kwargs)
            auto_cls = getattr(transformers, _auto_class(config)[0])
            model, info = auto_cls.from_pretrained(
                source.location, config=config, output_loading_info=True, **load_kwargs
            )
            from prune.checkpoint import check_blocks_loaded

            check_blocks_loaded(model, info.get("missing_keys", ()), source.spec)
            if auto_cls is not transformers.AutoModel and _head_missing(model, info.get("missing_keys", ())):
                # Sentence-transformers checkpoints declare ...ForMaskedLM but ship no head; a random head
                # would make head-based scores meaningless, so the backbone is loaded instead.
                logger.warning(
                    "%s has no weights for the head of %s; loading the backbone (AutoModel)",
                    source.spec,
                    type(model).__name__,
                )
                del model
                model = transformers.AutoModel.from_pretrained(source.location, config=config, **load_kwargs)
    except (OSError, ValueError, KeyError, ImportError, struct.error, _SafetensorError) as exc:
        # struct: truncated GGUF; SafetensorError: truncated or corrupt .safetensors
        raise _load_error(source, exc) from exc
    finally:
        if bar_was_on:
            transformers.utils.logging.enable_progress_bar()
    if source.gguf_file:
        clear_gguf_state(model)
    if device_map is None:
        model.to(dev)
    model.eval()
    from prune.checkpoint import block_path
    from prune.finite import check_finite_weights

    check_finite_weights(model, block_path=block_path(model), name=source.spec)
    tokenizer, problem = _load_tokenizer(source, kwargs)
    return LoadedModel(
        model=model, tokenizer=tokenizer, source=source, kind=model_kind(model), tokenizer_problem=problem
    )


def _load_tokenizer(
    source: ModelSource, kwargs: dict[str, Any]
) -> tuple[PreTrainedTokenizerBase | None, str | None]:
    """The tokenizer, or None and the reason (a model without one still works with the caller's batches)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        if source.kind == "hub" and not _offline():
            raise _load_error(source, exc) from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"loading it failed ({first})"
    from prune.checkpoint import tokenizer_problem

    problem = tokenizer_problem(tokenizer)
    if problem is not None:
        logger.warning("ignoring the tokenizer of %s: %s", source.spec, problem)
        return None, problem
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs a pad token; masks hide it
    return tokenizer, None
