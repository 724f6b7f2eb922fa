"""What Pyro's generic distribution tests and torch's generic loops check (issue 24), for every case of
``contract_cases.py`` in float32 and float64:

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

import pickle

import pytest
import torch
from torch.distributions import constraints

from pyrovae.distributions import DefensiveMixture, HypersphericalUniform, ZeroInflatedNegativeBinomial
from tests.distributions.contract_cases import CASES, DTYPES


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
