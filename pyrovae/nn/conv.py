"""Convolutional trunks for small images (28x28 MNIST / Fashion-MNIST by default).

Images travel through the library flattened, ``(..., C*H*W)``, like every other data type; the conv
trunks reshape at their borders. That keeps models, guides, likelihoods and the importance sampler
oblivious to images, and lets leading batch dimensions (particles, importance samples) pass through.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyrovae.nn.checks import check_dropout, check_int, check_widths
from pyrovae.nn.mlp import make_activation


def _check_image_shape(owner: str, image_shape: Sequence[int], num_layers: int) -> tuple[int, int, int]:
    if isinstance(image_shape, (str, bytes)) or not isinstance(image_shape, Sequence) or len(image_shape) != 3:
        raise ValueError(f"{owner}: image_shape must be (channels, height, width), got {image_shape!r}")
    channels, height, width = (check_int(owner, f"image_shape[{i}]", size) for i, size in enumerate(image_shape))
    factor = 2**num_layers
    if height % factor or width % factor:
        raise ValueError(
            f"image height and width must be divisible by {factor} for {num_layers} stride-2 layers, "
            f"got {height}x{width}"
        )
    return channels, height, width


def _padding(owner: str, kernel_size: int) -> int:
    """The padding with which a stride-2 convolution exactly halves an even size (and its transpose doubles it)."""
    return (check_int(owner, "kernel_size", kernel_size, 2) - 1) // 2


class ConvEncoder(nn.Module):
    """Stride-2 3x3 convolutions followed by a linear layer: ``(..., C*H*W) -> (..., out_features)``.

    With channels 32, 64 on 1x28x28 this is the encoder of the Keras/TF conv VAE tutorials and, with
    ``kernel_size=4``, of notebook 004: 28x28 -> 14x14x32 -> 7x7x64 -> linear.
    """

    def __init__(
        self,
        out_features: int,
        image_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (32, 64),
        activation: str | nn.Module = "relu",
        dropout: float = 0.0,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        channels = check_widths("ConvEncoder", channels, "channels", allow_empty=False)
        out_features = check_int("ConvEncoder", "out_features", out_features)
        dropout = check_dropout("ConvEncoder", dropout)
        in_channels, height, width = _check_image_shape("ConvEncoder", image_shape, len(channels))
        padding = _padding("ConvEncoder", kernel_size)
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip([in_channels, *channels[:-1]], channels):
            layers += [nn.Conv2d(fan_in, fan_out, kernel_size, stride=2, padding=padding), make_activation(activation)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.convs = nn.Sequential(*layers)
        scale = 2 ** len(channels)
        self.linear = nn.Linear(channels[-1] * (height // scale) * (width // scale), out_features)
        self.image_shape = (in_channels, height, width)
        self.in_features = in_channels * height * width
        self.out_features = int(out_features)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and inputs.shape[-1] != self.in_features:
            raise ValueError(
                f"ConvEncoder expected flattened images of shape (..., {self.in_features}) "
                f"for image_shape {self.image_shape}, got {tuple(inputs.shape)}"
            )
        batch_shape = inputs.shape[:-1]
        hidden = self.convs(inputs.reshape(-1, *self.image_shape))
        return self.linear(hidden.flatten(1)).reshape(*batch_shape, self.out_features)


class ConvDecoder(nn.Module):
    """A linear layer followed by stride-2 transposed convolutions: ``(..., in_features) -> (..., K*C*H*W)``.

    ``out_channels_per_pixel`` (K) is the number of likelihood parameters per pixel; the output is laid
    out parameter-major (all first parameters, then all second ones), as the likelihoods expect.
    """

    def __init__(
        self,
        in_features: int,
        image_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (64, 32),
        activation: str | nn.Module = "relu",
        out_channels_per_pixel: int = 1,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        channels = check_widths("ConvDecoder", channels, "channels", allow_empty=False)
        in_features = check_int("ConvDecoder", "in_features", in_features)
        out_channels_per_pixel = check_int("ConvDecoder", "out_channels_per_pixel", out_channels_per_pixel)
        out_channels, height, width = _check_image_shape("ConvDecoder", image_shape, len(channels))
        padding = _padding("ConvDecoder", kernel_size)
        scale = 2 ** len(channels)
        self.start_shape = (channels[0], height // scale, width // scale)
        self.linear = nn.Sequential(
            nn.Linear(in_features, channels[0] * (height // scale) * (width // scale)), make_activation(activation)
        )
        layers: list[nn.Module] = []
        widths = [*channels, out_channels * out_channels_per_pixel]
        for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.ConvTranspose2d(fan_in, fan_out, kernel_size, stride=2, padding=padding,
                                             output_padding=2 + 2 * padding - kernel_size))
            if index < len(channels) - 1:
                layers.append(make_activation(activation))
        self.deconvs = nn.Sequential(*layers)
        self.in_features = int(in_features)
        self.out_features = out_channels * out_channels_per_pixel * height * width

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and inputs.shape[-1] != self.in_features:
            raise ValueError(
                f"ConvDecoder expected inputs of shape (..., {self.in_features}), got {tuple(inputs.shape)}"
            )
        batch_shape = inputs.shape[:-1]
        hidden = self.linear(inputs.reshape(-1, self.in_features)).reshape(-1, *self.start_shape)
        return self.deconvs(hidden).reshape(*batch_shape, self.out_features)
