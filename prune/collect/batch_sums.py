"""One batch's share of the site sums (`prune.collect.capture.collect_site_sums`), taken during its forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from prune.errors import AnatomyError

if TYPE_CHECKING:
    from prune.collect.capture import SiteSum


def site_rows(value: Tensor, mask: Tensor, name: str) -> Tensor:
    """The valid tokens of a captured [B, T, d] (or flattened [B*T, d]) tensor, float32 [n, d]."""
    if value.dim() == 3 and tuple(value.shape[:2]) == tuple(mask.shape):
        return value[mask.to(value.device)].float()
    if value.dim() == 2 and value.shape[0] == mask.numel():
        return value[mask.to(value.device).flatten()].float()
    raise AnatomyError(
        f"capture site {name!r} has shape {tuple(value.shape)}, which does not line up with the batch's "
        f"{tuple(mask.shape)} tokens; capture a module that keeps one row per token"
    )


class _BatchSums:
    """Adds one batch's increment of every sum to the float64 `totals` as soon as its sites are captured.

    Called from the capture hooks during the forward pass: each sum is computed once all its sites are
    in, added at once, and each site's tensor and rows are freed after the last sum that reads them. So
    only the sites a sum still waits for are held, not every site of the batch: for the FFN statistics
    (one site per block, read by its own Gram and column sum) one block's activations at a time. Holding
    every site's activations, rows and increments until the end of the forward pass, as this once did,
    took the FFN statistics of SmolLM2 from 1205 to 1912 MiB above the process between one and two
    batches (benchmarks/README.md).
    """

    def __init__(
        self, totals: dict[str, Tensor], sums: Sequence[SiteSum], captured: dict[str, Tensor], mask: Tensor
    ) -> None:
        self.totals, self.captured, self.mask = totals, captured, mask
        self.todo = list(sums)
        self.readers: dict[str, int] = {}
        for entry in sums:
            for site in entry.sites:
                self.readers[site] = self.readers.get(site, 0) + 1
        self.rows: dict[str, Tensor] = {}

    def ready(self, _name: str | None = None) -> None:
        """Compute every sum whose sites are all captured (`_name`: the site just captured)."""
        have = set(self.captured) | set(self.rows)
        done = [entry for entry in self.todo if all(site in have for site in entry.sites)]
        if not done:
            return
        # the float64 totals want float32 products, not the autocast dtype of the forward pass
        with torch.autocast(self.mask.device.type, enabled=False):
            for entry in done:
                for site in entry.sites:
                    if site not in self.rows:
                        self.rows[site] = site_rows(self.captured.pop(site), self.mask, site)
                inc = entry.update(*(self.rows[site] for site in entry.sites)).detach().double().cpu()
                if entry.name in self.totals:
                    self.totals[entry.name].add_(inc)
                else:
                    self.totals[entry.name] = inc
                del inc
                self.todo.remove(entry)
                for site in entry.sites:
                    self.readers[site] -= 1
                    if self.readers[site] == 0:
                        self.rows.pop(site, None)


def _token_shape(batch: Any) -> tuple[int, ...] | None:
    """[B, T] of a batch, read off its mask or ids (None when it has neither)."""
    if isinstance(batch, Tensor):
        return tuple(batch.shape[:2]) if batch.dim() >= 2 else None
    for key in ("attention_mask", "input_ids", "inputs_embeds"):
        value = batch.get(key)
        if isinstance(value, Tensor) and value.dim() >= 2:
            return tuple(value.shape[:2])
    return None


__all__ = ["site_rows"]
