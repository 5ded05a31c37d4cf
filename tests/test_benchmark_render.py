"""benchmarks/render.py: the README's depth tables name the pipeline's own rows as our default; and the
benchmarks' one progress line per measured row (`_common.result_line`)."""

from __future__ import annotations

from benchmarks.render import depth_tables, verdict


def _row(method, drop, repair, value, order="sequential", **extra):
    return {"key": f"{drop}|{method}|{repair}|{order}|0", "method": method, "drop": drop, "repair": repair,
            "order": order, "seed": 0, "blocks": [1, 2][:drop], "perplexity": value, **extra}  # fmt: skip


def _data(rows):
    return {
        "kind": "causal-lm",
        "num_blocks": 6,
        "protocol": {"default": {"strategy": "span", "repair": "linear"}},
        "rows": [{"key": "dense", "method": "dense", "drop": 0, "blocks": [], "perplexity": 10.0}, *rows],
    }


def test_the_pipeline_rows_are_our_default_and_the_verdict_compares_with_them():
    options = {"strategy": "span", "repair": "linear", "refit": "auto"}
    data = _data(
        [
            _row("default", 2, "linear", 12.0, order="default", options=options),
            _row("span", 2, "linear", 13.0),
            _row("topk", 2, "linear", 11.5),
        ]
    )
    text = depth_tables(data)
    line = next(line for line in text.splitlines() if line.startswith("| **our default**"))
    assert "refit auto" in line and "12.00" in line
    assert "the default's plan and repair without the refit" in text
    said = verdict(data)
    assert "our default (the pipeline) 12.00 is beaten by topk+linear 11.50" in said
    assert "span+linear 13.00" not in said  # worse than ours: not listed


def test_without_pipeline_rows_the_defaults_strategy_and_repair_stand_for_it():
    data = _data([_row("span", 2, "linear", 12.0), _row("topk", 2, "linear", 13.0)])
    assert "with linear: **our default**" in depth_tables(data)
    assert "our default (span + linear) 12.00 no other row is better" in verdict(data)


def test_one_progress_line_for_depth_and_width_rows():
    from benchmarks._common import result_line

    depth = _row("span", 6, "linear", 52.191, repair_s=10.04, eval_s=2.0, plan_s=None)
    assert result_line(depth) == (
        "drop 6 | span (seed 0) | [1, 2] | linear sequential | perplexity 52.19 | repair 10.0 s, eval 2.0 s"
    )
    failed = {**depth, "error": "no kept block before the span"}
    assert (
        result_line(failed)
        == "drop 6 | span (seed 0) | [1, 2] | linear sequential: no kept block before the span"
    )
    width = {"method": "squeeze", "keep": 0.75, "drop": 0, "cosine_mean": 0.97512, "cosine_min": 0.9,
             "parameters": 113274432, "latency_ms": 3.04, "squeeze_s": 1.26}  # fmt: skip
    assert result_line(width) == (
        "drop 0 | squeeze keep 0.75 | cosine_mean 0.9751, cosine_min 0.9 | params 113,274,432 | "
        "latency 3.0 ms | squeeze 1.3 s"
    )


def _width_data(**extra):
    def row(method, keep, value, **more):
        return {"key": f"width|{method}|{keep}", "method": method, "keep": keep, "drop": 0, "perplexity": value,
                "parameters": 100e6 * keep, "latency_ms": 10.0, "squeeze_s": 1.0, "mean_output_error": 0.04,
                **more}  # fmt: skip

    dense = {"key": "dense", "method": "dense", "keep": 1.0, "drop": 0, "perplexity": 10.0,
             "parameters": 130e6, "latency_ms": 12.0}  # fmt: skip
    return {
        "kind": "causal-lm",
        "rows": [
            dense,
            row("squeeze", 0.9, 11.0, **extra),
            row("squeeze", 0.75, 12.5, **extra),
            row(
                "wanda", 0.75, 13.0, **({"mean_held_back_error": None, "ridges": [1e-3] * 3} if extra else {})
            ),
        ],
    }


def test_width_tables_show_the_held_back_error_and_the_ridges_when_recorded():
    from benchmarks.render import width_tables

    text = width_tables(_width_data(mean_held_back_error=0.055, ridges=[0.01, 0.1, 0.01]))
    assert "| squeeze | 0.0400 / 0.0550 | 0.0400 / 0.0550 | 0.01 x2, 0.1 x1 |" in text
    assert "| wanda |  | 0.0400 / - |  |" in text  # no fold, no ridge chosen
    assert "| **squeeze** (" in text and "| 12.50 |" in text


def test_width_tables_of_a_file_from_before_the_held_back_error_still_render():
    from benchmarks.render import width_tables

    text = width_tables(_width_data())
    assert "FFN output error" not in text
    assert "12.50" in text and "13.00" in text


def test_ffn_memory_table_counts_the_held_grams_and_labels_the_projection_computed():
    from benchmarks.ffn_memory import projection
    from benchmarks.render import ffn_memory_tables

    row = {
        "label": "after",
        "stage": "squeeze",
        "keep": "0.75",
        "group": 5,
        "passes": 6,
        "grams_per_block": 2,
    }
    row.update(gram_mib_per_group=90.0, peak_mib_above=400.4, seconds=61.0)
    data = {"model": "m", "tokens": 4096, "batch_size": 8, "seq_len": 256, "method": "squeeze"}
    text = ffn_memory_tables(
        {**data, "default_max_bytes": 2 * 1024**3, "projection": projection(), "rows": [row]}
    )
    assert "| after | squeeze | 0.75 | 5 | 6 | 2 | 90 | 180 | 400 | 61 |" in text
    assert "Computed, not measured" in text
    # the 7B default: two blocks a pass with one Gram each, one with the auto ridge's two
    assert "| 1 (analyze, a fixed --ffn-ridge) | 2 | 16 | 1849 |" in text
    assert "| 2 (the auto ridge, the default) | 1 | 32 | 1849 |" in text
