"""One contract, checked for every distribution and likelihood the library defines (issue 14).

Each entry of ``CASES`` builds a distribution with a batch of two (different parameters per element) in a given
dtype; adding a distribution means adding a line. For each case, against an independent reference:

* normalisation: a sum over the counts, or an integral by adaptive quadrature (on the sphere, of the density of
  the cosine w = loc . z, times the area |S^(m-2)| (1 - w^2)^((m-3)/2) of its level sets);
* mean and variance against 40,000 samples (5 standard errors), entropy against -E[log p];
* pathwise gradients of E[f(z)] (``rsample``) against central finite differences of the closed-form mean;
* ``expand`` honours ``_instance`` and keeps ``_validate_args``; ``arg_constraints`` is keyed by constructor
  arguments; ``validate_args`` refuses values off the support; float32 ``log_prob`` agrees with float64.

And what Pyro's generic distribution tests and torch's generic loops check (issue 24), in float32 and float64:

* ``log_prob`` does not depend on earlier calls (``sample``, ``rsample``, ``mean``, ``variance``, ``entropy``,
  ``gate``, ``expand`` read first; a cached gate once turned a zero-inflated -22.3 into -inf);
* ``expand`` after use and repeated expands give the same shapes and values, and a shape that does not
  broadcast is refused (``ValueError`` for the library's own classes);
* ``infer_shapes`` agrees with the constructor (or says why it cannot, ``NotImplementedError``);
* ``support`` is a ``Constraint`` on the class and the instance, and holds for samples;
* a pickling round trip keeps type, shapes and ``log_prob``;
* samples have ``sample_shape + batch_shape + event_shape`` for empty, zero-size and nested sample shapes, and
  ``log_prob`` broadcasts values against the batch;
* ``enumerate_support`` where it is defined sums to one, and is refused where it is not;
* ``rsample`` sends finite gradients to every parameter (or is refused where ``has_rsample`` is false).
"""

from __future__ import annotations

import inspect
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy import integrate
from torch.distributions import constraints

from pyrovae.distributions import (
    DefensiveMixture,
    HypersphericalUniform,
    NegativeBinomial,
    Poisson,
    PowerSpherical,
    VonMisesFisher,
    ZeroInflatedNegativeBinomial,
    ZeroInflatedPoisson,
    widen,
)
from pyrovae.distributions.sphere import log_sphere_area
from pyrovae.likelihoods import get_likelihood

NUM_SAMPLES = 40_000
DTYPES = [torch.float32, torch.float64]


def _loc(m: int, dtype) -> torch.Tensor:
    """Two unit mean directions in R^m."""
    raw = torch.randn(2, m, generator=torch.Generator().manual_seed(m), dtype=torch.float64)
    return (raw / raw.norm(dim=-1, keepdim=True)).to(dtype)


@dataclass
class Case:
    name: str
    build: Callable[[torch.dtype], torch.distributions.Distribution]
    kind: str  # "sphere", "count", "unit" (per feature on [0, 1]) or "real"
    off_support: Callable[[torch.dtype], torch.Tensor] | None = None
    mean_parameter: str | None = None  # a parameter whose pathwise gradient of E[z] is checked
    # False where a rare event (a gate of sigmoid(20) = 1 - 2e-9, a rate of 1e-6) leaves every one of the draws
    # alike, so that the samples' standard errors are 0; the mean and variance are still checked against the pmf
    sampled_moments: bool = True

    def __repr__(self) -> str:
        return self.name


def _off_sphere(m: int):
    def off(dtype):
        return torch.full((2, m), 0.9, dtype=dtype)  # not unit vectors

    return off


def _spherical(family, m: int, kappa: float):
    def build(dtype):
        return family(_loc(m, dtype), torch.tensor([kappa, 2 * kappa], dtype=dtype))

    return build


def _uniform(m: int):
    def build(dtype):
        return HypersphericalUniform(m, batch_shape=(2,), dtype=dtype)

    return build


