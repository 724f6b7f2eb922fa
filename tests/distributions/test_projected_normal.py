"""The projected normal's density against independent references (the circle's closed form, the Gaussian's mass
along each ray by scipy's quadrature, the radial integral by mpmath), its normalisation and its samples."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import multivariate_normal

from pyrovae.distributions import ProjectedNormal
from pyrovae.distributions.sphere import log_sphere_area
from pyrovae.ops.radial import log_radial_integral


def _radial_reference(k: int, beta: float) -> float:
    """log int_0^inf s^k e^(-s^2/2 + beta s) ds by mpmath, in t = log s around the integrand's mode."""
    mpmath.mp.dps = 25
    n, beta = k + 1, mpmath.mpf(beta)
    mode = (beta + mpmath.sqrt(beta**2 + 4 * n)) / 2 if beta >= 0 else 2 * n / (mpmath.sqrt(beta**2 + 4 * n) - beta)
    t0, sigma = mpmath.log(mode), 1 / mpmath.sqrt(mode**2 + n)

    def g(t):
        return n * t - mpmath.exp(2 * t) / 2 + beta * mpmath.exp(t)

    top = g(t0)
    # a window beyond which less than e^-60 of the mass lies: the left tail falls at least as e^(n (t - t0)), the
    # right one faster than a Gaussian of width sigma
    points = [t0 - 60 / n - 40 * sigma, *(t0 + j * sigma for j in (-12, -4, -1, 0, 1, 4)), t0 + 15 * sigma]
    return float(top + mpmath.log(mpmath.quad(lambda t: mpmath.exp(g(t) - top), points)))


@pytest.mark.parametrize("k", [0, 1, 2, 4, 9, 40, 255])
def test_the_radial_integral_is_mpmaths_from_far_negative_to_far_positive_beta(k):
    betas = [-800.0, -60.0, -6.0, -0.7, 0.0, 0.4, 3.0, 25.0, 300.0]
    got = log_radial_integral(k, torch.tensor(betas, dtype=torch.float64))
    for beta, value in zip(betas, got.tolist(), strict=True):
        expected = _radial_reference(k, beta)
        assert value == pytest.approx(expected, rel=1e-13, abs=1e-12), (k, beta)


def test_the_radial_integral_has_its_closed_forms_and_derivative():
    beta = torch.linspace(-30, 30, 61, dtype=torch.float64, requires_grad=True)
    j0 = log_radial_integral(0, beta)
    exact0 = 0.5 * math.log(2 * math.pi) + beta.detach() ** 2 / 2 + torch.special.log_ndtr(beta.detach())
    assert torch.allclose(j0, exact0, rtol=1e-13, atol=1e-13)
    j1 = log_radial_integral(1, beta)  # J_1 = 1 + beta J_0, exact where beta >= 0 (no cancellation)
    positive = beta.detach() >= 0
    exact1 = torch.log1p(beta.detach() * j0.detach().exp())
    assert torch.allclose(j1[positive], exact1[positive], rtol=1e-13)
    # d/dbeta log J_k = J_(k+1) / J_k
    j5 = log_radial_integral(5, beta)
    (grad,) = torch.autograd.grad(j5.sum(), beta)
    ratio = (log_radial_integral(6, beta.detach()) - j5.detach()).exp()
    assert torch.allclose(grad, ratio, rtol=1e-11)


def test_on_the_circle_the_isotropic_density_is_the_closed_form():
    """m = 2, identity covariance: p(theta) = e^(-|mu|^2 / 2) (1 + t Phi(t) / phi(t)) / (2 pi), t = mu . z."""
    loc = torch.tensor([1.3, -0.4], dtype=torch.float64) * 2.0
    angles = torch.linspace(-math.pi, math.pi, 41, dtype=torch.float64)
    z = torch.stack([angles.cos(), angles.sin()], -1)
    t = z @ loc
    ratio = torch.special.ndtr(t) / (torch.exp(-0.5 * t**2) / math.sqrt(2 * math.pi))
    expected = -0.5 * loc.square().sum() + torch.log1p(t * ratio) - math.log(2 * math.pi)
    assert torch.allclose(ProjectedNormal(loc).log_prob(z), expected, rtol=1e-12, atol=1e-12)


