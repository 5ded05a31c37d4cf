"""Fold linear maps into the weights a model already has: no new parameters, no hooks, stock checkpoints.

Training-free repair and width squeezing fit a map on calibration activations and then fold it here:

- `fold_output_map`: a projection ``y = W x + b`` becomes ``y T (+ c)`` (row-vector convention, ``T``
  [out, out']) by ``W' = T^T W``, ``b' = T^T b + c``. Used to fold a d x d repair map into a down
  projection.
- `fold_input_map`: the projection reads ``x ~ z A + c`` (``A`` [k, in]) instead of ``x``: ``W' = W A^T``,
  ``b' = b + W c``. Used to express removed neurons through the kept ones.
- `select_outputs`: keep some output features (rows of an ``nn.Linear``, columns of a ``Conv1D``),
  with fused gate/up projections sliced in both halves.
- `fold_norm_affine`: a norm's output ``z`` becomes ``z * s + t`` per channel, into its weight and
  bias (``(offset + w) * s - offset`` for norms that compute ``x * (offset + w)``, Gemma's RMSNorm).

Arithmetic is float64; results are cast back to each parameter's dtype and device. Weights are
replaced with new tensors (never written in place), so a model sharing tensors with another one
(`remove_blocks(share_weights=True)`) leaves the other one untouched.

Example:
    >>> import torch
    >>> proj = torch.nn.Linear(3, 2)
    >>> x = torch.randn(5, 3)
    >>> t = torch.randn(2, 2, dtype=torch.float64)
    >>> expected = proj(x).double() @ t
    >>> fold_output_map(proj, t)
    >>> torch.allclose(proj(x).double(), expected, atol=1e-5)
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prune.errors import FoldError


def _is_conv1d(module: nn.Module) -> bool:
    # transformers' GPT-2 Conv1D stores weight [in, out] and computes x @ W + b.
    return type(module).__name__ == "Conv1D"


def weight_matrix(module: nn.Module) -> Tensor:
    """The weight of a projection as [out, in] (a view; GPT-2's Conv1D stores its transpose).

    Raises:
        FoldError: the module is not an nn.Linear or a Conv1D.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise FoldError(
            f"{type(module).__name__} is not a linear projection (nn.Linear or Conv1D); "
            'fix the family file\'s "mlp" entry'
        )
    return weight.t() if _is_conv1d(module) else weight


def _set_weight(module: nn.Module, matrix: Tensor) -> None:
    """Replace the weight with `matrix` [out, in] (float64), in the module's dtype, device and layout."""
    old = module.weight
    value = (matrix.t() if _is_conv1d(module) else matrix).to(dtype=old.dtype, device=old.device).contiguous()
    module.weight = nn.Parameter(value, requires_grad=old.requires_grad)
    if isinstance(module, nn.Linear):
        module.in_features, module.out_features = int(matrix.shape[1]), int(matrix.shape[0])
    elif _is_conv1d(module) and hasattr(module, "nf"):
        module.nf = int(matrix.shape[0])


def _set_bias(module: nn.Module, vector: Tensor) -> None:
    old = module.bias
    module.bias = nn.Parameter(
        vector.to(dtype=old.dtype, device=old.device).contiguous(), requires_grad=old.requires_grad
    )


def _bias(module: nn.Module) -> Tensor | None:
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, Tensor) else None


def fold_output_map(module: nn.Module, transform: Tensor, offset: Tensor | None = None) -> None:
    """Make `module` output ``y @ transform + offset`` where it output ``y`` (in place).

    Args:
        module: nn.Linear or Conv1D with ``out`` output features.
        transform: [out, out'] map applied to the output (row vectors on the left).
        offset: [out'] constant added after the map; needs a bias in `module` to hold it.

    Raises:
        FoldError: shapes disagree, or an offset is asked of a projection without bias (adding one
            would change the checkpoint's architecture).
    """
    weight = weight_matrix(module)
    out = weight.shape[0]
    if transform.dim() != 2 or transform.shape[0] != out:
        raise FoldError(
            f"cannot fold a map of shape {tuple(transform.shape)} into the output of a projection with {out} "
            f"outputs; pass a [{out}, k] matrix"
        )
    t = transform.to(torch.float64).cpu()
    new_weight = t.T @ weight.detach().to(torch.float64).cpu()
    bias = _bias(module)
    if bias is None and offset is not None and bool(offset.abs().max() > 0):
        raise FoldError(
            f"{type(module).__name__} has no bias to hold the fitted offset; fit without an offset for it"
        )
    _set_weight(module, new_weight)
    if bias is not None:
        new_bias = t.T @ bias.detach().to(torch.float64).cpu()
        if offset is not None:
            new_bias = new_bias + offset.to(torch.float64).cpu()
        _set_bias(module, new_bias)


