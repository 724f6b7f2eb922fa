"""GMVAE: the enumerated ELBO against a hand sum, its gradient variance against sampling y, and exact
summation over y in the importance-sampled log-likelihood (linear-Gaussian mixture with a closed form)."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyrovae.guides import GMVAEGuide
from pyrovae.models import GMVAE
from scipy import stats

from pyrovae.infer import evaluate, log_likelihood, train
from pyrovae.infer.batches import as_batches
from pyrovae.likelihoods import Gaussian

K, Z, D = 3, 2, 4


def _pair(seed=0, likelihood=None, learn_weights=True):
    torch.manual_seed(seed)
    model = GMVAE(D, Z, K, hidden=[], likelihood=likelihood or Gaussian(scale=0.5), learn_weights=learn_weights)
    with torch.no_grad():
        model.component_logits.copy_(torch.tensor([0.2, -0.4, 0.1]))
        model.component_locs.mul_(2.0)
    return model, GMVAEGuide(D, Z, hidden=[8], num_components=K)


def test_enumerated_elbo_equals_hand_sum_over_components():
    model, guide = _pair()
    x = torch.randn(5, D)
    pyro.set_rng_seed(3)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x)

    pyro.set_rng_seed(3)  # the same draws z ~ q(z | x, y) for all y at once, as the enumerated guide makes them
    features = guide.features(x)
    q_y = guide.component_posterior(x, features)
    ys = torch.arange(K).unsqueeze(-1)  # (K, 1)
    q_z = guide.latent_posterior(features, ys)  # batch (K, 5)
    z = q_z.rsample()
    log_p = model.component_prior().log_prob(ys) + model.component(ys).log_prob(z) + model.decode(z).log_prob(x)
    log_q = q_y.log_prob(ys) + q_z.log_prob(z)
    hand = (q_y.log_prob(ys).exp() * (log_p - log_q)).sum()
    assert float(-loss) == pytest.approx(float(hand), rel=1e-6)


def test_enumeration_cuts_the_gradient_variance_of_q_y():
    model, guide = _pair(seed=1)
    x = torch.randn(16, D) * 2

    def gradients(elbo, repeats=150):
        grads = []
        for _ in range(repeats):
            guide.zero_grad()
            elbo.differentiable_loss(model, guide, x).backward()
            grads.append(guide.y_head.weight.grad.clone().flatten())
        return torch.stack(grads)

    pyro.set_rng_seed(0)
    enumerated = gradients(TraceEnum_ELBO(max_plate_nesting=1))
    sampled = gradients(Trace_ELBO(max_plate_nesting=1))
    # both are unbiased for the same gradient; only the variance differs
    assert torch.allclose(enumerated.mean(0), sampled.mean(0), atol=6 * float(sampled.std(0).max()) / math.sqrt(150))
    ratio = float(enumerated.var(0).sum() / sampled.var(0).sum())
    assert ratio < 0.1, f"enumerated / sampled gradient variance = {ratio:.3f}"


class ExactPosteriorGuide(torch.nn.Module):
    """q(y | x) anything, q(z | x, y) = p(z | x, y) exactly, for a GMVAE with a linear decoder and fixed noise."""

    def __init__(self, model, noise_scale):
        super().__init__()
        self.model, self.noise = model, noise_scale

    def forward(self, x):
        weight, bias = self.model.decoder.layers[0].weight, self.model.decoder.layers[0].bias  # (D, Z), (D,)
        prior_cov = torch.diag_embed(self.model.component_scales**2)  # (K, Z, Z)
        precision = torch.linalg.inv(prior_cov) + weight.T @ weight / self.noise**2
        cov = torch.linalg.inv(precision)  # (K, Z, Z)
        rhs = (weight.T @ (x - bias).T / self.noise**2).T  # (B, Z)
        prior_term = (torch.linalg.inv(prior_cov) @ self.model.component_locs.unsqueeze(-1)).squeeze(-1)  # (K, Z)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=torch.zeros(K)), infer={"enumerate": "parallel"})
            loc = (cov[y] @ (rhs + prior_term[y]).unsqueeze(-1)).squeeze(-1)
            pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=cov[y]))


def _exact_log_marginal(model, x, noise):
    weight, bias = model.decoder.layers[0].weight.detach(), model.decoder.layers[0].bias.detach()
    log_pi = torch.log_softmax(model.component_logits.detach(), -1)
    terms = []
    for k in range(K):
        mean = weight @ model.component_locs[k].detach() + bias
        cov = weight @ torch.diag(model.component_scales[k].detach() ** 2) @ weight.T + noise**2 * torch.eye(D)
        terms.append(float(log_pi[k]) + stats.multivariate_normal(mean.numpy(), cov.numpy()).logpdf(x.numpy()))
    return np.logaddexp.reduce(np.stack(terms), axis=0)


def test_log_likelihood_sums_components_exactly():
    noise = 0.5
    model, _ = _pair(seed=2)
    model = model.double()
    x = torch.randn(20, D, dtype=torch.float64) * 2
    exact = _exact_log_marginal(model, x, noise)
    # with the exact posterior per component each stratified weight equals p(x): exact for any sample size
    estimate = log_likelihood(model, ExactPosteriorGuide(model, noise), x, num_samples=3)
    np.testing.assert_allclose(estimate.per_datum.numpy(), exact, rtol=1e-9)
    # an untrained amortised guide: a stochastic lower bound (Jensen), below the exact value on average
    rough = log_likelihood(model, GMVAEGuide(D, Z, hidden=[8], num_components=K).double(), x, num_samples=200)
    assert rough.mean < exact.mean()


@pytest.mark.parametrize("elbo", ["auto", "jit_enum"])
def test_training_raises_the_exact_elbo(elbo):
    torch.manual_seed(0)
    centres = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    labels = torch.arange(300) % 3
    x = centres[labels] + 0.3 * torch.randn(300, D)
    model = GMVAE(D, Z, K, hidden=[16], likelihood=Gaussian(scale=0.3))
    guide = GMVAEGuide(D, Z, hidden=[16], num_components=K)
    before = evaluate(model, guide, as_batches(x, 300, False, torch.device("cpu")))["elbo"]
    history = train(model, guide, x, epochs=40, batch_size=50, elbo=elbo, lr=1e-2, progress=False, seed=0)
    assert history.records[-1]["train_elbo"] > before + 10
    assignment = guide.assign(x)
    # each true group goes (mostly) to one component
    purity = sum(torch.bincount(assignment[labels == k], minlength=K).max() for k in range(3)) / 300
    assert purity > 0.75  # chance is about 0.4


def test_elbo_terms_with_enumeration_match_the_enumerated_loss():
    model, guide = _pair(seed=4)
    x = torch.randn(6, D)
    pyro.set_rng_seed(1)
    terms = evaluate(model, guide, as_batches(x, 6, False, torch.device("cpu")))
    pyro.set_rng_seed(1)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x)
    assert terms["elbo"] == pytest.approx(-float(loss) / 6, rel=1e-5)


def test_clustering_scores_against_hand_computed_values():
    from pyrovae.infer import clustering_scores, kmeans_clusters

    labels = [0, 0, 0, 1, 1, 1]
    clusters = [1, 1, 0, 0, 2, 2]
    # contingency [[1, 2, 0], [1, 0, 2]]: sum C(n_ij, 2) = 2, rows 3 + 3 = 6, columns 1 + 1 + 1 = 3, C(6, 2) = 15
    expected_index = 6 * 3 / 15
    expected_ari = (2 - expected_index) / ((6 + 3) / 2 - expected_index)
    scores = clustering_scores(labels, clusters)
    assert scores["ari"] == pytest.approx(expected_ari)
    assert clustering_scores(labels, [5, 5, 5, 2, 2, 2])["nmi"] == pytest.approx(1.0)
    latent = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    assert clustering_scores(labels, kmeans_clusters(latent, 2), latent)["ari"] == pytest.approx(1.0)
    # silhouette by hand for the first point: a = mean(0.1, 0.2), b = mean(5.0, 5.1, 5.2)
    silhouette = clustering_scores(labels, labels, latent)["silhouette"]
    assert -1 <= silhouette <= 1 and silhouette > 0.9
