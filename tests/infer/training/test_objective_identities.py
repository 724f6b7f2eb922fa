"""The objectives against hand computations and against Pyro's own ELBOs, for the VAE, the S-VAE and the GMVAE
(issue 14): the data-plate scaling, the KL weight, the IWAE bound, and ``evaluate``."""

import math

import pyro
import pyro.infer as pinfer
import pytest
import torch
from pyrovae.guides import GMVAEGuide, NormalGuide, VMFGuide
from pyrovae.models import GMVAE, SVAE, VAE

from pyrovae.infer import evaluate, make_objective


def binary(n=16, d=12):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64).round()


def pair(kind):
    torch.manual_seed(1)
    if kind == "vae":
        return VAE(12, 3, (8,)).double(), NormalGuide(12, 3, (8,)).double()
    if kind == "svae":
        return SVAE(12, 4, (8,)).double(), VMFGuide(12, 4, (8,)).double()
    return GMVAE(12, 3, 4, (8,)).double(), GMVAEGuide(12, 3, (8,), num_components=4).double()


def hand_log_weights(model, guide, x, num_samples):
    """log p(x_i | z) + log p(z) - log q(z | x_i) for z ~ q(z | x_i), written out with the modules' parts; the draws
    are the same as the objectives' (one rsample of shape (S, B, ...) from q)."""
    q = guide.encode(x)
    z = q.rsample((num_samples,))  # (S, B, latent)
    return model.decode(z).log_prob(x) + model.prior().log_prob(z) - q.log_prob(z)


@pytest.mark.parametrize("kind", ["vae", "svae"])
def test_elbo_scaling_and_kl_weight_against_a_hand_computation(kind):
    model, guide = pair(kind)
    x = binary()
    data_scale, beta = 7.0, 0.4
    objective, _ = make_objective("trace", model, guide)
    pyro.set_rng_seed(3)
    loss = objective(x, torch.tensor([data_scale, beta], dtype=torch.float64))
    pyro.set_rng_seed(3)
    q = guide.encode(x)
    z = q.rsample()
    latent = model.prior().log_prob(z) - q.log_prob(z)
    expected = -data_scale * (model.decode(z).log_prob(x).sum() + beta * latent.sum())
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("kind", ["vae", "svae", "gmvae"])
def test_traced_objective_equals_the_untraced_one_bit_for_bit(kind):
    """The traced objective (inlined, dead code dropped) computes the same loss and gradients as the untraced one
    on the same draws, on its first call (the trace) and on later calls (the optimised graph)."""
    model, guide = pair(kind)
    x = binary()
    scales = torch.tensor([7.0, 0.4], dtype=torch.float64)
    elbos = ("enum", "jit_enum") if kind == "gmvae" else ("trace", "jit")
    plain, traced = (make_objective(name, model, guide)[0] for name in elbos)
    params = [*model.parameters(), *guide.parameters()]
    for _ in range(2):
        results = []
        for objective in (plain, traced):
            pyro.set_rng_seed(3)
            loss = objective(x, scales)
            results.append((loss.detach(), torch.autograd.grad(loss, params)))
        (want, want_grads), (got, got_grads) = results
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["vae", "svae"])
def test_iwae_objective_against_the_hand_written_bound(kind):
    model, guide = pair(kind)
    x, num_samples, data_scale = binary(), 9, 3.0
    objective, name = make_objective("iwae", model, guide, num_particles=num_samples)
    pyro.set_rng_seed(4)
    loss = objective(x, torch.tensor([data_scale, 1.0], dtype=torch.float64))
    pyro.set_rng_seed(4)
    log_weights = hand_log_weights(model, guide, x, num_samples)
    bound = torch.logsumexp(log_weights, 0) - math.log(num_samples)  # per datum
    assert name == "iwae"
    torch.testing.assert_close(loss, -data_scale * bound.sum(), rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("kind", ["vae", "svae", "gmvae"])
def test_evaluate_equals_pyros_own_elbo(kind):
    """evaluate's per-datum ELBO equals -loss / N of Pyro's Trace_ELBO (TraceEnum_ELBO for the GMVAE) at one seed."""
    model, guide = pair(kind)
    x = binary()
    pyro.set_rng_seed(5)
    terms = evaluate(model, guide, x)
    elbo = pinfer.TraceEnum_ELBO(max_plate_nesting=1) if kind == "gmvae" else pinfer.Trace_ELBO()
    model.eval(), guide.eval()
    pyro.set_rng_seed(5)
    loss = elbo.loss(model, guide, x)
    assert terms["elbo"] == pytest.approx(-loss / len(x), rel=1e-9)
    assert terms["elbo"] == pytest.approx(terms["reconstruction"] - terms["kl"], rel=1e-12)


def test_evaluate_averages_particles_and_takes_a_seed():
    """num_particles averages that many one-draw scores (those of the same stream, drawn in turn); a seed gives the
    same scores every call and leaves the caller's generator alone."""
    model, guide = pair("vae")
    x = binary()
    pyro.set_rng_seed(5)
    draws = [evaluate(model, guide, x) for _ in range(3)]
    pyro.set_rng_seed(5)
    averaged = evaluate(model, guide, x, num_particles=3)
    for key in ("elbo", "reconstruction", "kl"):
        assert averaged[key] == pytest.approx(sum(d[key] for d in draws) / 3, rel=1e-9)
    state = torch.random.get_rng_state()
    assert evaluate(model, guide, x, seed=1) == evaluate(model, guide, x, seed=1) != evaluate(model, guide, x, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
