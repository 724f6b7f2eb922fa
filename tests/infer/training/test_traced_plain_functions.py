"""train(elbo="jit") on plain Pyro functions whose parameters live in the param store (pyro.module, pyro.param):
traced with those leaves as inputs, as Pyro's JitTrace_ELBO does, it equals the untraced objective and trains
(issue 24)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyrovae.models import VAE

from pyrovae.data import two_groups
from pyrovae.infer import make_objective, train


@pytest.fixture(autouse=True)
def clean_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def data():
    return two_groups(num_per_group=48).x  # (96, 15)


def module_guide():
    """A plain-function guide whose encoder is registered with pyro.module."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(15, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))

    def guide(x):
        pyro.module("encoder", encoder)
        loc, raw_scale = encoder(x).split(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, torch.nn.functional.softplus(raw_scale) + 1e-3).to_event(1))

    torch.manual_seed(1)
    return VAE(15, 2, hidden=(6,), likelihood="gaussian"), guide, lambda: list(encoder.parameters())


def param_pair():
    """A plain-function model and guide with pyro.param leaves only, one of them constrained positive."""

    def model(x):
        loc = pyro.param("loc", torch.zeros(15))
        scale = pyro.param("scale", torch.ones(15), constraint=constraints.positive)
        weight = pyro.param("weight", 0.1 * torch.ones(2, 15))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(loc + z @ weight, scale).to_event(1), obs=x)

    def guide(x):
        projection = pyro.param("projection", 0.1 * torch.ones(15, 2))
        spread = pyro.param("spread", torch.ones(2), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ projection, spread).to_event(1))

    x = data()[:2]
    model(x), guide(x)  # the leaves exist from here on
    return model, guide, lambda: [pyro.param(n).unconstrained() for n in
                                  ("loc", "scale", "weight", "projection", "spread")]


@pytest.mark.parametrize("make", [module_guide, param_pair])
def test_the_traced_objective_equals_the_untraced_one(make):
    model, guide, leaves = make()
    x = data()[:32]
    scales = torch.tensor([3.0, 0.7])
    plain, traced = (make_objective(name, model, guide)[0] for name in ("trace", "jit"))
    results = []
    for objective in (plain, traced, traced):  # the second traced call runs the cached trace
        pyro.set_rng_seed(4)
        loss = objective(x, scales)
        results.append((loss.detach(), torch.autograd.grad(loss, leaves())))
    (want, want_grads), *rest = results
    for got, got_grads in rest:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert any(g.abs().max() > 0 for g in got_grads)  # the store's leaves are inputs of the trace


@pytest.mark.parametrize("make", [module_guide, param_pair])
@pytest.mark.parametrize("elbo", ["jit", "trace", pyro.infer.JitTrace_ELBO()])
def test_plain_functions_with_store_parameters_train_traced_and_untraced(make, elbo):
    model, guide, leaves = make()
    before = [p.detach().clone() for p in leaves()]
    history = train(model, guide, data(), epochs=12, batch_size=32, lr=0.05, elbo=elbo, eval_size=0,
                    progress=False, seed=0)
    assert history["loss"][-1] < history["loss"][0] - 1.0
    assert all(not torch.equal(a, b) for a, b in zip(before, leaves()))
