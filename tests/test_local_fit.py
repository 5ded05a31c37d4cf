"""benchmarks/local_fit.py: its MLP from the anatomy's parts is the model's own MLP, its capture keeps the
valid tokens of every block, and its fit lowers a squeezed block's held-back output error."""

from __future__ import annotations

import argparse

import pytest
import torch

from tests.tiny_models import build_tiny, sample_input_ids


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_mlp_from_parts_is_the_models_mlp(family):
    from benchmarks.local_fit import _mlp, _mlp_inputs
    from prune.anatomy import get_anatomy

    model = build_tiny(family).eval()
    anatomy = get_anatomy(model)
    parts = [anatomy.mlp.parts(b) for b in anatomy.blocks(model)]
    ids = sample_input_ids(family, length=8, batch=2)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # the padded tokens are not captured
    batch = {"input_ids": ids, "attention_mask": mask}
    inputs = _mlp_inputs(model, [batch], parts)
    outputs: list[torch.Tensor] = []
    hooks = [
        p.down.register_forward_hook(lambda m, a, o: outputs.append(o.reshape(-1, o.shape[-1])))
        for p in parts
    ]
    with torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    valid = mask.reshape(-1).bool()
    for index, part in enumerate(parts):
        assert inputs[index].shape[0] == int(valid.sum())
        with torch.no_grad():
            torch.testing.assert_close(_mlp(part, inputs[index]), outputs[index][valid])


def test_fit_lowers_the_held_back_error_of_a_squeezed_block():
    from benchmarks.local_fit import _fit_block, _mlp
    from prune.anatomy import get_anatomy
    from prune.width import squeeze_model

    model = build_tiny("llama").eval()
    anatomy = get_anatomy(model)
    batches = [{"input_ids": sample_input_ids("llama", length=16, batch=4, seed=s)} for s in range(5)]
    for batch in batches:
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    squeezed = squeeze_model(model, batches, keep=0.5, progress=False, energy_levels=()).model
    dense_parts = anatomy.mlp.parts(anatomy.blocks(model)[0])
    parts = anatomy.mlp.parts(anatomy.blocks(squeezed)[0])
    generator = torch.Generator().manual_seed(0)
    d = dense_parts.down.weight.shape[0]
    x_fit, x_held = torch.randn(512, d, generator=generator), torch.randn(128, d, generator=generator)
    with torch.no_grad():
        y_fit, y_held = _mlp(dense_parts, x_fit), _mlp(dense_parts, x_held)
    args = argparse.Namespace(lr=1e-3, steps=300, batch_tokens=256, checks=6)
    before, after = _fit_block(parts, x_fit, y_fit, x_held, y_held, args)
    assert after < 0.9 * before
    with torch.no_grad():  # the kept weights are those of the best check, and no longer train
        error = float(((_mlp(parts, x_held) - y_held) ** 2).sum(-1).mean() / (y_held**2).sum(-1).mean())
    assert error == pytest.approx(after, rel=1e-5)
    assert not any(p.requires_grad for p in parts.down.parameters())
