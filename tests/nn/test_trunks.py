"""The encoder and decoder trunks: convolutional trunks with leading dimensions and kernel sizes, MLP options."""

import pytest
import torch
from pyrovae.guides import NormalGuide
from pyrovae.models import VAE
from torch import nn

from pyrovae.infer import train
from pyrovae.nn import MLP, ConvDecoder, ConvEncoder


def test_conv_trunks_with_leading_dimensions():
    encoder, decoder = ConvEncoder(10), ConvDecoder(5, out_channels_per_pixel=2)
    assert encoder(torch.rand(2, 3, 784)).shape == (2, 3, 10)
    assert decoder(torch.randn(4, 6, 5)).shape == (4, 6, 2 * 784)
    model = VAE(784, 5, likelihood="gaussian", decoder=ConvDecoder(5))
    guide = NormalGuide(784, 5, encoder=ConvEncoder(10))
    history = train(model, guide, torch.rand(16, 784), epochs=1, batch_size=8, progress=False)
    assert len(history) == 1
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvEncoder(10, image_shape=(1, 30, 30))


@pytest.mark.parametrize("kernel_size", [3, 4, 5])
def test_conv_trunks_kernel_sizes_keep_the_image_shape(kernel_size):
    encoder = ConvEncoder(7, kernel_size=kernel_size)
    decoder = ConvDecoder(7, kernel_size=kernel_size)
    assert encoder.linear.in_features == 64 * 7 * 7
    assert decoder(encoder(torch.rand(3, 784))).shape == (3, 784)


def test_mlp_options():
    net = MLP(4, (8, 8), 3, activation="tanh", batch_norm=True, dropout=0.1)
    assert net(torch.randn(2, 5, 4)).shape == (2, 5, 3)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net.modules()) == 2
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(4, (8,), 3, activation="swishy")
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\)"):
        net(torch.randn(3, 5))

