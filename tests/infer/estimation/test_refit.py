"""refit_guide: a guide refitted to a frozen model, and the pair scored."""

import pytest
import torch
from pyrovae.guides import NormalGuide
from pyrovae.models import VAE

from pyrovae.infer import refit_guide


def test_refit_guide_trains_only_the_guide_and_scores_the_pair():
    torch.manual_seed(0)
    x = torch.rand(64, 12).round()
    model, guide = VAE(12, 3, (8,)), NormalGuide(12, 3, (8,))
    frozen = [p.clone() for p in model.parameters()]
    history, ll = refit_guide(model, guide, x, x[:16], num_samples=8, epochs=2, progress=False, seed=0)
    assert len(history) == 2 and ll.per_datum.shape == (16,)
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.parameters()))
    with pytest.raises(ValueError, match="freeze must be 'model'"):
        refit_guide(model, guide, x, freeze="guide")

