"""One contract, checked for every distribution and likelihood the library defines (issue 14).

Each entry of ``CASES`` builds a distribution with a batch of two (different parameters per element) in a given
dtype; adding a distribution means adding a line. For each case, against an independent reference:

* normalisation: a sum over the counts, or an integral by adaptive quadrature (on the sphere, of the density of
  the cosine w = loc . z, times the area |S^(m-2)| (1 - w^2)^((m-3)/2) of its level sets);
* mean and variance against 40,000 samples (5 standard errors), entropy against -E[log p];
* pathwise gradients of E[f(z)] (``rsample``) against central finite differences of the closed-form mean;
* ``expand`` honours ``_instance`` and keeps ``_validate_args``; ``arg_constraints`` is keyed by constructor
  arguments; ``validate_args`` refuses values off the support; float32 ``log_prob`` agrees with float64.

The cases are in ``contract_cases.py``; what Pyro's generic tests check, in ``test_contract_generic.py``.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from pyrovae.distributions import DefensiveMixture
from pyrovae.distributions.sphere import log_sphere_area
from tests.distributions.contract_cases import CASES, DTYPES, NUM_SAMPLES


def _base(distribution):
    while hasattr(distribution, "base_dist"):
        distribution = distribution.base_dist
    return distribution


def _sphere_points(loc: torch.Tensor, w: float) -> torch.Tensor:
    """Points of cosine ``w`` to each row of ``loc``: w loc + sqrt(1 - w^2) u, u a unit vector orthogonal to loc."""
    other = torch.zeros_like(loc)
    other[..., 0] = 1.0
    other[..., 1] += 0.5
    u = other - (other * loc).sum(-1, keepdim=True) * loc
    u = u / u.norm(dim=-1, keepdim=True)
    return w * loc + math.sqrt(max(1 - w * w, 0.0)) * u


def _axis(d):
    """The distribution with the mean direction and concentration: itself, or a defensive mixture's proposal (its
    wide component shares the direction, so the density is a function of loc . z too)."""
    return d.proposal if isinstance(d, DefensiveMixture) else d


def _sphere_integral(d, index: int, power: int = 0) -> float:
    """Integral of w^power times the density over S^(m-1), as a 1-D integral over w (in u = 1 - w near the mode):
    the normaliser for power 0, E[loc . z] for power 1."""
    m = d.event_shape[0]
    loc = _axis(d).loc if hasattr(_axis(d), "loc") else torch.eye(m, dtype=torch.float64)[:2]
    nu = 0.5 * (m - 3)
    log_level_area = log_sphere_area(m - 1) if m > 2 else math.log(2.0)  # |S^(m-2)|; two points on S^0

    def integrand(u: float) -> float:
        w = 1.0 - u
        z = _sphere_points(loc.double(), w)
        log_density = float(d.log_prob(z.to(loc.dtype))[index])
        return w**power * math.exp(log_density + log_level_area + nu * math.log(max(u * (2 - u), 1e-300)))

    kappa = float(_axis(d).concentration[index]) if hasattr(_axis(d), "concentration") else 1.0
    scale = min(2.0, (m + 1) / max(kappa, 1e-9))
    points = [p for p in (scale / 100, scale / 10, scale, 2 * scale, 10 * scale) if p < 2]
    value, _ = integrate.quad(integrand, 0.0, 2.0, points=points, limit=400, epsabs=1e-11, epsrel=1e-9)
    return value


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_normalisation_and_the_mean_the_density_implies(case):
    """The density sums or integrates to one, and its own first (and, for counts, second) moment is the
    ``mean`` (``variance``) the distribution reports: a log_prob out of step with the parameters shows here."""
    d = case.build(torch.float64)
    for index in range(2):
        if case.kind == "sphere":
            total = _sphere_integral(d, index)
            axis = _axis(d)
            loc = axis.loc[index] if hasattr(axis, "loc") else torch.eye(d.event_shape[0], dtype=torch.float64)[index]
            implied = _sphere_integral(d, index, power=1)
            assert implied == pytest.approx(float((d.mean[index] * loc).sum()), abs=1e-7), (case.name, index)
        elif case.kind == "count":
            top = int(d.mean[index] + 60 * d.variance[index].sqrt() + 60)
            values = torch.arange(top + 1, dtype=torch.float64).unsqueeze(-1).expand(-1, 2)
            pmf = d.log_prob(values)[:, index].exp()
            total = float(pmf.sum())
            mean = float((pmf * values[:, 0]).sum())
            assert mean == pytest.approx(float(d.mean[index]), rel=1e-7), (case.name, index)
            variance = float((pmf * (values[:, 0] - mean) ** 2).sum())
            assert variance == pytest.approx(float(d.variance[index]), rel=1e-6), (case.name, index)
        else:
            low, high = (0.0, 1.0) if case.kind == "unit" else (-math.inf, math.inf)

            def density(x, index=index):
                value = torch.tensor([[x], [x]], dtype=torch.float64)
                return math.exp(float(d.log_prob(value)[index]))

            total, _ = integrate.quad(density, low, high, epsabs=1e-12, epsrel=1e-10, limit=200)
        assert total == pytest.approx(1.0, abs=1e-7), (case.name, index, total)


@pytest.mark.parametrize("case", [c for c in CASES if c.sampled_moments], ids=repr)
def test_moments_and_entropy_against_samples(case):
    torch.manual_seed(0)
    d = case.build(torch.float64)
    x = d.sample((NUM_SAMPLES,))
    log_p = d.log_prob(x)
    sample_mean = x.mean(0)
    stderr = x.std(0) / math.sqrt(NUM_SAMPLES)
    assert ((sample_mean - d.mean).abs() <= 5 * stderr + 1e-12).all(), (case.name, sample_mean, d.mean)
    try:
        variance = d.variance
    except NotImplementedError:
        variance = None
    if variance is not None:
        centred = (x - d.mean) ** 2
        variance_stderr = centred.std(0) / math.sqrt(NUM_SAMPLES)
        assert ((centred.mean(0) - variance).abs() <= 5 * variance_stderr + 1e-12).all(), case.name
    try:
        entropy = d.entropy()
    except NotImplementedError:
        return
    assert ((-log_p.mean(0) - entropy).abs() <= 5 * log_p.std(0) / math.sqrt(NUM_SAMPLES) + 1e-9).all(), case.name


RSAMPLE_CASES = [c for c in CASES if c.mean_parameter is not None and c.build(torch.float64).has_rsample]


@pytest.mark.parametrize("case", RSAMPLE_CASES, ids=repr)
def test_pathwise_gradient_equals_finite_differences_of_the_mean(case):
    """d/d theta E[a . z] by rsample (Monte Carlo, 5 standard errors) against the central difference of the
    closed-form mean, (mean(theta + h) - mean(theta - h)) / 2h."""
    torch.manual_seed(1)
    d = case.build(torch.float64)
    direction = torch.randn(d.event_shape, dtype=torch.float64)
    parameter = getattr(d, case.mean_parameter).detach().clone().requires_grad_()
    rebuilt = type(d)(d.loc, parameter)
    # 20 independent batches, one backward each (the two batch elements have separate parameters): their mean is
    # the estimate, their spread its Monte Carlo error
    batch_gradients = torch.stack([
        torch.autograd.grad((rebuilt.rsample((NUM_SAMPLES // 20,)) * direction).sum(-1).mean(0).sum(), parameter)[0]
        for _ in range(20)
    ])
    gradients, stderr = batch_gradients.mean(0), batch_gradients.std(0) / math.sqrt(20)
    step = 1e-4 * parameter.detach()
    plus = (type(d)(d.loc, parameter.detach() + step).mean * direction).sum(-1)
    minus = (type(d)(d.loc, parameter.detach() - step).mean * direction).sum(-1)
    expected = (plus - minus) / (2 * step)
    assert ((gradients - expected).abs() <= 5 * stderr + 1e-6).all(), (case.name, gradients, expected)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_expand_honours_instance_and_keeps_validation(case):
    for validate in (True, False):
        d = case.build(torch.float64)
        d._validate_args = validate
        shape = torch.Size([3]) + d.batch_shape
        expanded = d.expand(shape)
        assert type(expanded) is type(d) and expanded.batch_shape == shape and expanded.event_shape == d.event_shape
        assert expanded._validate_args == validate
        instance = type(d).__new__(type(d))
        assert d.expand(shape, _instance=instance) is instance and instance.batch_shape == shape
        x = d.sample()
        torch.testing.assert_close(expanded.log_prob(x.expand(shape + d.event_shape))[0], d.log_prob(x))


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_arg_constraints_are_keyed_by_constructor_arguments(case):
    d = case.build(torch.float64)
    arguments = set(inspect.signature(type(d).__init__).parameters)
    assert set(d.arg_constraints) <= arguments, (case.name, set(d.arg_constraints) - arguments)
    for name in d.arg_constraints:
        getattr(d, name)  # each is also an attribute, as torch's validation reads it


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [c for c in CASES if c.off_support is not None], ids=repr)
def test_validation_refuses_values_off_the_support(case, dtype):
    d = case.build(dtype)
    d._validate_args = True
    for checked in (d, d.expand((3,) + d.batch_shape)):
        with pytest.raises(ValueError, match="support"):
            checked.log_prob(case.off_support(dtype))


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_float32_log_prob_agrees_with_float64(case):
    torch.manual_seed(2)
    double = case.build(torch.float64)
    x = double.sample((200,))
    single = case.build(torch.float32)
    expected = double.log_prob(x)
    got = single.log_prob(x.float()).double()
    dimension_factor = np.sqrt(double.event_shape.numel()) if case.kind == "sphere" else 1.0
    tolerance = 1e-4 * expected.abs().clamp(min=1) * dimension_factor
    assert ((got - expected).abs() <= tolerance).all(), (case.name, (got - expected).abs().max())
