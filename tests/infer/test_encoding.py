"""encode_data: batch-by-batch encoding in evaluation mode."""

import torch
from pyrovae.guides import NormalGuide

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