def _sphere_cases() -> list[Case]:
    cases = []
    for m in (2, 3, 5, 10, 64, 256):
        for kappa in (0.5, float(m), 20.0 * m):
            for family in (VonMisesFisher, PowerSpherical):
                cases.append(Case(f"{family.__name__} m={m} kappa={kappa:g}", _spherical(family, m, kappa), "sphere",
                                  _off_sphere(m), "concentration"))
        cases.append(Case(f"HypersphericalUniform m={m}", _uniform(m), "sphere", _off_sphere(m)))
    return cases


def _tensor(values, dtype):
    return torch.tensor(values, dtype=dtype)


def COUNT_OFF(dtype):  # noqa: N802 - a constant of the table below
    return torch.tensor([-1.0, 0.5], dtype=dtype)  # negative, and not an integer


def _defensive_sphere(dtype):
    proposal = VonMisesFisher(_loc(6, dtype), _tensor([4.0, 40.0], dtype))
    return DefensiveMixture(proposal, widen(proposal, 2.0), 0.2)


def _defensive_real(dtype):
    proposal = dist.Normal(_tensor([[-1.0], [2.0]], dtype), _tensor([[0.5], [1.5]], dtype)).to_event(1)
    return DefensiveMixture(proposal, widen(proposal, 2.0, df=10.0), 0.3)


CASES = [
    *_sphere_cases(),
    Case("NegativeBinomial", lambda d: NegativeBinomial(_tensor([0.3, 25.0], d), _tensor([0.7, 4.0], d)), "count",
         COUNT_OFF),
    Case("NegativeBinomial near Poisson", lambda d: NegativeBinomial(_tensor([2.0, 9.0], d), _tensor([1e6, 1e4], d)),
         "count", COUNT_OFF),
    Case("Poisson", lambda d: Poisson(_tensor([0.2, 40.0], d)), "count", COUNT_OFF),
    Case("ZeroInflatedPoisson", lambda d: ZeroInflatedPoisson(_tensor([3.0, 12.0], d), _tensor([-1.0, 2.0], d)),
         "count", COUNT_OFF),
    Case("ZeroInflatedNegativeBinomial",
         lambda d: ZeroInflatedNegativeBinomial(_tensor([4.0, 0.5], d), _tensor([2.0, 0.3], d),
                                                _tensor([0.5, -3.0], d)),
         "count", COUNT_OFF),
    Case("NegativeBinomial Poisson limit (theta = inf)",
         lambda d: NegativeBinomial(_tensor([2.0, 9.0], d), _tensor([math.inf, math.inf], d)), "count", COUNT_OFF),
    Case("Poisson extreme rates", lambda d: Poisson(_tensor([1e-6, 3e3], d)), "count", COUNT_OFF,
         sampled_moments=False),
    Case("ZeroInflatedPoisson saturated gates",
         lambda d: ZeroInflatedPoisson(_tensor([3.0, 12.0], d), _tensor([40.0, -40.0], d)), "count", COUNT_OFF,
         sampled_moments=False),
    Case("ZeroInflatedNegativeBinomial saturated gates",
         lambda d: ZeroInflatedNegativeBinomial(_tensor([2.0, 30.0], d), _tensor([1.0, 0.5], d),
                                                _tensor([20.0, -20.0], d)),
         "count", COUNT_OFF, sampled_moments=False),
    Case("DefensiveMixture vMF", _defensive_sphere, "sphere", _off_sphere(6)),
    Case("DefensiveMixture Normal + Student-t", _defensive_real, "real"),
    Case("continuous_bernoulli likelihood",
         lambda d: get_likelihood("continuous_bernoulli", 1)(_tensor([[-3.0], [0.7]], d)), "unit",
         lambda d: torch.tensor([[1.5], [-0.2]], dtype=d)),
    Case("gaussian likelihood (learned scale)",
         lambda d: get_likelihood("gaussian", 1).to(d)(_tensor([[-1.0], [2.5]], d)), "real"),
]


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


