"""Pareto k-hat against arviz's reference implementation."""

import math

import numpy as np
import pytest
import torch

from pyrovae.infer.psis import psis_khat, psis_tail_length


def arviz_khat(log_weights: np.ndarray) -> np.ndarray:
    arviz = pytest.importorskip("arviz")
    return np.array([float(arviz.psislw(row.copy())[1]) for row in log_weights])


@pytest.mark.parametrize("num_samples", [100, 500, 2000])
def test_khat_matches_arviz(num_samples):
    generator = np.random.default_rng(0)
    rows = []
    # log weights of increasingly heavy tails: normal, Student-t with 4, 2 and 1 degrees of freedom, Pareto
    rows += [generator.normal(size=num_samples) for _ in range(3)]
    for df in (4.0, 2.0, 1.0):
        rows += [np.log(np.abs(generator.standard_t(df, size=num_samples))) for _ in range(3)]
    rows += [np.log(generator.pareto(a, size=num_samples) + 1.0) for a in (0.8, 1.5, 3.0)]
    log_weights = np.stack(rows)
    expected = arviz_khat(log_weights)
    ours = psis_khat(torch.from_numpy(log_weights)).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=1e-6)


def test_khat_recovers_a_known_pareto_shape():
    # weights ~ Pareto with tail index a have generalised-Pareto shape k = 1/a
    generator = np.random.default_rng(1)
    a = 1.25
    log_weights = np.log(generator.pareto(a, size=(50, 4000)) + 1.0)
    khat = psis_khat(torch.from_numpy(log_weights))
    assert abs(khat.mean().item() - 1 / a) < 0.05


def test_khat_shapes_and_degenerate_rows():
    log_weights = torch.randn(3, 4, 200)
    log_weights[0, 0] = 1.5  # constant weights: bounded, k = -inf
    khat = psis_khat(log_weights)
    assert khat.shape == (3, 4)
    assert khat[0, 0] == -math.inf
    assert torch.isfinite(khat.flatten()[1:]).all()
    assert psis_khat(torch.randn(2, 20)).isinf().all()  # too few samples to fit a tail
    assert psis_tail_length(100) == 20 and psis_tail_length(10000) == 300
