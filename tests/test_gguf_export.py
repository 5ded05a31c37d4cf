"""GGUF export: llama.cpp's converter on pruned folders, checked by reloading with transformers' GGUF loader.

Fast tests use a tiny Llama with a SentencePiece tokenizer trained here (a few hundred pieces, under a
second), so they need no download; the slow ones prune the real SmolLM2 GGUF, export f16 and q8_0, and
run the file in llama.cpp itself when its prebuilt runtime (xllamacpp) is installed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from prune.errors import OutputExistsError, PruneError
from prune.options import PruneOptions

pytest.importorskip("conversion", reason="llama.cpp's converter not installed: pip install 'prune-llm[gguf]'")

from prune.gguf_export import (  # noqa: E402 - after the skip: the module is only usable with the converter
    GGUFExportError,
    check_gguf_export,
    check_outtype,
    default_gguf_path,
    describe_pruning,
    export_gguf,
    supported_families,
)
from tests.tiny_models import TINY_FAMILIES, TINY_SPECS, build_tiny, tiny_config  # noqa: E402

CORPUS_WORDS = (
    "the model keeps its blocks while pruning removes layers that repeat what others already compute "
    "a small network runs fast on every phone and laptop when the weights fit in memory and the cache "
    "stays warm so tokens stream out quickly to people who ask questions about rivers mountains cities"
)
PROMPT = "the model keeps its blocks while pruning"


def _gguf_fields(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("tokenizer.ggml.")
    }


@pytest.fixture(scope="module")
def spm_tokenizer(tmp_path_factory):
    """A real SentencePiece (Llama-style, byte fallback) tokenizer trained on a synthetic corpus."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("spm")
    rng = random.Random(0)
    words = CORPUS_WORDS.split()
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(words, k=12)) for _ in range(2000)), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=320,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
            }
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    texts = folder / "calib.txt"
    texts.write_text("\n".join(" ".join(rng.choices(words, k=40)) for _ in range(32)), encoding="utf-8")
    return tokenizer, texts


def _tiny_llama(vocab_size: int):
    from transformers import LlamaForCausalLM

    config = tiny_config("llama")
    config.vocab_size = vocab_size
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


# --- bad input: a clear error before any work, nothing written ----------------------------------------


@pytest.mark.parametrize("outtype", ["q4_k_m", "Q4_0", "tq1_0", "iq2_xs"])
def test_quantized_outtypes_point_to_llama_quantize(outtype):
    with pytest.raises(GGUFExportError, match="llama-quantize"):
        check_outtype(outtype)


def test_unknown_outtype_lists_the_choices():
    with pytest.raises(GGUFExportError, match="f32, f16, bf16, q8_0"):
        check_outtype("fp64")
    assert check_outtype("BF16") == "bf16"
    with pytest.raises(ValueError, match="gguf"):
        PruneOptions(model="m", target="drop-1", gguf="q4_0")


