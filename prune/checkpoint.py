"""Is a loaded checkpoint what it claims? Every block in the weights file, a tokenizer that can spell text.

transformers accepts both mistakes with a warning at most: blocks missing from the weights are filled
with random numbers, and a folder without tokenizer files gets an empty tokenizer that turns every word
into the unknown token. Either would give a run that exits 0 with meaningless scores (and, for the
tokenizer, saves it with the pruned model), so `prune.loading.load_model` checks both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prune.errors import ModelNotFoundError


def check_blocks_loaded(model: Any, missing_keys: Iterable[str], spec: str) -> None:
    """Refuse a checkpoint whose blocks were not all in the weights file (transformers would fill them with
    random values and say so only in a warning: every score and metric would then be noise)."""
    path = block_path(model)
    if not path:
        return
    missing = sorted(k for k in missing_keys if k.startswith(path + "."))
    if missing:
        indices = (key[len(path) + 1 :].split(".", 1)[0] for key in missing)
        blocks = sorted({int(index) for index in indices if index.isdigit()})
        raise ModelNotFoundError(
            f"{spec}: the weights hold no values for {len(missing)} tensors of blocks {blocks} (e.g. "
            f"{missing[0]}), so transformers would fill them with random numbers; config.json and the weights "
            "do not match (a config edited to more layers, or weights from another model): fix config.json or "
            "use the checkpoint's own config"
        )


def block_path(model: Any) -> str | None:
    """The block list's path, to name the block of a bad weight (None when the blocks cannot be found)."""
    from prune.anatomy import get_anatomy
    from prune.errors import AnatomyError

    try:
        return get_anatomy(model).block_path
    except AnatomyError:
        return None


def tokenizer_problem(tokenizer: Any) -> str | None:
    """Why `tokenizer` cannot represent text, or None when it can.

    transformers builds an empty tokenizer (its few special tokens only) for a folder with a config but
    no tokenizer files; it turns every word into the unknown token, so statistics, perplexity and the saved
    model would all be built on ``[UNK]``. (Text that a real tokenizer spells mostly as unknown tokens is
    caught where the text is tokenized: ``prune.data.make_batches``.)

    Example:
        >>> tokenizer_problem(None)
        'no tokenizer'
    """
    if tokenizer is None:
        return "no tokenizer"
    try:
        size = len(tokenizer)
    except TypeError:
        return None  # not a Hugging Face tokenizer: the caller knows what it passed
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    if size <= len(special):
        return (
            f"its vocabulary has {size} tokens, all special ones ({', '.join(map(str, tokenizer.all_special_tokens))}), "
            "so every word becomes the unknown token (transformers builds such an empty tokenizer when the "
            "folder has no tokenizer files)"
        )
    return None
