"""The VAE: shapes, decoding and sampling, a plain auto-encoder, data it refuses, and mirrored widths of a pair."""

import pytest
import torch
from pyrovae.guides import DeltaGuide, NormalGuide
from pyrovae.models import VAE
from torch import nn

from pyrovae.data import TensorData
from pyrovae.infer import log_likelihood, train


def binary(n=32, d=784):
    return (torch.rand(n, d) < 0.3).float()


def test_vae_shapes_decode_and_sample():
    model = VAE(784, 5, hidden=(32,))
    z = torch.randn(3, 7, 5)
    assert model.decode(z).batch_shape == (3, 7) and model.decode(z).event_shape == (784,)
    x, z = model.sample(10, return_latents=True)
    assert x.shape == (10, 784) and z.shape == (10, 5) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert model.sample(4, mean=True).shape == (4, 784)
    guide = NormalGuide(784, 5, hidden=(32,))
    q = guide.encode(binary(6))
    assert q.batch_shape == (6,) and q.event_shape == (5,) and (q.base_dist.scale > 0).all()


def test_plain_autoencoder_has_no_prior_term():
    x = torch.rand(32, 20)
    model, guide = VAE(20, 3, hidden=(8,), likelihood="gaussian"), DeltaGuide(20, 3, hidden=(8,))
    history = train(model, guide, x, epochs=1, kl_weight=0.0, progress=False)
    assert history["kl_weight"] == [0.0]


def test_bad_data_errors():
    model, guide = VAE(784, 4, hidden=(16,)), NormalGuide(784, 4, hidden=(16,))
    grey = torch.rand(8, 784)
    with pytest.raises(ValueError, match="0/1 data.*binarise"):
        train(model, guide, grey, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"expected data of shape \(batch, 784\), got \(8, 100\)"):
        train(model, guide, torch.zeros(8, 100), epochs=1, progress=False)
    x = binary(8)
    x[3, 17] = float("nan")
    with pytest.raises(ValueError, match="nan at row 3, column 17"):
        train(model, guide, x, epochs=1, progress=False)
    with pytest.raises(ValueError, match="nan at row 3"):
        log_likelihood(model, guide, x, num_samples=2)
    with pytest.raises(ValueError, match="unknown likelihood 'poison'"):
        VAE(784, 4, likelihood="poison")
    with pytest.raises(ValueError, match="unknown elbo"):
        train(model, guide, binary(8), elbo="elbow", progress=False)
    with pytest.raises(ValueError, match="expected a matrix"):
        TensorData(torch.zeros(3, 28, 28))


def test_hidden_widths_are_listed_from_the_data_side_so_model_and_guide_mirror():
    from pyrovae import make_pair

    model, guide = VAE(30, 4, hidden=(16, 8)), NormalGuide(30, 4, hidden=(16, 8))
    decoder_widths = [(m.in_features, m.out_features) for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    encoder_widths = [(m.in_features, m.out_features) for m in guide.encoder.modules() if isinstance(m, nn.Linear)]
    assert encoder_widths == [(30, 16), (16, 8), (8, 8)]
    assert decoder_widths == [(4, 8), (8, 16), (16, 30)]
    svae, vmf = make_pair("svae-vmf", 30, 4, hidden=(16, 8))  # S^4 in R^5
    assert svae.z_dim == vmf.z_dim == 5
    with pytest.raises(ValueError, match="unknown pair"):
        make_pair("flow", 30, 4)
    with pytest.raises(ValueError, match="num_components"):
        make_pair("gmvae", 30, 4)

