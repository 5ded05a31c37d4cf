"""Output folders: never overwrite without --force, write atomically, save GGUF-loaded models."""

from __future__ import annotations

import pytest
import torch

from prune.errors import OutputExistsError
from prune.output import atomic_output_dir, check_output_dir, save_model


def _siblings(path):
    """Everything next to `path` except `path` itself (temporary or aside folders would show up here)."""
    return sorted(p.name for p in path.parent.iterdir() if p != path)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=50,
    )
    return LlamaForCausalLM(config).eval()


def test_check_output_dir_accepts_new_and_empty(tmp_path):
    assert check_output_dir(tmp_path / "new", force=False) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", force=False) == tmp_path / "empty"


def test_check_output_dir_refuses_non_empty_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match=r"exists; pass --force to overwrite or choose another --out"):
        check_output_dir(out, force=False)
    assert check_output_dir(out, force=True) == out


def test_check_output_dir_refuses_a_file_even_with_force(tmp_path):
    out = tmp_path / "file"
    out.write_text("x")
    with pytest.raises(OutputExistsError, match="is a file; choose another --out"):
        check_output_dir(out, force=True)


def test_atomic_writes_new_folder_and_leaves_nothing_else(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out, force=False) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        assert not out.exists()  # nothing visible under the final name until the work is done
        (tmp / "model.txt").write_text("new")
    assert (out / "model.txt").read_text() == "new"
    assert _siblings(out) == []


def test_atomic_refuses_existing_before_the_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    ran = False
    with pytest.raises(OutputExistsError), atomic_output_dir(out, force=False):
        ran = True
    assert not ran
    assert (out / "keep.txt").read_text() == "old"
    assert _siblings(out) == []


def test_atomic_force_replaces_the_old_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (out / "old.txt").exists()  # the old folder stays until the new one is complete
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert _siblings(out) == []


def test_crash_inside_keeps_the_old_folder_and_removes_the_temp(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_output_dir(out, force=True) as tmp:
        (tmp / "half.bin").write_bytes(b"\0" * 10)
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert (out / "old.txt").read_text() == "old"
    assert _siblings(out) == []


def test_crash_inside_without_old_folder_leaves_nothing(tmp_path):
    out = tmp_path / "sub" / "out"
    with pytest.raises(KeyboardInterrupt), atomic_output_dir(out, force=False) as tmp:
        (tmp / "half.bin").write_bytes(b"\0")
        raise KeyboardInterrupt
    assert not out.exists()
    assert _siblings(out) == []


def test_folder_written_by_someone_else_meanwhile_is_not_overwritten(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputExistsError), atomic_output_dir(out, force=False) as tmp:
        (tmp / "new.txt").write_text("new")
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    assert _siblings(out) == []


def test_save_model_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _tiny_llama()
    save_model(model, None, tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reloaded(ids).logits, rtol=0, atol=0)


def test_save_model_with_gguf_state_saves_and_restores_it(tmp_path):
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer
    from transformers.utils.quantization_config import GgufConfig, QuantizationMethod

    model = _tiny_llama()
    # The state transformers leaves on a model loaded with gguf_file= (weights already dequantized).
    qconfig = GgufConfig()
    quantizer = GgufHfQuantizer(qconfig)
    model.hf_quantizer, model.config.quantization_config = quantizer, qconfig
    model.is_quantized, model.quantization_method = True, QuantizationMethod.GGUF
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "plain")  # why save_model has to do something
    save_model(model, None, tmp_path / "saved")
    assert "quantization_config" not in (tmp_path / "saved" / "config.json").read_text()
    assert model.hf_quantizer is quantizer and model.config.quantization_config is qconfig
    assert model.is_quantized is True and model.quantization_method == QuantizationMethod.GGUF
