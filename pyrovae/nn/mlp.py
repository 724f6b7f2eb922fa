"""Multi-layer perceptron trunk."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyrovae.nn.checks import check_dropout, check_int, check_widths

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def make_activation(activation: str | type[nn.Module] | nn.Module) -> nn.Module:
    """An activation module from a name (``"relu"``, ``"tanh"``, ...), a class or an instance."""
    if isinstance(activation, nn.Module):
        return activation
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return activation()
    try:
        return _ACTIVATIONS[activation]()
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {sorted(_ACTIVATIONS)} or an nn.Module"
        ) from None


class MLP(nn.Module):
    """A fully connected network ``in_features -> hidden[0] -> ... -> out_features``.

    Each hidden layer is ``Linear -> [BatchNorm1d] -> activation -> [Dropout]``; the output layer is
    linear. Inputs may have any number of leading batch dimensions; batch norm, which needs a 2-D
    input, sees them flattened.

    :param int in_features: input size.
    :param hidden: sizes of the hidden layers (may be empty: a linear map).
    :param int out_features: output size.
    :param activation: name, class or instance of the hidden activation.
    :param bool batch_norm: batch-normalise each hidden layer.
    :param float dropout: dropout probability after each hidden activation (0 disables it).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str | nn.Module = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        sizes = [check_int("MLP", "in_features", in_features), *check_widths("MLP", hidden)]
        out_features = check_int("MLP", "out_features", out_features)
        dropout = check_dropout("MLP", dropout)
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers.append(nn.Linear(fan_in, fan_out))
            if batch_norm:
                layers.append(nn.BatchNorm1d(fan_out))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(sizes[-1], out_features))
        self.layers = nn.Sequential(*layers)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self._flatten = batch_norm

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and inputs.shape[-1] != self.in_features:
            raise ValueError(f"MLP expected inputs of shape (..., {self.in_features}), got {tuple(inputs.shape)}")
        if self._flatten and inputs.dim() != 2:
            batch_shape = inputs.shape[:-1]
            return self.layers(inputs.reshape(-1, self.in_features)).reshape(*batch_shape, self.out_features)
        return self.layers(inputs)