# What Pyro's generic distribution tests and torch's generic loops check, for every case and both dtypes.


def _own(case) -> bool:
    """A distribution class of this library (the likelihoods' cases are Pyro's own Independent wrappers)."""
    return type(case.build(torch.float64)).__module__.startswith("pyrovae")


OWN_CASES = [c for c in CASES if _own(c)]


def _probe(case, dtype) -> torch.Tensor:
    """Four values for each batch element: zero and non-zero counts, or draws of the float64 distribution."""
    if case.kind == "count":
        return torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 3.0], [17.0, 17.0]], dtype=dtype)
    torch.manual_seed(5)
    return case.build(torch.float64).sample((4,)).detach().to(dtype)


def _use(d) -> None:
    """Read everything but ``log_prob`` that a distribution offers (each may cache something)."""
    d.sample()
    d.sample((2,))
    if d.has_rsample:
        d.rsample()
    for name in ("mean", "variance", "stddev"):
        try:
            getattr(d, name)
        except NotImplementedError:
            pass
    try:
        d.entropy()
    except NotImplementedError:
        pass
    if hasattr(d, "gate"):
        d.gate  # noqa: B018 - Pyro's zero-inflated class cached it and changed its log_prob
    d.expand((2,) + d.batch_shape)


def _constructor_arguments(d) -> dict:
    """The tensors the distribution was built from, by constructor argument name."""
    if isinstance(d, ZeroInflatedNegativeBinomial):  # its .mean is the zero-inflated mean, not the argument
        return {"mean": d.mu, "inverse_dispersion": d.theta, "gate_logits": d.gate_logits}
    return {name: getattr(d, name) for name in d.arg_constraints}


def _has_independent(d) -> bool:
    """Whether log_prob goes through torch's Independent, which cannot score a zero-size value (its
    ``_sum_rightmost`` reshapes to (..., -1)): torch's limitation, not the contract's."""
    return isinstance(d, torch.distributions.Independent) or (
        isinstance(d, DefensiveMixture) and _has_independent(d.proposal))


def _batched(value: torch.Tensor, d, new_dims: int) -> torch.Tensor:
    """``value`` of shape (n,) + batch + event with ``new_dims`` singleton dimensions after the first."""
    return value.reshape(value.shape[:1] + (1,) * new_dims + value.shape[1:])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_log_prob_does_not_depend_on_earlier_calls(case, dtype):
    probe = _probe(case, dtype)
    d = case.build(dtype)
    first = d.log_prob(probe)
    _use(d)
    assert torch.equal(d.log_prob(probe), first), case.name
    used_first = case.build(dtype)  # everything read before the first log_prob
    _use(used_first)
    assert torch.equal(used_first.log_prob(probe), first), case.name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_expand_after_use_and_repeated_expands(case, dtype):
    probe = _probe(case, dtype)
    d = case.build(dtype)
    _use(d)
    reference = d.log_prob(probe)  # (4,) + batch
    batch = d.batch_shape
    once = d.expand((3,) + batch)
    twice = once.expand((5, 3) + batch)
    direct = d.expand((5, 3) + batch)
    same = d.expand(batch)
    for expanded, new_dims in ((once, 1), (twice, 2), (direct, 2), (same, 0)):
        _use(expanded)
        shape = (5, 3)[2 - new_dims:] + tuple(batch)
        assert expanded.batch_shape == shape and expanded.event_shape == d.event_shape, case.name
        assert expanded.sample().shape == shape + d.event_shape
        got = expanded.log_prob(_batched(probe, d, new_dims))
        torch.testing.assert_close(got, _batched(reference, d, new_dims).expand(got.shape))
    errors = ValueError if _own(case) else (ValueError, RuntimeError)
    with pytest.raises(errors):
        d.expand((3,))  # a batch of two cannot become a batch of three


