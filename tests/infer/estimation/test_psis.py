"""Pareto k-hat against arviz's reference implementation."""

import math

import numpy as np
import pytest
import torch

from pyrovae.infer.estimation.psis import khat_limit, psis_khat, psis_tail_length
from pyrovae.infer.estimation.result import LogLikelihood


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


def test_khat_matches_arviz_on_ties_rounding_infinities_and_wide_spreads():
    generator = np.random.default_rng(2)
    rows = [
        (-150 + 3e-5 * generator.standard_normal(1000)).astype(np.float32).astype(np.float64),  # float32 ties
        np.round(generator.normal(size=1000), 1),  # many ties, also at the cutoff
        np.concatenate([generator.normal(size=990), np.full(10, 2.5)]),  # the largest weights tie
        np.where(generator.random(1000) < 0.3, -np.inf, generator.normal(size=1000)),  # -inf entries
        generator.normal(scale=300.0, size=1000),  # a spread over 700 nats
        np.log(generator.pareto(0.7, size=1000) + 1.0) * 40,  # extreme weights
    ]
    log_weights = np.stack(rows)
    expected = arviz_khat(log_weights)
    ours = psis_khat(torch.from_numpy(log_weights), resolution=1e-16).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=1e-6)


def test_weights_equal_up_to_their_own_rounding_are_not_a_tail():
    """An exact guide in float32: log-weights constant up to float32 rounding, upcast to float64."""
    generator = np.random.default_rng(3)
    rounded = torch.from_numpy((-150 + 3e-5 * generator.standard_normal((20, 500))).astype(np.float32))
    khat = psis_khat(rounded.double(), resolution=torch.finfo(torch.float32).eps)
    assert (khat < 0.5).all()
    assert (psis_khat(rounded) < 0.5).all()  # in their own dtype the resolution is known


def test_a_heavy_tail_of_large_float32_log_weights_is_not_read_as_constant():
    """Pareto weights of shape k = 1 at |log w| = 1e6, computed in float32 (ulp 0.06 there): their tail spreads
    over about 4 nats, which a margin of 64 ulps (7.6 nats) read as rounding: k-hat -inf and certified. At 1e7 even
    8 ulps are wider than the tail: too coarse to judge, inf."""
    generator = torch.Generator().manual_seed(0)
    log_weights = (-1e6 - torch.log(torch.rand(100, 500, generator=generator, dtype=torch.float64))).float()
    khat = psis_khat(log_weights.double(), resolution=torch.finfo(torch.float32).eps)
    assert not (khat == -math.inf).any() and (khat > khat_limit(500)).float().mean() > 0.8
    coarser = (log_weights.double() - 9e6).float()  # |log w| = 1e7: 8 ulps are 9.5 nats, wider than the tail
    assert (psis_khat(coarser.double(), resolution=torch.finfo(torch.float32).eps) == math.inf).all()


def test_rows_with_undefined_weights_are_never_read_as_reliable():
    """NaN (an undefined weight), +inf (an infinite one) and all -inf (no weight at all: log p = -inf) get inf,
    never -inf (the 'bounded weights' answer) nor NaN (which 'khat > 0.7' would miss); other rows are unchanged."""
    generator = np.random.default_rng(4)
    rows = torch.from_numpy(generator.normal(size=(6, 500)))
    reference = psis_khat(rows)
    rows[0] = math.nan
    rows[1] = -math.inf
    rows[2, 17] = math.nan
    rows[3, 5] = math.inf
    rows[4] = 2.0  # constant weights: bounded, as before
    khat = psis_khat(rows)
    assert (khat[:4] == math.inf).all()
    assert khat[4] == -math.inf and khat[5] == reference[5]
    assert not khat.isnan().any() and ((khat > 0.7) == torch.tensor([True] * 4 + [False] * 2)).all()
    for dtype in (torch.float32, torch.float64):
        assert psis_khat(torch.full((3, 200), math.nan, dtype=dtype)).eq(math.inf).all()
        assert psis_khat(torch.full((200,), -math.inf, dtype=dtype)) == math.inf