def _ray_reference(z: np.ndarray, loc: np.ndarray, covariance: np.ndarray) -> float:
    """log int_0^inf r^(m-1) N(r z; loc, covariance) dr by scipy, the integrand scaled by its value at its peak."""
    m = len(z)
    gaussian = multivariate_normal(loc, covariance)

    def log_f(r):
        return (m - 1) * math.log(r) + gaussian.logpdf(r * z) if r > 0 else -math.inf

    radii = np.linspace(1e-6, 4 * (np.linalg.norm(loc) + 4 * math.sqrt(np.trace(covariance))), 4001)
    values = (m - 1) * np.log(radii) + gaussian.logpdf(radii[:, None] * z)
    peak = radii[values.argmax()]
    top = values.max()
    total, _ = integrate.quad(lambda r: math.exp(log_f(r) - top), 0, radii[-1], points=[peak], limit=400,
                              epsabs=0, epsrel=1e-12)  # beyond radii[-1] the Gaussian has no mass left
    return top + math.log(total)


@pytest.mark.parametrize("m", [2, 3, 5, 10, 41])
def test_the_anisotropic_density_is_the_gaussians_mass_along_each_ray(m):
    generator = torch.Generator().manual_seed(m)
    loc = torch.randn(m, generator=generator, dtype=torch.float64) * 2
    raw = torch.randn(m, m, generator=generator, dtype=torch.float64) / math.sqrt(m)
    covariance = raw @ raw.T + 0.3 * torch.eye(m, dtype=torch.float64)
    d = ProjectedNormal(loc, torch.linalg.cholesky(covariance))
    points = torch.randn(6, m, generator=generator, dtype=torch.float64)
    points = torch.cat([points, loc.unsqueeze(0), -loc.unsqueeze(0)])  # at the mode's side and opposite it
    points = points / points.norm(dim=-1, keepdim=True)
    got = d.log_prob(points)
    for point, value in zip(points.numpy(), got.tolist(), strict=True):
        assert value == pytest.approx(_ray_reference(point, loc.numpy(), covariance.numpy()), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("m", [3, 6])
def test_it_integrates_to_one_and_its_samples_follow_its_density(m):
    """Over uniform points, E[p(z)] x area = 1; over its own draws, E[1 / (p(z) x area)] = 1 (each within five
    standard errors of the Monte Carlo mean)."""
    torch.manual_seed(m)
    loc = torch.linspace(0.5, 1.5, m, dtype=torch.float64)
    tril = torch.eye(m, dtype=torch.float64) + 0.3 * torch.randn(m, m, dtype=torch.float64).tril(-1)
    tril.diagonal().mul_(torch.linspace(0.6, 1.4, m, dtype=torch.float64))
    d = ProjectedNormal(loc, tril)
    area = math.exp(log_sphere_area(m))
    uniform = torch.randn(50_000, m, dtype=torch.float64)
    uniform = uniform / uniform.norm(dim=-1, keepdim=True)
    mass = d.log_prob(uniform).exp() * area
    assert abs(float(mass.mean()) - 1) < 5 * float(mass.std()) / math.sqrt(len(mass))
    draws = d.sample((50_000,))
    inverse = (-d.log_prob(draws)).exp() / area
    assert abs(float(inverse.mean()) - 1) < 5 * float(inverse.std()) / math.sqrt(len(inverse))


def test_gradients_reach_the_parameters_and_the_draws_are_reparameterised():
    torch.manual_seed(0)
    loc = torch.tensor([0.8, -0.3, 1.1], dtype=torch.float64, requires_grad=True)
    raw = torch.tensor([[1.0, 0, 0], [0.2, 0.7, 0], [-0.1, 0.3, 1.2]], dtype=torch.float64, requires_grad=True)
    z = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    assert torch.autograd.gradcheck(lambda a, b: ProjectedNormal(a, b.tril()).log_prob(z), (loc, raw))
    draw = ProjectedNormal(loc, raw.tril()).rsample((5,))
    assert torch.allclose(draw.norm(dim=-1), torch.ones(5, dtype=torch.float64))
    draw.sum().backward()
    assert loc.grad is not None and torch.isfinite(loc.grad).all()


def test_shapes_expand_and_validation():
    loc = torch.randn(4, 1, 5)
    d = ProjectedNormal(loc, torch.eye(5).expand(3, 5, 5))
    assert d.batch_shape == (4, 3) and d.event_shape == (5,)
    assert d.sample((2,)).shape == (2, 4, 3, 5)
    assert d.log_prob(d.sample()).shape == (4, 3) and d.log_prob(d.sample()).dtype == torch.float32
    assert d.expand((2, 4, 3)).log_prob(d.sample()).shape == (2, 4, 3)
    with pytest.raises(ValueError, match="cannot be expanded"):
        d.expand((4, 5))
    with pytest.raises(ValueError):
        ProjectedNormal(torch.randn(5), validate_args=True).log_prob(torch.full((5,), 0.9))
    with pytest.raises(ValueError, match="m >= 2"):
        ProjectedNormal(torch.randn(1))
    with pytest.raises(ValueError, match=r"scale_tril must have shape \(\.\.\., 3, 3\)"):
        ProjectedNormal(torch.randn(3), torch.eye(4))
    with pytest.raises(ValueError):
        ProjectedNormal(torch.randn(3), -torch.eye(3), validate_args=True)


def test_many_draws_per_batch_element_score_as_each_one_alone():
    """The draws of each batch element are solved as the columns of one triangular system: the same densities as
    scoring every point against its own copy of the factor."""
    torch.manual_seed(1)
    loc = torch.randn(4, 3, 6, dtype=torch.float64)
    tril = torch.eye(6, dtype=torch.float64) + 0.4 * torch.randn(4, 3, 6, 6, dtype=torch.float64).tril(-1)
    d = ProjectedNormal(loc, tril)
    draws = d.sample((5, 2))
    got = d.log_prob(draws)
    assert got.shape == (5, 2, 4, 3)
    for index in np.ndindex(5, 2, 4, 3):
        alone = ProjectedNormal(loc[index[2:]], tril[index[2:]]).log_prob(draws[index])
        assert float(got[index]) == pytest.approx(float(alone), rel=1e-13, abs=1e-13)


def test_an_expanded_law_scores_as_its_copies_would():
    """A plate's expand repeats the factors (stride 0): they are solved once, with the same densities as a law built
    from materialised copies, also where the points broadcast against the batch."""
    torch.manual_seed(2)
    loc = torch.randn(3, 1, 5, dtype=torch.float64)
    tril = torch.eye(5, dtype=torch.float64) + 0.4 * torch.randn(3, 1, 5, 5, dtype=torch.float64).tril(-1)
    expanded = ProjectedNormal(loc, tril).expand((7, 3, 4))
    copies = ProjectedNormal(loc.expand(7, 3, 4, 5).clone(), tril.expand(7, 3, 4, 5, 5).clone())
    for points in (copies.sample((2,)), copies.sample()[:, :, :1], copies.sample()[0]):
        assert torch.allclose(expanded.log_prob(points), copies.log_prob(points), rtol=1e-13, atol=1e-13)
    torch.manual_seed(3)
    drawn = expanded.rsample((2,))
    torch.manual_seed(3)
    assert torch.allclose(drawn, copies.rsample((2,)), rtol=1e-13, atol=1e-13)


def test_an_expanded_laws_gradients_are_its_copies():
    """Under a plate's expand the factors keep their own shape: the gradient of draws and densities reaches them
    as it reaches materialised copies (summed over the copies), without a gradient the size of the expand."""
    torch.manual_seed(4)
    loc = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    tril = torch.eye(5, dtype=torch.float64) + 0.3 * torch.randn(3, 5, 5, dtype=torch.float64).tril(-1)
    tril.requires_grad_()
    expanded = ProjectedNormal(loc, tril).expand((8, 3))
    assert expanded._unbroadcasted_scale_tril is tril
    torch.manual_seed(5)
    draws = expanded.rsample()
    total = draws.sum() + expanded.log_prob(draws.detach()).sum()
    got = torch.autograd.grad(total, (loc, tril))
    loc_copies = loc.detach().expand(8, 3, 5).clone().requires_grad_()
    tril_copies = tril.detach().expand(8, 3, 5, 5).clone().requires_grad_()
    copies = ProjectedNormal(loc_copies, tril_copies)
    torch.manual_seed(5)
    draws = copies.rsample()
    total = draws.sum() + copies.log_prob(draws.detach()).sum()
    want = [g.sum(0) for g in torch.autograd.grad(total, (loc_copies, tril_copies))]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