def test_cli_rejects_an_outtype_the_converter_lacks(capsys):
    from prune.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["export", "somewhere", "--outtype", "q4_0"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_is_supported_or_refused_by_name(family):
    architecture = TINY_SPECS[family].model_class
    expected = {"electra", "mpnet", "opt", "roberta"}  # not in the converter's registry (RoBERTa: as MLM)
    if family in expected:
        with pytest.raises(GGUFExportError, match=f"cannot convert {architecture}"):
            check_gguf_export(architecture, "f16")
    else:
        assert check_gguf_export(architecture, "f16") == "f16"


def test_supported_families_lists_the_llama_family_and_not_opt():
    families = supported_families()
    assert {"llama", "qwen2", "gemma2", "bert"} <= set(families)
    assert "opt" not in families


def test_unsupported_family_fails_before_writing(tmp_path):
    folder = tmp_path / "opt"
    build_tiny("opt").save_pretrained(folder)
    with pytest.raises(GGUFExportError, match="cannot convert OPTForCausalLM"):
        export_gguf(folder, outtype="f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt"]  # no file, no temporary left


def test_existing_target_is_kept_without_force(tmp_path, spm_tokenizer):
    tokenizer, _ = spm_tokenizer
    folder = tmp_path / "tiny"
    _tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    target = tmp_path / "taken.gguf"
    target.write_bytes(b"user data")
    with pytest.raises(OutputExistsError, match="--force"):
        export_gguf(folder, target, outtype="f16")
    assert target.read_bytes() == b"user data"
    export_gguf(folder, target, outtype="f16", force=True)
    assert target.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.gguf", "tiny"]


def test_a_failed_conversion_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "no-tokenizer"
    _tiny_llama(320).save_pretrained(folder)  # weights and config, but no tokenizer files
    with pytest.raises(GGUFExportError, match="tokenizer"):
        export_gguf(folder, tmp_path / "never.gguf", outtype="f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-tokenizer"]


def test_pipeline_checks_gguf_before_loading_the_model(tmp_path):
    out = tmp_path / "pruned"
    default_gguf_path(out, "q8_0").write_bytes(b"keep me")
    options = PruneOptions(model=str(tmp_path / "no-such-model"), target="drop-1", out=str(out), gguf="q8_0")
    from prune.pipeline import run_pruning

    # the model does not exist: only a check made before loading it can answer with this error
    with pytest.raises(OutputExistsError, match="q8_0.gguf exists"):
        run_pruning(options, progress=False)
    with pytest.raises(PruneError, match="--out"):
        run_pruning(PruneOptions(model="x", target="drop-1", gguf="f16"), progress=False)


def test_pipeline_refuses_an_unsupported_family_before_calibration(tmp_path, monkeypatch):
    import prune.collect

    def no_collection(*args, **kwargs):
        raise AssertionError("statistics were collected before the family check")

    monkeypatch.setattr(prune.collect, "collect_stats", no_collection)
    from prune.pipeline import run_pruning

    options = PruneOptions(
        model="tiny-opt", target="drop-1", out=str(tmp_path / "o"), gguf="f16", eval="none"
    )
    with pytest.raises(GGUFExportError, match="OPTForCausalLM"):
        run_pruning(options, model=build_tiny("opt"), tokenizer=None, progress=False)
    assert not (tmp_path / "o").exists()


# --- a tiny Llama end to end: prune, save, export, reload ------------------------------------------------


def test_tiny_llama_prune_export_reload(tmp_path, spm_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prune.pipeline import run_pruning

    tokenizer, calib = spm_tokenizer
    model = _tiny_llama(len(tokenizer))
    options = PruneOptions(
        model="tiny-llama",
        target="4-layers",
        calib=str(calib),
        calib_samples=8,
        seq_len=32,
        eval="none",
        out=str(tmp_path / "tiny-4L"),
        gguf="f32",
    )
    result = run_pruning(options, model=model, tokenizer=tokenizer, progress=False)
    gguf_file = tmp_path / "tiny-4L.f32.gguf"
    assert result.gguf.path == gguf_file and result.report["gguf"]["outtype"] == "f32"
    assert gguf_file.stat().st_size == result.gguf.size_bytes > 0

    fields = _gguf_fields(gguf_file)
    assert fields["llama.block_count"] == 4
    assert fields["general.description"] == describe_pruning(result.report)
    assert "6 -> 4 blocks" in fields["general.description"]
    assert fields["general.name"] == "tiny-llama-pruned-4L"

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_file.name).eval()
    assert reloaded.config.num_hidden_layers == 4 and len(reloaded.model.layers) == 4
    ids = tokenizer([PROMPT], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, result.model(ids).logits, atol=1e-5)
    cached = reloaded.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = reloaded.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    gguf_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf_file.name)
    assert gguf_tokenizer(PROMPT).input_ids == ids[0].tolist()


def test_cli_export_of_a_saved_folder(tmp_path, spm_tokenizer, capsys):
    from prune.cli.main import main

    tokenizer, _ = spm_tokenizer
    folder = tmp_path / "tiny"
    _tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    target = tmp_path / "out" / "tiny.bf16.gguf"
    code = main(["export", str(folder), "--gguf", str(target), "--outtype", "bf16", "--json"])
    assert code == 0
    written = json.loads(capsys.readouterr().out)
    assert written["path"] == str(target) and written["outtype"] == "bf16"
    assert _gguf_fields(target)["general.file_type"] == 32  # llama.cpp's MOSTLY_BF16
    assert "general.description" not in _gguf_fields(target)  # no report, nothing made up
    code = main(["export", str(folder), "--gguf", str(target), "--outtype", "bf16"])
    assert code == 2  # exists: refused with one line, no traceback
    assert "exists" in capsys.readouterr().err


def test_cli_and_options_outtypes_match_the_library():
    import typing

    from prune.cli.export_cmd import OUTTYPE_CHOICES
    from prune.gguf_export import OUTTYPES

    # the CLI and the options keep their own copies (no heavy import for --help); they cannot drift
    assert tuple(OUTTYPES) == OUTTYPE_CHOICES
    literal = typing.get_args(PruneOptions.model_fields["gguf"].annotation)[0]
    assert typing.get_args(literal) == OUTTYPE_CHOICES


