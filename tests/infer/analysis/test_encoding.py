"""encode_data: batch-by-batch encoding in evaluation mode."""

import pytest
import torch
from pyrovae.guides import NormalGuide
from pyrovae.models import VAE

from pyrovae.infer import encode_data


def test_encode_data_is_deterministic_and_independent_of_batching():
    torch.manual_seed(0)
    guide = NormalGuide(6, 2, [16], batch_norm=True, dropout=0.5)
    guide.train()
    guide(torch.randn(32, 6))  # give batch norm running statistics that differ from any batch's own
    x = torch.randn(50, 6)
    whole = encode_data(guide, x, batch_size=50)
    assert torch.allclose(encode_data(guide, x, batch_size=7), whole, atol=1e-6)
    guide.eval()
    assert torch.allclose(guide.encode(x).mean, whole, atol=1e-6)
    guide.train()
    assert guide.training  # the mode is restored
    assert encode_data(guide, x, fn=lambda batch: batch.sum(-1)).shape == (50,)


def test_encode_data_given_the_model_says_it_takes_the_guide():
    model, x = VAE(6, 2, [16]), torch.randn(5, 6)
    with pytest.raises(TypeError, match=r"encode_data takes the guide.*got VAE, a model \(it has decode\(\), not "
                                        r"encode\(\)\): call encode_data\(guide, data\)"):
        encode_data(model, x)
    with pytest.raises(TypeError, match="encode_data takes the guide"):
        encode_data(model, x, fn=lambda batch: batch)
    with pytest.raises(TypeError, match="got function, not a guide with encode"):
        encode_data(lambda batch: batch, x)


def test_encode_data_names_an_fn_that_returns_no_tensor():
    # fn returning a number used to fail inside: 'int' object has no attribute 'cpu'
    guide = NormalGuide(4, 2, (8,))
    with pytest.raises(TypeError, match=r"fn must return a tensor .* got int; e\.g\. fn=guide\.assign"):
        encode_data(guide, torch.rand(6, 4), fn=lambda x: 3)
