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


def test_force_replaces_only_a_folder_prune_llm_wrote(tmp_path):
    ours = tmp_path / "ours"
    ours.mkdir()
    for name in (
        "prune_report.json",
        "prune_report.md",
        "model.safetensors",
        "config.json",
        "block_scores.png",
    ):
        (ours / name).write_text("x")
    assert check_output_dir(ours, force=True) == ours
    # A user's folder (the README once wrote `--out pruned/`, the parent of earlier outputs) is refused.
    theirs = tmp_path / "theirs"
    (theirs / "photos").mkdir(parents=True)
    (theirs / "thesis.txt").write_text("years of work")
    with pytest.raises(OutputExistsError, match=r"holds photos/, thesis.txt, which prune-llm did not write"):
        check_output_dir(theirs, force=True)
    # Our output with one of the user's files dropped in is theirs too.
    (ours / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        check_output_dir(ours, force=True)
    # Model files without a prune-llm report: someone else's checkpoint.
    (ours / "notes.txt").unlink()
    (ours / "prune_report.json").unlink()
    with pytest.raises(OutputExistsError, match="did not write"):
        check_output_dir(ours, force=True)


def test_force_on_a_users_folder_deletes_nothing(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.txt").write_text("years of work")
    ran = False
    with pytest.raises(OutputExistsError), atomic_output_dir(theirs, force=True):
        ran = True
    assert not ran and (theirs / "thesis.txt").read_text() == "years of work"
    assert _siblings(theirs) == []


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
    (out / "prune_report.json").write_text("old")
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (out / "prune_report.json").exists()  # the old folder stays until the new one is complete
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert _siblings(out) == []


def test_crash_inside_keeps_the_old_folder_and_removes_the_temp(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "prune_report.json").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_output_dir(out, force=True) as tmp:
        (tmp / "half.bin").write_bytes(b"\0" * 10)
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["prune_report.json"]
    assert (out / "prune_report.json").read_text() == "old"
    assert _siblings(out) == []


def test_crash_inside_without_old_folder_leaves_nothing(tmp_path):
    out = tmp_path / "sub" / "out"
    with pytest.raises(KeyboardInterrupt), atomic_output_dir(out, force=False) as tmp:
        (tmp / "half.bin").write_bytes(b"\0")
        raise KeyboardInterrupt
    assert not out.exists()
    assert not out.parent.exists()  # the parent this run created is removed too


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


def test_output_keeps_the_users_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        with atomic_output_dir(out, force=False) as tmp:
            (tmp / "sub").mkdir()
            (tmp / "model.safetensors").write_bytes(b"x")
            os.chmod(tmp / "model.safetensors", 0o600)  # what a private temporary writer leaves
        assert stat.S_IMODE(out.stat().st_mode) == 0o755
        assert stat.S_IMODE((out / "sub").stat().st_mode) == 0o755
        assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_unwritable_parent_is_refused_before_the_work(tmp_path, monkeypatch):
    from prune import output
    from prune.errors import OutputError

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(output.tempfile, "mkdtemp", read_only)  # root ignores permission bits: simulate
    with pytest.raises(OutputError, match=r"not writable \(Read-only file system\); choose another --out"):
        check_output_dir(tmp_path / "new" / "out", force=False)


def test_mount_point_output_is_refused(tmp_path, monkeypatch):
    from prune import output
    from prune.errors import OutputError

    monkeypatch.setattr(output.os.path, "ismount", lambda p: str(p) == str(tmp_path))
    with pytest.raises(OutputError, match="mount point"):
        check_output_dir(tmp_path, force=True)


def test_failure_while_renaming_into_place_removes_what_the_run_created(tmp_path, monkeypatch):
    import os

    from prune import output
    from prune.errors import OutputError

    out = tmp_path / "a" / "b" / "out"
    real_rename = os.rename

    def failing_rename(src, dst):
        if str(dst) == str(out):
            raise OSError(30, "Read-only file system", str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(output.os, "rename", failing_rename)
    with (
        pytest.raises(OutputError, match="Read-only file system"),
        atomic_output_dir(out, force=False) as tmp,
    ):
        (tmp / "model.safetensors").write_bytes(b"x")
    assert not (tmp_path / "a").exists()  # the temporary model and the parents this run made are gone


def test_failure_moving_the_old_folder_aside_keeps_it_and_leaves_nothing(tmp_path, monkeypatch):
    import os

    from prune import output
    from prune.errors import OutputError

    out = tmp_path / "out"
    out.mkdir()
    (out / "prune_report.json").write_text("old")
    real_rename = os.rename

    def failing_rename(src, dst):
        if str(src) == str(out):  # a mount point or a busy folder cannot be renamed
            raise OSError(16, "Device or resource busy", str(src))
        return real_rename(src, dst)

    monkeypatch.setattr(output.os, "rename", failing_rename)
    with pytest.raises(OutputError, match="busy"), atomic_output_dir(out, force=True) as tmp:
        (tmp / "model.safetensors").write_bytes(b"x")
    assert (out / "prune_report.json").read_text() == "old"
    assert _siblings(out) == []  # neither the temporary model nor an .old folder is left
