"""benchmarks/width_latency.py: the shapes it builds are the squeezed / cut shapes asked for, the interleaved
timing gives every shape one pass per round and ratios to the dense pass, and its table renders."""

from __future__ import annotations

import argparse
import doctest

import pytest

from tests.tiny_models import build_tiny


def test_shapes_from_keeps_depths_and_explicit_specs():
    from benchmarks.width_latency import Shape, parse_shapes

    shapes = parse_shapes(
        "0.9,0.75", "24", ["layers=27,ffn=1336", "keep=0.75", "layers=24"], layers=30, d_ff=1536
    )
    assert shapes == [
        Shape("dense", 30, 1536),
        Shape("keep 0.9", 30, 1382),  # the squeeze keeps max(1, round(keep * d_ff))
        Shape("keep 0.75", 30, 1152),
        Shape("24 layers", 24, 1536),
        Shape("27 layers, ffn 1336", 27, 1336),
    ]  # keep=0.75 and layers=24 repeat earlier shapes: timed once
    with pytest.raises(SystemExit, match="layers=27,ffn=1336"):
        parse_shapes("", "", ["ffn=10,keep=0.5"], layers=30, d_ff=1536)
    with pytest.raises(SystemExit, match="must be >= 1"):
        parse_shapes("", "0", [], layers=30, d_ff=1536)


def test_doc_examples_of_the_script_run():
    import benchmarks.width_latency as module

    assert doctest.testmod(module, report=False).failed == 0


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_interleaved_run_builds_the_shapes_and_times_each_once_per_round(family):
    from benchmarks.width_latency import build, config_keys, run, table
    from prune.anatomy import get_anatomy

    model = build_tiny(family)
    args = argparse.Namespace(model=family, keeps="0.5", depth="4", shape=["layers=5,ffn=40"], pretrained_dense=True,
                              rounds=2, warmup=1, batch_size=2, seq_len=8)  # fmt: skip
    seen = []
    data = run(args, model, on_round=seen.append)
    assert [d["rounds_done"] for d in seen] == [1, 2] and seen[-1]["rows"] == data["rows"]
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == ["dense", "keep 0.5", "4 layers", "5 layers, ffn 40", "dense (pretrained weights)"]
    assert all(len(r["times_ms"]) == 2 for r in rows.values())
    assert rows["dense"]["ratio_to_dense"] == rows["dense"]["cpu_ratio_to_dense"] == 1.0
    assert all(len(r["cpu_times_ms"]) == 2 and r["cpu_latency_ms"] > 0 for r in rows.values())
    assert rows["dense"]["parameters"] == rows["dense (pretrained weights)"]["parameters"]
    assert rows["keep 0.5"]["parameters"] < rows["dense"]["parameters"]
    assert len(data["load_per_round"]) == 2

    built = build(model, next(s for s in _shapes(rows) if s.name == "5 layers, ffn 40"), config_keys(model))
    anatomy = get_anatomy(built)
    blocks = anatomy.blocks(built)
    assert len(blocks) == 5 and {anatomy.require_mlp("test").intermediate_size(b) for b in blocks} == {40}

    text = table({**data, "load_after": 0.5})
    assert "| 5 layers, ffn 40 | 5 | 40 |" in text and "OMP_NUM_THREADS=" in text


def _shapes(rows):
    from benchmarks.width_latency import Shape

    return [Shape(name, r["layers"], r["intermediate_size"]) for name, r in rows.items()]
