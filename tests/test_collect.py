"""The collector's hooks, inputs, custom modules, resumable state and Accelerate integration."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from test_metrics import ALL, padded_batch, split, tiny_bert, tiny_llama
from torch import nn

from prune.anatomy import get_anatomy
from prune.collect import CollectError, collect_stats
from prune.errors import AnatomyError, DataError


class TupleBlock(nn.Module):
    """A block called with hidden_states= and returning a tuple, as older HF blocks do."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d, d)

    def forward(self, hidden_states: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, None]:
        return (hidden_states + scale * torch.tanh(self.linear(hidden_states)), None)


class CustomNet(nn.Module):
    """A custom nn.Module taking a float tensor [B, T, d]; its blocks live at `stack`."""

    def __init__(self, d: int = 8, n: int = 3) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stack = nn.ModuleList(TupleBlock(d) for _ in range(n))
        self.head = nn.Linear(d, 2)
        self.head_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.stack:
            x = block(hidden_states=x, scale=0.5)[0]
        self.head_calls += 1
        return self.head(x)


def test_custom_module_with_tensor_batches_and_kwarg_hidden_states() -> None:
    net = CustomNet()
    x = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(0))
    stats = collect_stats(
        net, [x[:3], x[3:]], anatomy=get_anatomy(net, block_path="stack"), metrics=ALL, progress=False
    )
    assert stats.num_tokens == 30 and stats.num_blocks == 3
    # Direct computation of BI from the blocks run by hand.
    states = [x]
    for block in net.stack:
        states.append(block(hidden_states=states[-1], scale=0.5)[0])
    cos = [
        torch.nn.functional.cosine_similarity(a, b, dim=-1).double().mean()
        for a, b in zip(states[:-1], states[1:], strict=True)
    ]
    assert torch.allclose(stats.scores()["bi"], 1 - torch.stack(cos), atol=1e-6)
    # The forward pass stops after the last block: the head never ran, and no hook is left behind.
    assert net.head_calls == 0
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in net.stack)


def test_custom_module_without_block_path_is_an_anatomy_error() -> None:
    with pytest.raises(AnatomyError):
        collect_stats(CustomNet(), [torch.randn(2, 3, 8)], progress=False)


def test_hooks_removed_and_error_raised_when_blocks_are_not_run() -> None:
    model = tiny_llama()

    class Skipper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, **batch):
            return None  # never runs the blocks

    skipper = Skipper()
    anatomy = get_anatomy(skipper, block_path="inner.model.layers")
    with pytest.raises(AnatomyError, match="did not produce hidden states"):
        collect_stats(skipper, [padded_batch()], anatomy=anatomy, progress=False)
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in model.model.layers)


def test_bad_batches_raise_data_error() -> None:
    model = tiny_llama()
    with pytest.raises(DataError, match="pass dicts of tensors"):
        collect_stats(model, [[1, 2, 3]], progress=False)
    batch = padded_batch()
    with pytest.raises(DataError, match="one mask entry per token"):
        collect_stats(model, [{**batch, "attention_mask": batch["attention_mask"][:, :4]}], progress=False)


def test_use_cache_is_turned_off_and_model_is_unchanged() -> None:
    model = tiny_llama()
    seen = []
    model.model.register_forward_pre_hook(lambda m, a, k: seen.append(k.get("use_cache")), with_kwargs=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    collect_stats(model, [padded_batch()], progress=False)
    assert seen == [False]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_accelerator_single_process_matches_plain_run() -> None:
    model, batch = tiny_bert(), padded_batch()
    plain = collect_stats(model, [batch], metrics=ALL, progress=False)
    accelerated = collect_stats(model, [batch], metrics=ALL, accelerator=Accelerator(cpu=True), progress=True)
    for name, value in plain.sums.items():
        assert torch.allclose(value, accelerated.sums[name], rtol=1e-6), name


class Interrupted(RuntimeError):
    pass


def failing_after(batches, count: int):
    for index, batch in enumerate(batches):
        if index == count:
            raise Interrupted("simulated crash")
        yield batch


@pytest.mark.parametrize("mode", ["tokens", "mean"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, mode: str) -> None:
    model = tiny_llama()
    batches = split(padded_batch(1), [1, 1, 1, 1, 1]) + split(padded_batch(2), [2, 3])
    # Small CKA windows (8 tokens, minibatches of 4): the crash leaves a window half full.
    options = {"metrics": ALL, "token_mode": mode, "group_size": 4, "progress": False}
    options |= {"cka_minibatch": 4, "cka_window": 8}
    full = collect_stats(model, batches, **options)
    state = tmp_path / "state.pt"
    with pytest.raises(Interrupted):
        collect_stats(model, failing_after(batches, 4), state_path=state, save_every=3, **options)
    assert state.exists()

    calls = []
    model.model.register_forward_pre_hook(lambda *a: calls.append(1))
    resumed = collect_stats(model, batches, state_path=state, save_every=3, **options)
    assert len(calls) == len(batches) - 4  # the four consumed batches are not run again
    assert resumed.num_tokens == full.num_tokens
    for name, value in full.scores().items():
        assert torch.allclose(value, resumed.scores()[name], atol=1e-9), name
    assert resumed.sums["hsic_groups"] == full.sums["hsic_groups"] == (17 if mode == "tokens" else 2)
    # A complete state file resumes to the same totals without running anything.
    again = collect_stats(model, batches, state_path=state, **options)
    assert len(calls) == len(batches) - 4
    assert torch.equal(again.sums["tokens"], full.sums["tokens"])


def test_resume_refuses_a_different_run(tmp_path) -> None:
    model = tiny_llama()
    state = tmp_path / "state.pt"
    collect_stats(model, [padded_batch()], metrics=["bi"], state_path=state, progress=False)
    with pytest.raises(CollectError, match="delete the state file"):
        collect_stats(model, [padded_batch()], metrics=["bi", "cka"], state_path=state, progress=False)
    with pytest.raises(CollectError, match="delete the state file"):
        collect_stats(tiny_bert(), [padded_batch()], metrics=["bi"], state_path=state, progress=False)
    with pytest.raises(CollectError, match="skip_tokens=0"):
        collect_stats(
            model, [padded_batch()], metrics=["bi"], skip_tokens=1, state_path=state, progress=False
        )
    # Another cut of the tokens into CKA minibatches (or a state file from before the cut was recorded).
    cka = tmp_path / "cka.pt"
    collect_stats(model, [padded_batch()], metrics=["cka"], state_path=cka, progress=False)
    with pytest.raises(CollectError, match="cka_seed=0"):
        collect_stats(model, [padded_batch()], metrics=["cka"], seed=1, state_path=cka, progress=False)
    old = torch.load(cka, weights_only=True)
    del old["fingerprint"]["cka_minibatch"]
    torch.save(old, cka)
    with pytest.raises(CollectError, match="cka_minibatch=None"):
        collect_stats(model, [padded_batch()], metrics=["cka"], state_path=cka, progress=False)
