"""Checks shared by the library's distributions: the batch shapes ``expand`` accepts, and constructor parameters
against their constraints, with errors that name the parameter, what it must be and the values at fault."""

from __future__ import annotations

import torch
from torch.distributions import biject_to, constraints, transform_to


def distinct(tensor: torch.Tensor, event_dims: int) -> torch.Tensor:
    """``tensor`` with every batch dimension that an expand repeats (stride 0) cut to size 1: each distinct
    parameter once, to compute on before broadcasting back."""
    for dim in range(tensor.dim() - event_dims):
        if tensor.stride(dim) == 0 and tensor.shape[dim] > 1:
            tensor = tensor.narrow(dim, 0, 1)
    return tensor


def expanded_batch_shape(distribution, batch_shape) -> torch.Size:
    """``batch_shape`` as a ``torch.Size`` if ``distribution`` can be expanded to it, else a ``ValueError``.

    torch's rule for ``expand``: the new shape may add leading dimensions and stretch dimensions of size 1; every
    other dimension keeps its size (a batch of 2 cannot become a batch of 3).
    """
    batch_shape = torch.Size(batch_shape)
    if torch.jit.is_tracing():  # traced sizes are tensors: the untraced call that precedes a trace has checked
        return batch_shape
    old = distribution.batch_shape
    fits = len(batch_shape) >= len(old) and all(size >= 0 for size in batch_shape) and all(
        before in (1, after) for before, after in zip(reversed(old), reversed(batch_shape)))
    if not fits:
        raise ValueError(
            f"{type(distribution).__name__} of batch shape {tuple(old)} cannot be expanded to batch shape "
            f"{tuple(batch_shape)}: expand adds leading dimensions and stretches dimensions of size 1 only; "
            f"to repeat distinct parameters, build the distribution from repeated parameters"
        )
    return batch_shape


def per_factor(apply, tril: torch.Tensor, value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``apply(L, z)`` (L z, or L^-1 z) for every point z of ``value`` broadcast to ``shape + (m,)``: the points that
    share a factor (the dimensions where ``tril`` has size 1, samples' and an expand's) are the columns of one
    product or triangular solve, so that no factor is copied per point. Under ``torch.jit.trace`` (whose sizes are
    tensors: no grouping by size) the factors broadcast against the points instead."""
    if torch.jit.is_tracing():
        return apply(tril, value.expand(shape + value.shape[-1:]).unsqueeze(-1)).squeeze(-1)
    m = tril.shape[-1]
    factors = (1,) * (len(shape) - (tril.dim() - 2)) + tuple(tril.shape[:-2])
    shared = [d for d in range(len(shape)) if factors[d] == 1 and shape[d] > 1]
    own = [d for d in range(len(shape)) if d not in shared]
    points = value.expand(shape + (m,)).permute(*own, len(shape), *shared)  # (*own, m, *shared)
    columns = points.reshape(*(shape[d] for d in own), m, -1)
    result = apply(tril.reshape(*(factors[d] for d in own), m, m), columns)
    result = result.reshape(*(shape[d] for d in own), m, *(shape[d] for d in shared))
    order = [*own, len(shape), *shared]  # the result's dimensions, as positions of shape + (m,)
    return result.permute(*sorted(range(len(order)), key=order.__getitem__))


class _Finite(constraints.Constraint):
    """``base`` and finite: the mean or rate of a count distribution, where torch's ``nonnegative`` and ``positive``
    let infinity through (a law with an infinite mean is no distribution: its log-densities were -inf and NaN)."""

    def __init__(self, base: constraints.Constraint) -> None:
        self.base = base
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.check(value) & torch.isfinite(value)

    def __repr__(self) -> str:
        return f"Finite({self.base})"


finite_nonnegative, finite_positive = _Finite(constraints.nonnegative), _Finite(constraints.positive)
biject_to.register(_Finite, lambda constraint: biject_to(constraint.base))  # onto the open set: finite anyway
transform_to.register(_Finite, lambda constraint: transform_to(constraint.base))


def describe(constraint) -> str:
    """A constraint in words, for error messages."""
    if isinstance(constraint, _Finite):
        return f"finite and {describe(constraint.base)}"
    if constraint is constraints.positive or (isinstance(constraint, constraints.greater_than)
                                              and constraint.lower_bound == 0):
        return "positive (> 0)"
    if constraint is constraints.nonnegative or (isinstance(constraint, constraints.greater_than_eq)
                                                 and constraint.lower_bound == 0):
        return "non-negative (>= 0)"
    if constraint is constraints.real:
        return "a real number (not NaN)"
    if constraint is constraints.sphere:
        return "a unit vector along the last dimension"
    return str(constraint)


def as_tensors(*values) -> tuple[torch.Tensor, ...]:
    """Parameters as tensors, as torch's distributions take them: a Python number becomes a tensor of the first
    floating-point tensor's dtype and device among ``values`` (torch's default dtype where there is none)."""
    like = next((v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()), None)
    dtype, device = (like.dtype, like.device) if like is not None else (torch.get_default_dtype(), None)
    return tuple(v if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=dtype, device=device) for v in values)


def check_parameters(distribution, parameters: dict) -> None:
    """Check each ``parameters[name]`` against ``distribution.arg_constraints[name]`` (skipped while tracing: the
    test would become a constant of the trace), raising a ``ValueError`` that names the distribution, the
    parameter, its constraint, how many values break it and the first of them with its index."""
    if torch.jit.is_tracing():
        return
    for name, value in parameters.items():
        constraint = distribution.arg_constraints[name]
        if constraints.is_dependent(constraint):
            continue
        value = torch.as_tensor(value)
        valid = constraint.check(value)
        if bool(valid.all()):
            continue
        bad = (~valid).nonzero()
        index = tuple(int(i) for i in bad[0])
        shown = value[index] if constraint.event_dim == 0 else value[index].tolist()
        if isinstance(shown, torch.Tensor):
            shown = shown.item()
        raise ValueError(
            f"{type(distribution).__name__}: {name} must be {describe(constraint)}, but {len(bad)} of its "
            f"{valid.numel()} values are not, e.g. {shown} at index {index} (shape {tuple(value.shape)})"
        )


__all__ = ["as_tensors", "check_parameters", "describe", "expanded_batch_shape", "finite_nonnegative",
           "finite_positive"]