def fold_input_map(module: nn.Module, transform: Tensor, offset: Tensor | None = None) -> None:
    """Make `module` read ``z`` where it read ``x = z @ transform + offset`` (in place).

    Args:
        module: nn.Linear or Conv1D with ``in`` input features.
        transform: [k, in]: the old input expressed through the new one (row vectors on the left).
        offset: [in] constant part of the old input; folded into the bias (needs one unless it is 0).

    Raises:
        FoldError: shapes disagree, or a nonzero offset meets a projection without bias.
    """
    weight = weight_matrix(module)
    if transform.dim() != 2 or transform.shape[1] != weight.shape[1]:
        raise FoldError(
            f"cannot fold a map of shape {tuple(transform.shape)} into the input of a projection with "
            f"{weight.shape[1]} inputs; pass a [k, {weight.shape[1]}] matrix"
        )
    w = weight.detach().to(torch.float64).cpu()
    bias = _bias(module)
    if offset is not None and bool(offset.abs().max() > 0):
        if bias is None:
            raise FoldError(
                f"{type(module).__name__} has no bias to hold the constant part of the fitted map; "
                "fit without an intercept for it"
            )
        _set_bias(module, bias.detach().to(torch.float64).cpu() + w @ offset.to(torch.float64).cpu())
    _set_weight(module, w @ transform.to(torch.float64).cpu().T)


def select_outputs(module: nn.Module, index: Tensor, *, fused_halves: int = 1) -> None:
    """Keep only the output features `index` of a projection (and its bias), in place.

    Args:
        module: nn.Linear or Conv1D.
        index: int64 [k]: kept features, in the order they will have.
        fused_halves: 2 for a fused gate/up projection whose outputs are ``fused_halves`` equal chunks:
            the same `index` is kept in every chunk.
    """
    weight = weight_matrix(module)
    size = weight.shape[0] // fused_halves
    if fused_halves * size != weight.shape[0]:
        raise FoldError(f"{weight.shape[0]} outputs do not split into {fused_halves} equal chunks")
    index = index.to(torch.long).cpu()
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= size:
        raise FoldError(f"output indices must lie in [0, {size}) and not be empty")
    rows = torch.cat([index + part * size for part in range(fused_halves)])
    _set_weight(module, weight.detach().to(torch.float64).cpu()[rows])
    bias = _bias(module)
    if bias is not None:
        _set_bias(module, bias.detach().to(torch.float64).cpu()[rows])


def select_inputs(module: nn.Module, index: Tensor) -> None:
    """Keep only the input features `index` of a projection, in place (the bias is unchanged)."""
    weight = weight_matrix(module)
    index = index.to(torch.long).cpu()
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= weight.shape[1]:
        raise FoldError(f"input indices must lie in [0, {weight.shape[1]}) and not be empty")
    _set_weight(module, weight.detach().to(torch.float64).cpu()[:, index])


def fold_norm_affine(
    norm: nn.Module, scale: Tensor, shift: Tensor | None = None, *, weight_offset: float = 0.0
) -> None:
    """Make a norm output ``z * scale + shift`` (per channel) where it output ``z``, in place.

    Args:
        norm: a LayerNorm or RMSNorm-like module with a per-channel ``weight`` (and ``bias`` for a shift).
        scale: [d] per-channel factor.
        shift: [d] per-channel offset; needs a bias (LayerNorm), RMSNorm has none.
        weight_offset: the norm computes ``x * (weight_offset + weight)`` (1.0 for Gemma's RMSNorm).

    Raises:
        FoldError: the norm has no weight of that size, or a nonzero shift meets a norm without bias.
    """
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 1 or weight.shape[0] != scale.shape[-1]:
        raise FoldError(
            f"{type(norm).__name__} has no per-channel weight of size {scale.shape[-1]} to fold a scale into"
        )
    s = scale.to(torch.float64).cpu()
    effective = weight.detach().to(torch.float64).cpu() + weight_offset
    norm.weight = nn.Parameter(
        (effective * s - weight_offset).to(dtype=weight.dtype, device=weight.device),
        requires_grad=weight.requires_grad,
    )
    bias = _bias(norm)
    if bias is not None:
        new_bias = bias.detach().to(torch.float64).cpu() * s
        if shift is not None:
            new_bias = new_bias + shift.to(torch.float64).cpu()
        _set_bias(norm, new_bias)
    elif shift is not None and bool(shift.abs().max() > 0):
        raise FoldError(
            f"{type(norm).__name__} has no bias to hold a per-channel shift; fit a scale only for this norm"
        )


def scale_output(module: nn.Module, factor: float, *, weight_offset: float = 0.0) -> None:
    """Make a projection or a norm output ``factor * y`` where it output ``y`` (in place).

    Args:
        module: nn.Linear / Conv1D (weight and bias scaled) or a norm with a per-channel weight.
        factor: the scalar.
        weight_offset: for a norm that computes ``x * (weight_offset + weight)`` (Gemma: 1.0).
    """
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 1:
        fold_norm_affine(
            module, torch.full((weight.shape[0],), factor, dtype=torch.float64), weight_offset=weight_offset
        )
        return
    matrix = weight_matrix(module).detach().to(torch.float64).cpu()
    _set_weight(module, matrix * factor)
    bias = _bias(module)
    if bias is not None:
        _set_bias(module, bias.detach().to(torch.float64).cpu() * factor)


__all__ = [
    "fold_input_map",
    "fold_norm_affine",
    "fold_output_map",
    "scale_output",
    "select_inputs",
    "select_outputs",
    "weight_matrix",
]
