"""How close minibatch CKA comes to the full-batch estimator on the same tokens, by minibatch and window.

RedTest's CKA is the unbiased HSIC estimator (Song et al. 2012) over all calibration tokens at once.
The collector sums it over minibatches instead (memory (L+1) m^2 per minibatch of m tokens). This script
collects the hidden states of the calibration tokens once (the collector's h_0..h_L: block 0's input and
every block's output), computes the full-batch estimator on all of them (float64, in feature space:
O(N d^2) per pair, so N can be large), and compares with:

- per sequence: one minibatch per calibration sequence (the collector before minibatches were drawn
  across sequences);
- ours: the collector's cut (`prune.collect.minibatches.MinibatchStream`): windows of W valid tokens,
  each permuted by the seeded permutation and cut into minibatches of m tokens, for every m and W given.

For each it prints the largest |CKA - full batch| over all pairs of hidden states (worst over --seeds),
CKA(h_0, h_L), MSRS of the block outputs, and the CPU time of the HSIC sums (the minibatch cost alone).
One configuration is also run through `collect_stats` to check the simulation is the collector's sum.

    python benchmarks/cka_minibatch.py minilm-l6 --calib-samples 64 --seq-len 128
    python benchmarks/cka_minibatch.py smollm2-135m --calib-samples 16 --seq-len 256 --sizes 128,256,512
"""

from __future__ import annotations

import argparse
import json
import time


def capture(model, anatomy, batches, skip_tokens: int):
    """[S, N, d] float64 valid hidden states in the collector's reading order, the valid tokens of each
    sequence and of each batch."""
    import torch

    from prune.collect.batches import valid_mask
    from prune.forward import forward_accepts

    extra = {"use_cache": False} if forward_accepts(model, "use_cache") else {}

    blocks = anatomy.blocks(model)
    states: list = []
    handles = [
        blocks[0].register_forward_pre_hook(
            lambda m, a, k: states.append(a[0] if a else k["hidden_states"]), with_kwargs=True
        )
    ]
    for block in blocks:
        handles.append(
            block.register_forward_hook(lambda m, a, o: states.append(o if torch.is_tensor(o) else o[0]))
        )
    rows, lengths, counts = [], [], []
    with torch.no_grad():
        for batch in batches:
            states.clear()
            model(**batch, **extra)
            mask = valid_mask(batch, states[0], None, skip_tokens)
            rows.append(torch.stack([h[mask] for h in states]).double())
            lengths += mask.sum(1).tolist()
            counts.append(int(mask.sum()))
    for handle in handles:
        handle.remove()
    return torch.cat(rows, dim=1), lengths, counts


def full_batch_hsic(x):
    """Unbiased HSIC (Song et al. 2012) of linear kernels on all N samples, every pair, in float64.

    With K = X X^T (diagonal zeroed), n_a = |x_a|^2: tr(K L) = |X^T Y|_F^2 - sum n_a m_a,
    1^T K 1 = |X^T 1|^2 - sum n_a, K 1 = X X^T 1 - n.
    """
    import torch

    s, n, _ = x.shape
    x = x - x.mean(1, keepdim=True)
    norms = (x * x).sum(-1)  # [S, N]
    sums = x.sum(1)  # [S, d]
    totals = (sums * sums).sum(-1) - norms.sum(-1)  # [S]
    rows = torch.einsum("snd,sd->sn", x, sums) - norms  # [S, N]
    out = torch.zeros(s, s, dtype=torch.float64)
    for i in range(s):
        for j in range(i, s):
            trace = (x[i].T @ x[j]).square().sum() - (norms[i] * norms[j]).sum()
            value = trace + totals[i] * totals[j] / ((n - 1) * (n - 2)) - 2 * rows[i] @ rows[j] / (n - 2)
            out[i, j] = out[j, i] = value / (n * (n - 3))
    return out


def cka_of(hsic):
    import torch

    diag = torch.diagonal(hsic)
    return hsic / torch.sqrt(diag[:, None] * diag[None, :])


