"""A cut at block 0 repaired by folding the linear map into the input embeddings, on a real model.

SmolLM2-135M ties its embeddings to the head, so the fold does not apply to it as shipped; here its head is
untied (a copy of the embeddings) to stand in for the untied Llama/Mistral/Qwen checkpoints, block 0 is cut,
and the plain cut is compared with `linear` (folded into the embedding matrix). Perplexity on the run's
held-back calibration sequences (drawn after the calibration ones, never fitted on).

    PYTHONPATH=. python benchmarks/block0_fold.py
"""

import math

import torch
from torch import nn

from prune.options import PruneOptions
from prune.repair import repair_cut
from prune.stages import RunContext, calibrate, check, load
from prune.surgery import remove_blocks

torch.manual_seed(0)
opts = PruneOptions(model="smollm2-135m", target="drop-1", calib_samples=64, eval="none")
ctx = calibrate(load(check(RunContext(options=opts, progress=False))))
model = ctx.original
model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
model.config.tie_word_embeddings = False
held = ctx.guard_batches


def ppl(m):
    total, n = 0.0, 0
    with torch.no_grad():
        for b in held:
            logits = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), b["input_ids"][:, 1:].flatten(), reduction="sum"
            )
            total += float(loss)
            n += b["input_ids"][:, 1:].numel()
    return math.exp(total / n)


print(
    "held-back sequences",
    sum(b["input_ids"].shape[0] for b in held),
    "calibration",
    sum(b["input_ids"].shape[0] for b in ctx.calib_batches),
)
print("dense", round(ppl(model), 2))
plain = remove_blocks(model, [0])
print("cut block 0, plain", round(ppl(plain), 2))
rep = remove_blocks(model, [0])
r = repair_cut(model, rep, [0], ctx.calib_batches, method="linear", progress=False)
print(
    "cut block 0, linear into embeddings",
    round(ppl(rep), 2),
    r.spans[0].map,
    r.spans[0].residual_before,
    r.spans[0].residual_after,
)