@pytest.mark.parametrize("case", OWN_CASES, ids=repr)
def test_infer_shapes_agrees_with_the_constructor(case):
    d = case.build(torch.float64)
    cls = type(d)
    if isinstance(d, HypersphericalUniform):
        assert cls.infer_shapes(dim=d.dim, batch_shape=d.batch_shape) == (d.batch_shape, d.event_shape)
        return
    if isinstance(d, DefensiveMixture):
        with pytest.raises(NotImplementedError, match="distributions"):
            cls.infer_shapes()
        return
    arguments = _constructor_arguments(d)
    assert cls.infer_shapes(**{k: v.shape for k, v in arguments.items()}) == (d.batch_shape, d.event_shape)
    for name, value in arguments.items():  # one argument with a leading dimension of 3: broadcast
        wider = {**arguments, name: value.unsqueeze(0).expand((3,) + value.shape)}
        rebuilt = cls(**wider)
        inferred = cls.infer_shapes(**{k: v.shape for k, v in wider.items()})
        assert inferred == (rebuilt.batch_shape, rebuilt.event_shape), (case.name, name)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_support_is_a_constraint(case):
    d = case.build(torch.float64)
    assert isinstance(type(d).support, constraints.Constraint), case.name  # a constraint or dependent_property
    assert isinstance(d.support, constraints.Constraint) and not constraints.is_dependent(d.support)
    assert d.support.check(d.sample((3,))).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_pickling_round_trip(case, dtype):
    probe = _probe(case, dtype)
    d = case.build(dtype)
    _use(d)
    for original in (d, d.expand((3,) + d.batch_shape)):
        copy = pickle.loads(pickle.dumps(original))
        assert type(copy) is type(original) and copy.batch_shape == original.batch_shape
        assert copy.event_shape == original.event_shape and copy._validate_args == original._validate_args
        value = _batched(probe, original, len(original.batch_shape) - len(d.batch_shape))
        assert torch.equal(copy.log_prob(value), original.log_prob(value)), case.name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_sample_shapes_and_dtypes(case, dtype):
    """sample_shape + batch_shape + event_shape for empty, nested and zero-size sample shapes and batches (a vMF's
    rsample((0,)) raised a NameError), and log_prob of sample_shape + batch_shape."""
    d = case.build(dtype)
    empty_batch = d.expand((0,) + d.batch_shape)
    for distribution in (d, empty_batch):
        methods = [distribution.sample] + ([distribution.rsample] if d.has_rsample else [])
        for sample_shape in [(), (3,), (2, 1), (0,), (3, 0)]:
            for method in methods:
                x = method(sample_shape)
                expected = torch.Size(sample_shape) + distribution.batch_shape
                assert x.shape == expected + d.event_shape and x.dtype == dtype, (case.name, sample_shape)
                if x.numel() or not _has_independent(d):
                    assert distribution.log_prob(x).shape == expected


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_enumerate_support_where_defined(case):
    d = case.build(torch.float64)
    if not d.has_enumerate_support:
        with pytest.raises(NotImplementedError):
            d.enumerate_support()
        return
    values = d.enumerate_support(expand=False)
    total = torch.logsumexp(d.log_prob(values), 0)
    torch.testing.assert_close(total, torch.zeros_like(total))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", OWN_CASES, ids=repr)
def test_rsample_sends_finite_gradients_to_every_parameter(case, dtype):
    d = case.build(dtype)
    if not d.has_rsample:
        with pytest.raises(NotImplementedError):
            d.rsample()
        return
    torch.manual_seed(3)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in _constructor_arguments(d).items()}
    if not leaves:  # the uniform: nothing to differentiate, and nothing claims a gradient
        assert not d.rsample((4,)).requires_grad
        return
    z = type(d)(**leaves).rsample((16,))
    direction = torch.randn(d.event_shape, dtype=dtype)
    grads = torch.autograd.grad((z * direction).sum(), list(leaves.values()))
    for (name, leaf), grad in zip(leaves.items(), grads):
        assert grad.dtype == dtype and grad.shape == leaf.shape, (case.name, name)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, (case.name, name, grad)