def test_the_khat_limit_grows_with_the_draws_to_0_7():
    """Vehtari et al. (2024)'s min(1 - 1 / log10 S, 0.7): 0.5 at 100 draws, 0.63 at 500, 0.7 from 2,154."""
    assert khat_limit(100) == pytest.approx(0.5) and khat_limit(500) == pytest.approx(1 - 1 / math.log10(500))
    assert khat_limit(2154) == pytest.approx(0.7, abs=1e-4) and khat_limit(10**6) == 0.7
    assert khat_limit(1) == -math.inf and khat_limit(10) == 0.0
    draws = torch.tensor([1, 10, 100, 500, 2154, 10**6])
    expected = [khat_limit(int(s)) for s in draws]
    assert torch.allclose(khat_limit(draws), torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_certificates_follow_the_limit_of_each_datums_draws():
    khat = torch.tensor([0.45, 0.55, 0.65, 0.65])
    ess = torch.full((4,), 50.0)
    result = LogLikelihood(torch.zeros(4), khat, 500, ess=ess)
    assert result.certified.tolist() == [True, True, False, False]
    assert result.reasons()[2] == "k-hat 0.65 > 0.63" and result.flagged.tolist() == [False, False, True, True]
    per_datum_draws = LogLikelihood(torch.zeros(4), khat, 500, ess=ess, draws=torch.tensor([100, 100, 500, 3000]))
    assert per_datum_draws.certified.tolist() == [True, False, False, True]  # limits 0.5, 0.5, 0.63, 0.7


def test_the_monte_carlo_error_is_honest_below_k_one_half_and_understated_above():
    """Weights with a known Pareto tail (shape k): the estimate's error exceeds twice mc_stderr for about 5% of the
    certified data at k = 0.3, as a standard error should, and for more at k = 0.55, where the weights' variance is
    infinite (the figures :attr:`LogLikelihood.mc_stderr` quotes)."""
    generator = np.random.default_rng(0)
    shares = {}
    for k in (0.3, 0.55):
        a = 1 / k
        log_weights = torch.from_numpy(np.log(generator.pareto(a, size=(500, 2000)) + 1.0))  # mean a / (a - 1)
        normalised = log_weights - log_weights.max(0).values
        ess = normalised.logsumexp(0).mul(2).sub(normalised.mul(2).logsumexp(0)).exp()
        result = LogLikelihood(log_weights.logsumexp(0) - math.log(500), psis_khat(log_weights.T), 500, ess=ess)
        error = (result.per_datum - math.log(a / (a - 1))).abs()
        shares[k] = float((error > 2 * result.mc_stderr)[result.certified].double().mean())
    assert 0.03 < shares[0.3] < 0.075 and shares[0.55] > 0.12


def test_an_undefined_weight_flags_its_datum_and_leaves_the_elbo_of_the_rest(monkeypatch):
    """A NaN log-weight counts as no weight in log p(x) and flags its datum (k-hat inf); the ELBO, the mean log
    weight, was -inf for that datum and so for the whole set: it is now the mean over the defined draws."""
    import importlib
    from types import SimpleNamespace

    module = importlib.import_module("pyrovae.infer.estimation.log_likelihood")

    log_weights = torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_weights[7, 1] = math.nan
    monkeypatch.setattr(module, "importance_draws", lambda *args: SimpleNamespace(
        log_weights=log_weights, collapsed=torch.zeros(3, dtype=torch.bool)))
    estimate = module.estimate_batch(None, None, (torch.zeros(3, 1),), 200, 200, 1)
    assert estimate.khat[1] == math.inf and estimate.undefined == 1
    keep = torch.arange(200) != 7
    torch.testing.assert_close(estimate.mean_log_weight, torch.stack(
        [log_weights[:, 0].mean(), log_weights[keep, 1].mean(), log_weights[:, 2].mean()]))
    assert estimate.per_datum[1] == torch.logsumexp(log_weights[keep, 1], 0) - math.log(200)
