"""Per-datum covariates as network inputs: categorical ones one-hot encoded, continuous ones as they are.

A model or guide built with covariates takes them beside ``x`` as two named inputs, in this order:

* ``cat``: integer codes ``(batch, number of categorical covariates)``; column j takes values in
  ``0 .. categorical[j] - 1``. By convention the first column is *the batch* (sample, plate, technology), the
  one a per-batch dispersion is indexed by.
* ``cont``: real values ``(batch, continuous)`` (percent mitochondrial counts, a cell-cycle score, ...).

Networks see them through :class:`ConditionalMLP`, which injects the covariate features into every hidden layer,
as scVI's decoder does, so that a batch cannot be forgotten after the first layer.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from pyrovae.nn.checks import check_dropout, check_int, check_widths
from pyrovae.nn.mlp import make_activation


def _validating() -> bool:
    from pyro.infer.util import is_validation_enabled

    return is_validation_enabled()


class Covariates(nn.Module):
    """The covariate features ``[one_hot(cat[:, 0]), ..., one_hot(cat[:, -1]), cont]`` of a batch.

    :param categorical: the number of levels of each categorical covariate (the first is the batch).
    :param int continuous: the number of continuous covariates.
    """

    def __init__(self, categorical: Sequence[int] = (), continuous: int = 0) -> None:
        super().__init__()
        if isinstance(categorical, numbers.Integral) and not isinstance(categorical, bool):
            categorical = (categorical,)
        if isinstance(categorical, (str, bytes)) or not isinstance(categorical, Sequence):
            raise ValueError(f"categorical must list the number of levels of each categorical covariate, e.g. (4,) "
                             f"for one batch covariate with 4 batches, got {categorical!r}")
        # each covariate needs at least one level (a covariate with one level is constant)
        self.categorical = tuple(check_int("covariates", f"categorical[{j}] (its number of levels)", k)
                                 for j, k in enumerate(categorical))
        self.continuous = check_int("covariates", "continuous (the number of continuous covariates)", continuous, 0)
        self.size = sum(self.categorical) + self.continuous
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def __bool__(self) -> bool:
        return self.size > 0

    @property
    def num_batches(self) -> int:
        """Levels of the first categorical covariate, the batch (1 without any)."""
        return self.categorical[0] if self.categorical else 1

    def check(self, cat: torch.Tensor | None, cont: torch.Tensor | None, num_data: int, who: str) -> None:
        """Raise a ValueError naming the problem when ``cat``/``cont`` do not match this specification."""
        given = [(name, t) for name, t in (("cat", cat), ("cont", cont)) if t is not None and t.numel()]
        if not self:
            if given:
                raise ValueError(
                    f"{who} was built without covariates but was given {', '.join(n for n, _ in given)}; build it "
                    "with categorical=data.categorical_sizes, continuous=data.num_continuous (or use "
                    "data.without_covariates() to leave them out on purpose)"
                )
            return
        for name, tensor, width in (("cat", cat, len(self.categorical)), ("cont", cont, self.continuous)):
            if width == 0:
                if tensor is not None and tensor.numel():
                    raise ValueError(f"{who} takes no {name} covariates but was given {tuple(tensor.shape)}")
                continue
            if tensor is None:
                raise ValueError(
                    f"{who} was built with {width} {'categorical' if name == 'cat' else 'continuous'} covariate(s) "
                    f"but was called without {name}; pass them beside x (model(x, cat, cont)), e.g. from "
                    "CountData.from_anndata(adata, batch_key=...), or give train and log_likelihood the tuple "
                    "(x, cat, cont) of tensors (a Dataset's items (x, ...) are read as x and a label)"
                )
            if tensor.dim() != 2 or tensor.shape != (num_data, width):
                raise ValueError(f"{who} expected {name} of shape ({num_data}, {width}), got {tuple(tensor.shape)}")
        if not _validating():
            return  # inside train's steps (validation off): checked on the first batch, no host round trip after
        if cat is not None and self.categorical and not torch.jit.is_tracing():
            if cat.is_floating_point():
                raise ValueError(f"{who}: cat holds category codes and must be an integer tensor, got {cat.dtype}")
            levels = torch.as_tensor(self.categorical, device=cat.device)
            bad = (cat < 0) | (cat >= levels)
            if bool(bad.any()):
                row, column = (int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"{who}: categorical covariate {column} has code {int(cat[row, column])} at row {row}, outside "
                    f"0..{self.categorical[column] - 1}; a covariate level unseen in training needs a model built "
                    "with more levels"
                )
        if cont is not None and self.continuous and not torch.jit.is_tracing() and not bool(torch.isfinite(cont).all()):
            raise ValueError(f"{who}: the continuous covariates hold NaN or infinite values")

    def forward(self, cat: torch.Tensor | None, cont: torch.Tensor | None) -> torch.Tensor:
        """The features ``(batch, size)``; call :meth:`check` first where the inputs are untrusted.

        One-hot by comparison with the levels, not ``one_hot``, which reads the codes' range back to the host at
        every call (a synchronisation per step, and a value a captured graph cannot hold)."""
        parts = [(cat[..., j, None].long() == torch.arange(k, device=cat.device)).to(self._anchor.dtype)
                 for j, k in enumerate(self.categorical)]
        if self.continuous:
            parts.append(cont.to(self._anchor.dtype))
        return torch.cat(parts, -1)

    def extra_repr(self) -> str:
        return f"categorical={self.categorical}, continuous={self.continuous}"


class ConditionalMLP(nn.Module):
    """An MLP ``in_features -> hidden -> out_features`` whose hidden layers also see side features ``s``.

    Each layer computes ``W h + V s + b`` (``V s`` only where injected): with ``inject="all"`` every layer, the
    output layer included, sees the covariates (scVI's ``deeply_inject_covariates``); with ``"first"`` only the
    first. ``s`` has the data's batch shape and is broadcast against any leading sample dimensions of ``h``, and
    ``V s`` is computed once per call, not once per sample.

    An injected layer starts as one linear layer over the concatenation ``[h, s]`` would (as scVI's layers do):
    ``W``, ``V`` and ``b`` uniform in +/- 1 / sqrt(width of h + width of s). ``V`` on its own fan-in (a one-hot's
    few columns) would start wider (26-32 times in an encoder's first layer over 2,000 genes, 2-8 times in a
    decoder's), a random offset per batch in every layer that training has no reason to remove, since the decoder
    sees the batch too: on CellBench's plates split at random into two "batches" (no batch effect at all) a
    SingleCellVAE then kept them apart (iLISI 0.76 against 0.93 with this start).

    :param int in_features: input size.
    :param int side_features: covariate feature size (:attr:`Covariates.size`).
    """

    def __init__(
        self,
        in_features: int,
        side_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str | nn.Module = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
        inject: str = "all",
    ) -> None:
        super().__init__()
        if inject not in ("all", "first"):
            raise ValueError(f"inject must be 'all' or 'first', got {inject!r}")
        sizes = [check_int("ConditionalMLP", "in_features", in_features), *check_widths("ConditionalMLP", hidden),
                 check_int("ConditionalMLP", "out_features", out_features)]
        side_features = check_int("ConditionalMLP", "side_features", side_features)
        dropout = check_dropout("ConditionalMLP", dropout)
        self.in_features, self.out_features, self.side_features = sizes[0], sizes[-1], int(side_features)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.side = nn.ModuleList(
            nn.Linear(self.side_features, b, bias=False) if (inject == "all" or i == 0) else None
            for i, b in enumerate(sizes[1:])
        )
        self.reset_parameters()
        self.norms = nn.ModuleList(nn.BatchNorm1d(b) if batch_norm else nn.Identity() for b in sizes[1:-1])
        self.activation = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._flatten = batch_norm

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each injected layer's ``W``, ``V`` and ``b`` uniform within the bound of their joint fan-in, as one
        ``nn.Linear`` over ``[h, s]``; a layer without covariates as torch starts it."""
        for linear, side in zip(self.linears, self.side):
            if side is None:
                linear.reset_parameters()
                continue
            bound = 1.0 / math.sqrt(linear.in_features + side.in_features)
            for parameter in (linear.weight, linear.bias, side.weight):
                parameter.uniform_(-bound, bound)

    def forward(self, inputs: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and inputs.shape[-1] != self.in_features:
            raise ValueError(
                f"ConditionalMLP expected inputs of shape (..., {self.in_features}), got {tuple(inputs.shape)}"
            )
        h, last = inputs, len(self.linears) - 1
        for i, linear in enumerate(self.linears):
            h = linear(h)
            if self.side[i] is not None:
                h = h + self.side[i](side)
            if i < last:
                if self._flatten and h.dim() != 2:
                    h = self.norms[i](h.reshape(-1, h.shape[-1])).reshape(h.shape)
                else:
                    h = self.norms[i](h)
                h = self.dropout(self.activation(h))
        return h


__all__ = ["ConditionalMLP", "Covariates"]