# --- the real SmolLM2 GGUF: prune, export f16 and q8_0, reload, run in llama.cpp --------------------------

# Max |logit difference| to the pruned folder (float32) on a held-out sentence, SmolLM2 pruned to 24 blocks:
# measured 0.06 (f16) and 1.5 (q8_0) against logits of magnitude ~30; the bounds leave 3-4x room.
F16_MAX_LOGIT_DIFF = 0.25
Q8_0_MEAN_LOGIT_DIFF = 0.6
HELD_OUT = "The river runs through the old city, and in spring the market fills with people who"


@pytest.fixture(scope="module")
def smollm2_export(tmp_path_factory):
    """SmolLM2 pruned to 24 blocks by a run with --gguf f16, then exported to q8_0 through the CLI."""
    from prune.cli.main import main
    from prune.loading import resolve_model_source
    from prune.pipeline import run_pruning

    source = resolve_model_source("smollm2-135m")
    if source.gguf_file is None:
        pytest.skip("SmolLM2 GGUF package not installed: run `make assets`")
    work = tmp_path_factory.mktemp("smollm2")
    options = PruneOptions(
        model="smollm2-135m",
        target="24-layers",
        calib_samples=16,
        seq_len=64,
        eval="none",
        out=str(work / "smollm2-24L"),
        gguf="f16",
    )
    result = run_pruning(options, progress=False)
    q8 = work / "smollm2-24L.q8_0.gguf"
    assert main(["export", str(result.out_dir), "--gguf", str(q8), "--outtype", "q8_0"]) == 0
    return result, {"f16": result.gguf.path, "q8_0": q8}


@pytest.mark.slow
def test_smollm2_round_trip_through_gguf(smollm2_export):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, files = smollm2_export
    folder = result.out_dir
    pruned = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer([HELD_OUT], return_tensors="pt").input_ids
    with torch.no_grad():
        expected = pruned(ids).logits
    sizes = {outtype: path.stat().st_size for outtype, path in files.items()}
    assert sizes["q8_0"] < 0.6 * sizes["f16"]  # 8.5 bits per weight against 16

    for outtype, path in files.items():
        fields = _gguf_fields(path)
        assert fields["llama.block_count"] == 24
        assert "30 -> 24 blocks" in fields["general.description"]
        assert fields["tokenizer.chat_template"] == tokenizer.chat_template
        reloaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        reloaded.eval()
        assert reloaded.config.num_hidden_layers == 24 and len(reloaded.model.layers) == 24
        with torch.no_grad():
            diff = (reloaded(ids).logits - expected).abs()
        if outtype == "f16":
            assert diff.max() < F16_MAX_LOGIT_DIFF, diff.max()
        else:
            assert diff.mean() < Q8_0_MEAN_LOGIT_DIFF, diff.mean()
        cached = reloaded.generate(ids, max_new_tokens=10, do_sample=False, use_cache=True)
        uncached = reloaded.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False)
        assert torch.equal(cached, uncached)
        gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        assert gguf_tokenizer(HELD_OUT).input_ids == ids[0].tolist()
        del reloaded


@pytest.mark.slow
def test_smollm2_gguf_generates_in_llama_cpp(smollm2_export):
    xllamacpp = pytest.importorskip(
        "xllamacpp", reason="no llama.cpp runtime: pip install 'prune-llm[llamacpp]'"
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, files = smollm2_export
    tokenizer = AutoTokenizer.from_pretrained(result.out_dir)
    pruned = AutoModelForCausalLM.from_pretrained(result.out_dir, dtype=torch.float32).eval()
    ids = tokenizer([HELD_OUT], return_tensors="pt").input_ids
    greedy = pruned.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1] :]

    texts = {}
    for outtype, path in files.items():
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = 256
        params.n_parallel = 1
        params.cpuparams.n_threads = 2
        server = xllamacpp.Server(params)
        answer = server.handle_completions(
            {"prompt": HELD_OUT, "max_tokens": 8, "temperature": 0.0, "top_k": 1}
        )
        del server
        assert answer["usage"]["prompt_tokens"] == ids.shape[1]  # llama.cpp tokenizes as the folder does
        assert answer["usage"]["completion_tokens"] == 8
        texts[outtype] = answer["choices"][0]["text"]
    # llama.cpp's f16 greedy continuation starts as transformers' does on the pruned folder (a few tokens:
    # later ones may flip where two logits are within f16 rounding of each other)
    assert texts["f16"].startswith(tokenizer.decode(greedy[:3])), (texts, tokenizer.decode(greedy))
    assert texts["q8_0"].strip()
