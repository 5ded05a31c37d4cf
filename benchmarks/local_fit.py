"""What a gradient-based, block-local fit of the kept gate/up/down weights would add to the squeeze.

A ceiling for issue #11's target, not a feature: the squeeze's compensation is linear in the kept
neurons' activations and folded into the down projection, in closed form (no training). The only other
place where a stock checkpoint can compensate is the kept neurons' gate and up rows, in which the
activations are not linear. This script measures what using them would buy, beyond the training-free
scope: squeeze with the defaults (`prune.width.squeeze_model`), then fit each block's squeezed MLP (the
kept gate, up and down weights) to the dense MLP's output by Adam. The fit is block by block, on the dense
model's MLP inputs over the calibration tokens: local distillation, which is training of each MLP. The
kept weights are those of the checkpoint with the least output error on the held-back batches (every 5th,
`prune.width.ridge.hold_back_split`). Then it evaluates on the held-out text.

    PYTHONPATH=. python benchmarks/local_fit.py smollm2-135m --keep 0.75 --calib-samples 128 --eval-samples 32

Prints per block the held-back output error (relative, ``E||y - y'||^2 / E||y||^2``) before and after the
fit, and the held-out perplexity (or fidelity) of the dense, squeezed and fitted models; writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks._common import Results, held_out_quality, load_protocol, quality_keys


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--keep", type=float, default=0.75)
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--eval-samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200, help="Adam steps per block")
    parser.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate")
    parser.add_argument("--batch-tokens", type=int, default=1024, help="tokens per Adam step")
    parser.add_argument("--checks", type=int, default=8, help="held-back checks per block (best one kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    import torch

    from prune.width import squeeze_model
    from prune.width.ridge import hold_back_split

    torch.manual_seed(args.seed)
    setup = load_protocol(args.model, calib_samples=args.calib_samples, eval_samples=args.eval_samples)
    model, anatomy = setup.model, setup.anatomy
    mlp = anatomy.require_mlp("the local fit")
    keys = quality_keys(setup.kind)
    out = args.json_out or f"benchmarks/results/local_fit_{args.model.replace('/', '_')}.json"
    results = Results(out, {"model": args.model, "protocol": setup.protocol, "settings": vars(args)})

    results.add("dense", {"method": "(dense)", **held_out_quality(setup, model)})
    start = time.perf_counter()
    squeezed = squeeze_model(model, setup.calib, keep=args.keep, progress=False)
    results.add(
        "squeeze",
        {
            "method": "squeeze",
            "keep": args.keep,
            "squeeze_s": time.perf_counter() - start,
            **held_out_quality(setup, squeezed.model),
        },
    )
    print(f"squeeze: {results.data['rows'][-1]}", flush=True)

    fit_batches, held_batches = hold_back_split(setup.calib)
    dense_blocks, squeezed_blocks = anatomy.blocks(model), anatomy.blocks(squeezed.model)
    inputs_fit = _mlp_inputs(model, fit_batches, [mlp.parts(b) for b in dense_blocks])
    inputs_held = _mlp_inputs(model, held_batches, [mlp.parts(b) for b in dense_blocks])
    blocks, start = [], time.perf_counter()
    for index, (dense_block, block) in enumerate(zip(dense_blocks, squeezed_blocks, strict=True)):
        dense_parts, parts = mlp.parts(dense_block), mlp.parts(block)
        x_fit, x_held = inputs_fit[index], inputs_held[index]
        with torch.no_grad():
            y_fit, y_held = _mlp(dense_parts, x_fit), _mlp(dense_parts, x_held)
        before, after = _fit_block(parts, x_fit, y_fit, x_held, y_held, args)
        blocks.append({"block": index, "held_back_error_before": before, "held_back_error_after": after})
        print(f"block {index}: held-back output error {before:.4f} -> {after:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        inputs_fit[index] = inputs_held[index] = None  # free the block's inputs
    fit_s = time.perf_counter() - start
    for parameter in squeezed.model.parameters():
        parameter.requires_grad_(False)
    row = {"method": "squeeze + local fit", "keep": args.keep, "fit_s": fit_s, "blocks": blocks}
    results.add("squeeze+local", {**row, **held_out_quality(setup, squeezed.model)})
    mean = [
        sum(b[k] for b in blocks) / len(blocks) for k in ("held_back_error_before", "held_back_error_after")
    ]
    results.save(mean_held_back_error={"before": mean[0], "after": mean[1]})
    for entry in results.data["rows"]:
        print(entry["method"], {k: entry[k] for k in keys}, file=sys.stdout)
    print(f"mean held-back output error {mean[0]:.4f} -> {mean[1]:.4f}; fit {fit_s:.0f} s; {out}")


def _mlp(parts, x):
    """The MLP of one block from its parts: ``down(act(gate x) * up x)`` or ``down(act(up x))``."""
    if parts.act is None:
        raise SystemExit(
            "the family file names no MLP activation module (mlp.act); the fit cannot run the MLP"
        )
    if parts.gate_up is not None:
        gate, up = parts.gate_up(x).chunk(2, dim=-1)
        hidden = parts.act(gate) * up
    elif parts.gate is not None:
        hidden = parts.act(parts.gate(x)) * parts.up(x)
    else:
        hidden = parts.act(parts.up(x))
    return parts.down(hidden)


def _mlp_inputs(model, batches, parts) -> list:
    """Every block's MLP input on the valid tokens of `batches`: float32 [tokens, d] per block."""
    import torch

    captured: list[list] = [[] for _ in parts]
    mask: list = []

    def hook(index):
        def capture(module, args):
            captured[index].append(args[0].reshape(-1, args[0].shape[-1])[mask[0]].detach().float())

        return capture

    handles = [p.inputs[0].register_forward_pre_hook(hook(i)) for i, p in enumerate(parts)]
    try:
        with torch.no_grad():
            for batch in batches:
                mask[:] = [batch["attention_mask"].reshape(-1).bool()]
                model(**batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(chunks) for chunks in captured]


def _fit_block(parts, x_fit, y_fit, x_held, y_held, args) -> tuple[float, float]:
    """Adam on the block's kept weights towards the dense output; returns the held-back error before/after."""
    import torch

    modules = [*parts.inputs, parts.down]
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    scale_fit = (y_fit**2).sum(-1).mean()
    scale_held = (y_held**2).sum(-1).mean()

    def held_error() -> float:
        with torch.no_grad():
            return float(((_mlp(parts, x_held) - y_held) ** 2).sum(-1).mean() / scale_held)

    before = held_error()
    best = (before, [p.detach().clone() for p in params])
    optimizer = torch.optim.Adam(params, lr=args.lr)
    every = max(args.steps // max(args.checks, 1), 1)
    for step in range(args.steps):
        rows = torch.randint(x_fit.shape[0], (args.batch_tokens,))
        loss = ((_mlp(parts, x_fit[rows]) - y_fit[rows]) ** 2).sum(-1).mean() / scale_fit
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % every == 0:
            error = held_error()
            if error < best[0]:
                best = (error, [p.detach().clone() for p in params])
    with torch.no_grad():
        for p, kept in zip(params, best[1], strict=True):
            p.copy_(kept)
            p.requires_grad_(False)
    return before, best[0]


if __name__ == "__main__":
    main()
