"""Layer metrics by name, and the running sums they are computed from.

Each metric registers itself from its own module and declares the running sums it reads; the
collector (:func:`prune.collect.collect_stats`) accumulates every needed sum once per batch.

Registered metrics (hidden states h_0 = input of block 0, h_{l+1} = output of block l, L blocks):

- ``bi``: [L] block influence, 1 - mean cos(h_l, h_{l+1}) (ShortGPT).
- ``angular``: [L+1, L+1] mean arccos(cos(h_i, h_j)) / pi; cutting blocks l..l+n-1 costs [l, l+n].
- ``cka``: [L+1, L+1] minibatch linear CKA with the unbiased HSIC estimator.
- ``cka_io``: [L] CKA(input, output) of each block.

Example:
    >>> from prune.metrics import METRICS
    >>> METRICS.names()
    ['angular', 'bi', 'cka', 'cka_io']
    >>> METRICS.get("cka_io").sums
    ('hsic', 'hsic_groups')
"""

from __future__ import annotations

from prune.metrics import cka as _cka
from prune.metrics import cosine as _cosine
from prune.metrics.base import METRICS, SUMS, Metric, RunningSum, Samples, sums_for
from prune.metrics.cka import msrs

del _cka, _cosine  # imported for their registrations

__all__ = ["METRICS", "SUMS", "Metric", "RunningSum", "Samples", "msrs", "sums_for"]