def summary(cka, full, msrs):
    raw, _ = msrs(cka[1:, 1:])
    return {
        "max_abs_diff": float((cka - full).abs().max()),
        "cka_first_last": float(cka[0, -1]),
        "msrs": raw,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-tokens", type=int, default=0)
    parser.add_argument("--sizes", default="64,128,256,512", help="minibatch sizes m")
    parser.add_argument("--windows", default="1024,4096,16384", help="window sizes W (tokens)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--full",
        choices=["features", "gram"],
        default="features",
        help="full-batch estimator in float64 feature space (O(N d^2) per pair) or as one float32 minibatch "
        "of all N tokens (O(S N^2 d); faster for deep models on few tokens)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from prune.anatomy import get_anatomy
    from prune.collect import collect_stats
    from prune.collect.minibatches import MinibatchStream
    from prune.data import load_texts, make_batches
    from prune.loading import load_model
    from prune.metrics import msrs
    from prune.metrics.cka import hsic_pairs

    loaded = load_model(args.model, device="cpu", dtype="float32", progress=False)
    model, anatomy = loaded.model, get_anatomy(loaded.model)
    batches = make_batches(
        loaded.tokenizer,
        load_texts("default", purpose="calib", seed=0),
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_samples=args.calib_samples,
        packed=loaded.kind == "causal-lm",
    )
    states, lengths, counts = capture(model, anatomy, batches, args.skip_tokens)
    s, n, d = states.shape
    start = time.perf_counter()
    full = cka_of(full_batch_hsic(states) if args.full == "features" else hsic_pairs(states.float()))
    full_s = time.perf_counter() - start
    results = {
        "model": args.model,
        "tokens": n,
        "sequences": len(lengths),
        "hidden_states": s,
        "seq_len": args.seq_len,
        "skip_tokens": args.skip_tokens,
        "full_batch": {**summary(full, full, msrs), "seconds": full_s},
        "rows": [],
    }
    features = states.float()

    def timed_sum(groups):
        acc, begin = torch.zeros(s, s, dtype=torch.float64), time.process_time()
        count = 0
        for group in groups:
            acc += hsic_pairs(group)
            count += 1
        return acc, time.process_time() - begin, count

    ends = torch.tensor(lengths).cumsum(0).tolist()
    per_sequence = (
        features[:, end - length : end] for length, end in zip(lengths, ends, strict=True) if length >= 4
    )
    acc, seconds, count = timed_sum(per_sequence)
    results["rows"].append(
        {"cut": "per sequence", "minibatches": count, "cpu_s": seconds, **summary(cka_of(acc), full, msrs)}
    )

    for size in [int(v) for v in args.sizes.split(",")]:
        for window in [int(v) for v in args.windows.split(",")]:
            if window < size:
                continue
            worst, first = None, None
            for seed in [int(v) for v in args.seeds.split(",")]:
                stream = MinibatchStream(size, window, seed)
                # Feed the tokens batch by batch, as the collector does; each window is summed as it fills.
                sums, offset = [], 0
                record = sums.append
                for count in counts:
                    stream.add(
                        list(features[:, offset : offset + count]),
                        lambda cut, record=record: record(timed_sum(cut)),
                    )
                    offset += count
                stream.flush(lambda cut, record=record: record(timed_sum(cut)))
                acc, seconds, count = (sum(part) for part in zip(*sums, strict=True))
                row = summary(cka_of(acc), full, msrs)
                first = first or {**row, "cpu_s": seconds, "minibatches": count}
                if worst is None or row["max_abs_diff"] > worst["max_abs_diff"]:
                    worst = row
            results["rows"].append(
                {
                    "cut": f"m={size}, W={stream.window}",
                    "minibatches": first["minibatches"],
                    "cpu_s": first["cpu_s"],
                    **first,
                    "max_abs_diff": worst["max_abs_diff"],
                    "gram_mb": s * size * size * 4 / 2**20,
                    "window_mb": s * stream.window * d * 4 / 2**20,
                }
            )

    # The simulation is the collector's own sum: one configuration through collect_stats.
    check = collect_stats(
        model,
        batches,
        anatomy=anatomy,
        metrics=["cka"],
        skip_tokens=args.skip_tokens,
        cka_minibatch=int(args.sizes.split(",")[0]),
        cka_window=int(args.windows.split(",")[0]),
        seed=int(args.seeds.split(",")[0]),
        progress=False,
    )
    first_row = results["rows"][1]
    results["collector_check_msrs"] = (msrs(check.scores()["cka"][1:, 1:])[0], first_row["msrs"])

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{args.model}: {n} tokens in {len(lengths)} sequences (seq_len {args.seq_len}, first {args.skip_tokens} "
        f"left out), {s} hidden states; full batch in {full_s:.1f} s"
    )
    fb = results["full_batch"]
    print(f"full batch: CKA(h_0, h_L) {fb['cka_first_last']:.3f}, MSRS {fb['msrs']:.2f}")
    print("| minibatches | count | max abs diff to full batch | CKA(h_0, h_L) | MSRS | HSIC CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in results["rows"]:
        print(
            f"| {row['cut']} | {row['minibatches']} | {row['max_abs_diff']:.4f} | {row['cka_first_last']:.3f} | "
            f"{row['msrs']:.2f} | {row['cpu_s']:.2f} |"
        )
    print(f"collector check (MSRS collect_stats vs simulation): {results['collector_check_msrs']}")


if __name__ == "__main__":
    main()
