"""The importance-weighted (and Renyi) bound with an enumerated discrete site, against closed forms (issue 24).

A linear-Gaussian mixture has an exact log p(x), p(y | x) and p(z | x, y): y ~ Categorical(pi), z | y ~ N(mu_y, s_y^2),
x | z ~ N(w z + b, sigma^2 I). The bound sum_y q(y|x) [L_K(x, y) - log q(y|x)] is then checked where it is exact
(the posterior as guide: log p(x) for every draw), where only q(y|x) is wrong (log p(x) - KL, for every draw), and
in between (one draw: the closed-form ELBO; many: it rises towards log p(x) - KL(q(y|x) || p(y|x))).
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyrovae.guides import GMVAEGuide
from pyrovae.models import GMVAE

from pyrovae.infer import make_objective, train
from pyrovae.infer.estimation.importance import log_importance_weights
from pyrovae.infer.training.objectives import importance_weighted_bound

DTYPE = torch.float64
PI = torch.tensor([0.2, 0.5, 0.3], dtype=DTYPE)
MU = torch.tensor([-2.0, 0.5, 3.0], dtype=DTYPE)
S = torch.tensor([0.5, 1.0, 0.8], dtype=DTYPE)
W = torch.tensor([1.0, -0.7], dtype=DTYPE)
B = torch.tensor([0.1, -0.2], dtype=DTYPE)
SIGMA = 0.6
X = torch.tensor([[-2.1, 1.3], [0.4, -0.3], [2.5, -2.0], [1.0, 0.9], [-0.5, 0.6]], dtype=DTYPE)


def pick(values, y):
    """values[y] for an enumerated (or any) integer tensor y, with a trailing event dimension of 1."""
    return (torch.nn.functional.one_hot(y, values.shape[-1]).to(DTYPE) * values).sum(-1, keepdim=True)


def model(x, labels=None):
    with pyro.plate("data", x.shape[-2]):
        y = pyro.sample("y", dist.Categorical(PI))
        z = pyro.sample("z", dist.Normal(pick(MU, y), pick(S, y)).to_event(1))
        pyro.sample("x", dist.Normal(z * W + B, SIGMA).to_event(1), obs=x)


class Guide:
    """q(y | x) from per-datum logits, q(z | x, y) Gaussian from per-datum, per-component location and scale; known
    labels (>= 0) make q(y | x) their point mass, as GMVAEGuide does."""

    def __init__(self, logits, loc, scale):
        self.logits, self.loc, self.scale = logits, loc, scale

    def __call__(self, x, labels=None):
        logits = self.logits
        if labels is not None:
            point = torch.full_like(logits, -1e4).scatter(-1, labels.clamp(min=0).unsqueeze(-1), 0.0)
            logits = torch.where((labels >= 0).unsqueeze(-1), point, logits)
        with pyro.plate("data", x.shape[-2]):
            y = pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            pyro.sample("z", dist.Normal(pick(self.loc, y), pick(self.scale, y)).to_event(1))


def exact():
    """log p(x, y) (N, Y), log p(x) (N,), and the posterior p(z | x, y): location and scale (N, Y)."""
    cov = S[:, None, None] ** 2 * torch.outer(W, W) + SIGMA**2 * torch.eye(2, dtype=DTYPE)  # (Y, 2, 2)
    marginal = dist.MultivariateNormal(MU[:, None] * W + B, cov)  # batch (Y,)
    log_joint = PI.log() + marginal.log_prob(X[:, None, :])  # (N, Y)
    precision = 1 / S**2 + (W @ W) / SIGMA**2
    loc = (MU / S**2 + ((X - B) @ W)[:, None] / SIGMA**2) / precision
    return log_joint, log_joint.logsumexp(-1), loc, precision.rsqrt().expand_as(loc)


def closed_form_elbo(guide):
    """sum_y q(y) [E_q(z|y) log p(x, y, z) - log q(z | y) - log q(y)] for the Gaussian guide, exactly."""
    log_q = guide.logits.log_softmax(-1)
    m, t = guide.loc, guide.scale
    fit = X[:, None, :] - B - m[..., None] * W  # (N, Y, 2)
    log_lik = (-0.5 * (fit**2).sum(-1) / SIGMA**2 - 0.5 * t**2 * (W @ W) / SIGMA**2
               - math.log(2 * math.pi * SIGMA**2))
    log_prior = -0.5 * ((m - MU) ** 2 + t**2) / S**2 - 0.5 * torch.log(2 * math.pi * S**2)
    entropy = 0.5 * torch.log(2 * math.pi * math.e * t**2)
    return (log_q.exp() * (log_lik + log_prior + entropy + PI.log() - log_q)).sum(-1)


def wrong_guide():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=generator, dtype=DTYPE).requires_grad_()
    _, _, loc, scale = exact()
    loc = (loc + 0.4 * torch.randn(5, 3, generator=generator, dtype=DTYPE)).requires_grad_()
    return Guide(logits, loc, (1.6 * scale).requires_grad_())


@pytest.mark.parametrize("num_particles", [1, 2, 9])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_the_exact_posterior_gives_log_p_x_for_every_draw(num_particles, alpha):
    log_joint, log_px, loc, scale = exact()
    guide = Guide((log_joint - log_px[:, None]).requires_grad_(), loc, scale)
    pyro.set_rng_seed(0)
    bound = importance_weighted_bound(model, guide, (X,), num_particles, alpha=alpha)
    torch.testing.assert_close(bound, log_px, rtol=0, atol=1e-10)
    (grad,) = torch.autograd.grad(bound.sum(), guide.logits)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-10)  # the posterior is stationary


def test_a_wrong_q_y_costs_exactly_its_kl_and_gets_a_gradient():
    log_joint, log_px, loc, scale = exact()
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-3.0, 1.0, 0.5], [0.3, -0.2, 0.1], [1.0, 1.0, -2.0]],
                          dtype=DTYPE, requires_grad=True)
    guide = Guide(logits, loc, scale)
    pyro.set_rng_seed(1)
    bound = importance_weighted_bound(model, guide, (X,), 4)
    log_q, log_posterior = logits.log_softmax(-1), log_joint - log_px[:, None]
    kl = (log_q.exp() * (log_q - log_posterior)).sum(-1)
    torch.testing.assert_close(bound, log_px - kl, rtol=0, atol=1e-10)
    (grad,) = torch.autograd.grad(bound.sum(), logits)
    (expected,) = torch.autograd.grad((-kl).sum(), logits)
    assert grad.abs().max() > 1e-2
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)


def test_the_bound_lies_between_the_elbo_and_log_p_x_and_rises_with_k():
    """Monte Carlo means over 4,000 repeats (vectorised as one batch) with their standard errors: one draw gives
    the closed-form ELBO; the bound rises with K and stays below its limit log p(x) - KL(q(y|x) || p(y|x))."""
    guide = wrong_guide()
    log_joint, log_px, _, _ = exact()
    log_q = guide.logits.log_softmax(-1).detach()
    limit = log_px - (log_q.exp() * (log_q - (log_joint - log_px[:, None]))).sum(-1)
    repeats = 4000
    tiled = Guide(guide.logits.detach().repeat(repeats, 1), guide.loc.detach().repeat(repeats, 1),
                  guide.scale.detach().repeat(repeats, 1))
    x = X.repeat(repeats, 1)
    pyro.set_rng_seed(2)
    means, errors = [], []
    for k in (1, 8, 64):
        with torch.no_grad():
            bound = importance_weighted_bound(model, tiled, (x,), k).reshape(repeats, 5)
        means.append(bound.mean(0))
        errors.append(bound.std(0) / math.sqrt(repeats))
    elbo = closed_form_elbo(guide).detach()
    assert ((means[0] - elbo).abs() < 4 * errors[0]).all()
    for k in range(2):
        assert (means[k + 1] > means[k] - 4 * (errors[k] ** 2 + errors[k + 1] ** 2).sqrt()).all()
    assert (means[2] < limit + 4 * errors[2]).all()
    assert (limit - means[2] < 0.3 * (limit - elbo)).all()  # most of the gap to the limit is closed at K = 64
    assert (limit <= log_px + 1e-12).all()


def test_known_labels_bound_log_p_x_y_and_unknown_ones_log_p_x():
    log_joint, log_px, loc, scale = exact()
    guide = Guide(torch.zeros(5, 3, dtype=DTYPE), loc, scale)
    guide.logits = (log_joint - log_px[:, None]).clone()
    labels = torch.tensor([0, -1, 2, 1, -1])
    pyro.set_rng_seed(3)
    bound = importance_weighted_bound(model, guide, (X, labels), 3)
    expected = torch.where(labels >= 0, log_joint.gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1), log_px)
    torch.testing.assert_close(bound, expected, rtol=0, atol=1e-9)


def test_renyi_bound_is_below_the_iwae_bound_on_the_same_draws():
    guide = wrong_guide()
    bounds = []
    for alpha in (0.0, 0.5, 0.9):
        pyro.set_rng_seed(4)
        bounds.append(importance_weighted_bound(model, guide, (X,), 6, alpha=alpha).detach())
    assert (bounds[0] >= bounds[1] - 1e-12).all() and (bounds[1] >= bounds[2] - 1e-12).all()


def test_a_sampled_discrete_guide_site_is_refused_with_the_fix():
    guide = wrong_guide()

    def sampled(x, labels=None):
        with pyro.plate("data", x.shape[-2]):
            y = pyro.sample("y", dist.Categorical(logits=guide.logits))
            pyro.sample("z", dist.Normal(pick(guide.loc, y), pick(guide.scale, y)).to_event(1))

    objective, _ = make_objective("iwae", model, sampled, num_particles=3)
    with pytest.raises(ValueError, match=r"site 'y'.*enumerate.*elbo='trace'"):
        objective(X, torch.tensor([1.0, 1.0], dtype=DTYPE))


def gmvae_pair():
    torch.manual_seed(0)
    return GMVAE(12, 2, 3, (8,)).double(), GMVAEGuide(12, 2, (8,), num_components=3, classification_weight=0.0).double()


@pytest.mark.parametrize("elbo", ["iwae", pyro.infer.RenyiELBO(alpha=0.5, num_particles=3)])
def test_the_gmvae_classifier_trains_under_iwae_and_renyi(elbo):
    model, guide = gmvae_pair()
    x = torch.rand(48, 12, generator=torch.Generator().manual_seed(0), dtype=DTYPE).round()
    before = guide.y_head.weight.detach().clone()
    objective, _ = make_objective(elbo, model, guide, num_particles=3)
    loss = objective(x, torch.tensor([1.0, 1.0], dtype=DTYPE))
    (grad,) = torch.autograd.grad(loss, guide.y_head.weight)
    assert grad.abs().max() > 1e-4
    train(model, guide, x, epochs=2, batch_size=16, elbo=elbo, num_particles=3, progress=False, seed=0)
    assert not torch.allclose(before, guide.y_head.weight)


def test_the_gmvae_bound_uses_known_labels():
    """With every label known the bound of a datum is the importance-weighted bound of log p(x, y): the stratified
    weights of log_importance_weights at the label's value, on the same draws."""
    model, guide = gmvae_pair()
    x = torch.rand(6, 12, generator=torch.Generator().manual_seed(1), dtype=DTYPE).round()
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    pyro.set_rng_seed(5)
    bound = importance_weighted_bound(model, guide, (x, None, None, labels), 7)
    pyro.set_rng_seed(5)
    terms = log_importance_weights(model, guide, (x, None, None, labels), 7, sum_enumerated=False)  # (Y, S, B)
    at_label = terms.gather(0, labels.expand(1, 7, 6)).squeeze(0)
    torch.testing.assert_close(bound, at_label.logsumexp(0) - math.log(7), rtol=1e-10, atol=1e-10)
    pyro.set_rng_seed(5)
    unlabelled = importance_weighted_bound(model, guide, (x,), 7)
    assert not torch.allclose(bound, unlabelled)


def test_train_with_labelled_count_data_uses_the_labels_under_iwae():
    """train passes CountData.with_labels' y to the pair; under iwae the labelled cells' point masses and the
    classification term enter the bound (before, train refused labels here)."""
    from tests.test_label_transfer import pair, typed_cells

    data = typed_cells(n=60).with_labels(np.arange(60) >= 20)
    model, guide = pair(alpha=10.0)
    x, cat, cont, y = data.batch(torch.arange(60))
    objective, _ = make_objective("iwae", model, guide, num_particles=3)
    scales = torch.tensor([1.0, 1.0])
    pyro.set_rng_seed(0)
    with_labels = objective(x, scales, cat, cont, y)
    pyro.set_rng_seed(0)
    without = objective(x, scales, cat, cont)
    assert not torch.allclose(with_labels, without)
    before = guide.y_head.weight.detach().clone()
    history = train(model, guide, data, epochs=2, batch_size=30, elbo="iwae", num_particles=3, progress=False, seed=0)
    assert all(math.isfinite(v) for v in history["loss"]) and not torch.allclose(before, guide.y_head.weight)
