"""Annealed importance sampling of log p(x) with Hamiltonian Monte Carlo transitions (Neal 2001; Wu et al. 2017).

The reference that says whether the fast importance-sampled estimates can be believed: slow, and its bias vanishes
as the number of annealing steps grows, whatever the starting distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to
from tqdm.auto import tqdm

from pyrovae.infer.arguments import check_device, check_integer, check_number, floating_dtype
from pyrovae.infer.batches import as_args, as_batches, model_check, module_device
from pyrovae.infer.contract import check_model_guide
from pyrovae.infer.estimation.allocation import freed_memory_kept
from pyrovae.infer.estimation.importance import (
    SAMPLES_PLATE,
    check_has_density,
    fingerprint,
    guess_max_plate_nesting,
    per_datum_log_prob,
)
from pyrovae.infer.estimation.log_likelihood import as_proposal
from pyrovae.infer.estimation.proposals import Proposal
from pyrovae.infer.estimation.psis import psis_khat
from pyrovae.infer.estimation.result import LogLikelihood
from pyrovae.infer.evaluation import evaluation_mode


def sigmoid_schedule(num_steps: int, sharpness: float = 4.0) -> torch.Tensor:
    """Inverse temperatures 0 = beta_0 < ... < beta_T = 1 spaced by a sigmoid (Grosse et al. 2015): dense at both
    ends, where the intermediate distributions change fastest. ``(num_steps + 1,)``, float64."""
    t = torch.linspace(-sharpness, sharpness, num_steps + 1, dtype=torch.float64)
    s = torch.sigmoid(t)
    return (s - s[0]) / (s[-1] - s[0])


class RadialLift:
    """Coordinates in R^n for a latent on the sphere S^(n-1): z = u / |u|, the radius a nuisance of known law.

    A density r on the sphere (with respect to its area) lifts to the density r(u / |u|) h(|u|) / |u|^(n-1) on R^n,
    where h is the law of the radius, independent of the direction. Take h the law of ``scale`` times a chi
    variable with n degrees of freedom: then h(rho) / rho^(n-1) = exp(-rho^2 / (2 scale^2)) / (scale^n 2^(n/2 - 1)
    Gamma(n/2)), a Gaussian factor that :class:`AnnealingPath` carries as the Jacobian term of both densities. The
    ratio of the two lifted densities is the ratio on the sphere, so the AIS weights are those of the sphere, and
    every intermediate distribution marginalises to the one on the sphere: HMC moves in R^n, where it can.
    ``scale = n^(-1/2)`` keeps the radius near 1 (standard deviation about (2n)^(-1/2)). ``inv`` draws the radius,
    so a lifted start is an exact draw of the lifted start density (what AIS and reverse AIS need).
    """

    def __init__(self, dim: int) -> None:
        self.scale = dim**-0.5
        self._log_normaliser = dim * math.log(self.scale) + (0.5 * dim - 1) * math.log(2.0) + math.lgamma(0.5 * dim)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)

    def inv(self, z: torch.Tensor) -> torch.Tensor:
        radius = torch.linalg.vector_norm(self.scale * torch.randn_like(z), dim=-1, keepdim=True)
        return z * radius

    def log_abs_det_jacobian(self, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log h(|u|) - (n - 1) log |u|, the factor of the lifted densities, ``u.shape[:-1]``."""
        return -0.5 * u.square().sum(-1) / self.scale**2 - self._log_normaliser


def on_sphere(fn) -> bool:
    """Whether ``fn`` is a law on the sphere (also on several independent spheres, a vMF ``.to_event(1)``)."""
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return isinstance(support, type(constraints.sphere))


def _coordinates(site: dict):
    """The map from R^n onto a site's support: ``biject_to`` of the support, or the radial lift of the sphere (also
    of several independent spheres: the lift's factor is per sphere, summed later)."""
    if on_sphere(site["fn"]):
        return RadialLift(site["fn"].event_shape[-1])
    return biject_to(site["fn"].support)


def _annealable_sites(trace) -> dict:
    """The latent sites of a guide trace with their coordinates in R^n (:func:`_coordinates`); refuses the rest."""
    sites = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]:
            continue
        if site["infer"].get("enumerate") or getattr(site["fn"].support, "is_discrete", False):
            raise NotImplementedError(
                f"AIS anneals continuous latents; site {name!r} is discrete (the GMVAE's y). Use "
                "log_likelihood with proposal='refined+defensive' for models with discrete latents"
            )
        try:
            sites[name] = (site, _coordinates(site))
        except NotImplementedError:
            raise NotImplementedError(
                f"AIS moves latents in R^n (through a bijection, or a radial lift of the sphere), and site "
                f"{name!r}'s support {site['fn'].support} has neither; compare such models by "
                "log_likelihood with proposal='refined+defensive'"
            ) from None
    if not sites:
        raise ValueError("the guide has no latent site to anneal")
    return sites


class AnnealingPath:
    """The annealing path gamma_beta(z) = r(z)^(1 - beta) p(x, z)^beta of one batch, in unconstrained coordinates.

    ``r`` is the starting distribution (a proposal's q(z | x), drawn once); the latents are mapped to R^n by
    ``biject_to(support)`` (a latent on the sphere by :class:`RadialLift`) and both densities carry the same
    Jacobian, so the AIS weights are unchanged by it.
    r's site distributions are kept from the first draw, unless one latent's distribution depends on another's
    value (a hierarchical guide): then r is scored afresh at every point, by the guide conditioned on it.
    """

    def __init__(self, model: Callable, start: Callable, x: torch.Tensor, num_chains: int) -> None:
        self.model, self.guide, self.args, self.num_chains = model, start, as_args(x), num_chains
        with pyro.plate(SAMPLES_PLATE, num_chains, dim=-2), torch.no_grad():
            trace = poutine.trace(start).get_trace(*self.args)
        self.sites, self.start = {}, {}
        for name, (site, transform) in _annealable_sites(trace).items():
            self.sites[name] = {"fn": site["fn"], "transform": transform, "stack": site["cond_indep_stack"]}
            self.start[name] = transform.inv(site["value"]).detach()
        self.dependent = len(self.sites) > 1 and self._latents_depend_on_each_other(trace)

    def _latents_depend_on_each_other(self, trace) -> bool:
        """Whether a site's distribution changes when the other latents take other values (chains permuted)."""
        values = {name: trace.nodes[name]["value"] for name in self.sites}
        moved = {name: value.roll(1, 0) for name, value in values.items()}
        with pyro.plate(SAMPLES_PLATE, self.num_chains, dim=-2), torch.no_grad():
            again = poutine.trace(poutine.condition(self.guide, data=moved)).get_trace(*self.args)
        return any(not torch.allclose(again.nodes[name]["fn"].log_prob(values[name]),
                                      site["fn"].log_prob(values[name]), rtol=1e-5, atol=1e-6, equal_nan=True)
                   for name, site in self.sites.items())

    def _reduce(self, log_prob: torch.Tensor, stack) -> torch.Tensor:
        return per_datum_log_prob({"name": "", "log_prob": log_prob, "cond_indep_stack": stack}, 1).reshape(
            self.num_chains, -1)

    def evaluate(self, u: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict, dict]:
        """log r + log|J| and log p(x, z) + log|J| at ``u``, ``(C, B)`` each, and their gradients in ``u``."""
        with torch.enable_grad():
            u = {name: value.detach().requires_grad_() for name, value in u.items()}
            z, log_start, log_jacobian = {}, 0.0, 0.0
            for name, site in self.sites.items():
                z[name] = site["transform"](u[name])
                jacobian = site["transform"].log_abs_det_jacobian(u[name], z[name])
                log_jacobian = log_jacobian + _per_chain_datum(jacobian.expand(u[name].shape[:jacobian.dim()]))
            fns = {name: site["fn"] for name, site in self.sites.items()}
            if self.dependent:
                with pyro.plate(SAMPLES_PLATE, self.num_chains, dim=-2):
                    rescored = poutine.trace(poutine.condition(self.guide, data=z)).get_trace(*self.args)
                fns = {name: rescored.nodes[name]["fn"] for name in self.sites}
            for name, site in self.sites.items():
                log_start = log_start + self._reduce(fns[name].log_prob(z[name]), site["stack"])
            with pyro.plate(SAMPLES_PLATE, self.num_chains, dim=-2):
                trace = poutine.trace(poutine.condition(self.model, data=z)).get_trace(*self.args)
            trace.compute_log_prob()
            log_joint = 0.0
            for site in trace.nodes.values():
                if site["type"] == "sample" and not site_is_subsample(site):
                    log_joint = log_joint + per_datum_log_prob(site, 1).reshape(self.num_chains, -1)
            names = list(u)
            a, b = log_start + log_jacobian, log_joint + log_jacobian
            grad_a = torch.autograd.grad(a.sum(), [u[n] for n in names], retain_graph=True)
            grad_b = torch.autograd.grad(b.sum(), [u[n] for n in names])
        return a.detach(), b.detach(), dict(zip(names, grad_a, strict=True)), dict(zip(names, grad_b, strict=True))


def _per_chain_datum(value: torch.Tensor) -> torch.Tensor:
    """Sum over event dimensions: ``(C, B, ...) -> (C, B)``."""
    return value.flatten(2).sum(-1) if value.dim() > 2 else value


def batch_ais(path: AnnealingPath, betas: torch.Tensor, leapfrog_steps: int, step_size: float, target_accept: float,
              progress: bool, num_tuning: int, spread: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """AIS log weights ``(C, B)`` of the first C chains and the mean acceptance rate of one batch.

    HMC runs in coordinates whitened by the spread of the starting draws (a diagonal mass matrix per datum, fixed
    for the whole run), so one step size suits every latent dimension; each datum's step size adapts towards
    ``target_accept``. Both are read off the last ``num_tuning`` chains only, whose weights are thrown away: every
    kernel that moves the first C chains is then chosen independently of them, and their weights stay exactly
    valid (adapting to a chain's own acceptances would bias them). ``spread`` (site -> (1, B, ...)) replaces the
    whitening (reverse AIS, whose chains all start at one point: :mod:`~pyrovae.infer.estimation.bdmc`).
    """
    u = dict(path.start)
    num_chains = next(iter(u.values())).shape[0] - num_tuning
    if spread is None:
        spread = {n: v[num_chains:].std(0, keepdim=True).clamp(min=1e-6) if num_tuning > 1
                  else torch.ones_like(v[:1]) for n, v in u.items()}
    a, b, grad_a, grad_b = path.evaluate(u)
    batch = a.shape[1]
    dtype, device = a.dtype, a.device
    log_weights = torch.zeros(a.shape, dtype=torch.float64, device=device)
    eps = torch.full((batch,), float(step_size), dtype=dtype, device=device)  # per-datum step sizes
    accepted = torch.zeros((), dtype=dtype, device=device)  # summed on the device: no host sync per step
    steps = len(betas) - 1

    def per_site(mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return mask.reshape(mask.shape + (1,) * (value.dim() - 2))

    for t in tqdm(range(1, steps + 1), desc="AIS", disable=not progress, leave=False):
        beta_before, beta = float(betas[t - 1]), float(betas[t])
        log_weights += (beta - beta_before) * (b - a).double()  # the weight of the move to gamma_t, at z_{t-1}

        def force(grad_a_, grad_b_, beta=beta):  # the gradient of log gamma_t in whitened coordinates
            return {n: spread[n] * ((1.0 - beta) * grad_a_[n] + beta * grad_b_[n]) for n in grad_a_}

        # the step size jittered by U(0.5, 1.5) per chain and transition (Neal 2011): a trajectory of fixed length
        # can trace a whole period of a near-Gaussian target and end where it began; the jitter is drawn
        # independently of the chains' states, so every kernel still leaves gamma_t invariant
        jitter = torch.rand((a.shape[0], batch), dtype=dtype, device=device).add_(0.5)
        step = {n: per_site(eps * jitter, v) for n, v in u.items()}
        momentum = {n: torch.randn_like(v) for n, v in u.items()}
        energy = -((1.0 - beta) * a + beta * b) + sum(_per_chain_datum(m.square()) for m in momentum.values()) / 2
        grad = force(grad_a, grad_b)
        p = {n: momentum[n] + 0.5 * step[n] * grad[n] for n in u}
        proposal = dict(u)
        for leap in range(leapfrog_steps):
            proposal = {n: proposal[n] + step[n] * spread[n] * p[n] for n in u}
            a_new, b_new, grad_a_new, grad_b_new = path.evaluate(proposal)
            grad = force(grad_a_new, grad_b_new)
            factor = 0.5 if leap == leapfrog_steps - 1 else 1.0
            p = {n: p[n] + factor * step[n] * grad[n] for n in u}
        energy_new = -((1.0 - beta) * a_new + beta * b_new) + sum(_per_chain_datum(m.square()) for m in p.values()) / 2
        log_accept = (energy - energy_new).nan_to_num(nan=-math.inf)
        accept = torch.rand_like(log_accept).log() < log_accept  # (C, B)
        u = {n: torch.where(per_site(accept, v), proposal[n], v) for n, v in u.items()}
        a, b = torch.where(accept, a_new, a), torch.where(accept, b_new, b)
        grad_a = {n: torch.where(per_site(accept, v), grad_a_new[n], v) for n, v in grad_a.items()}
        grad_b = {n: torch.where(per_site(accept, v), grad_b_new[n], v) for n, v in grad_b.items()}
        accepted += accept[:num_chains].to(dtype).mean()
        # each datum's step size towards the target acceptance (Wu et al. 2017: 0.65), from the tuning chains
        rate = accept[num_chains:].to(dtype).mean(0) if num_tuning else accept.to(dtype).mean(0)  # (B,)
        eps = eps * torch.where(rate > target_accept, 1.05, 0.95).to(dtype)
    return log_weights[:num_chains], (accepted / max(steps, 1)).cpu()


@torch.no_grad()
@freed_memory_kept()
def ais_log_likelihood(
    model: Callable,
    guide: Callable,
    data,
    num_chains: int = 16,
    num_steps: int = 500,
    leapfrog_steps: int = 5,
    step_size: float = 0.5,
    start: str | Proposal = "guide",
    target_accept: float = 0.65,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> LogLikelihood:
    """log p(x_i) for every datum by annealed importance sampling from ``start`` to the posterior p(z | x_i).

    ``num_chains`` chains per datum start from r(z | x_i) (the guide, or any proposal of
    :func:`~pyrovae.infer.log_likelihood`) and move through ``num_steps`` distributions
    gamma_t proportional to r^(1 - beta_t) p(x_i, z)^beta_t (a sigmoid schedule of beta), each by one HMC transition of
    ``leapfrog_steps`` leapfrog steps whose per-datum step size (in coordinates whitened by the spread of the
    starting draws; ``step_size`` to begin with) adapts towards ``target_accept`` (Wu et al. 2017).
    The AIS weights give an unbiased estimate of p(x_i), so the log is a stochastic lower bound that tightens as
    ``num_steps`` grows; with one step it is importance sampling from r. Vectorised over chains and data. Latents
    are moved in R^n: through ``biject_to`` of their support (Gaussian latents, a latent library size), and a latent
    on the sphere (the S-VAE's vMF or Power Spherical) through :class:`RadialLift`, with the same weights as on the
    sphere; discrete latents are refused. The result's ``khat`` is that of the AIS weights over the chains
    (meaningful from about 100 chains), ``ess`` the effective number of chains (so :attr:`~LogLikelihood.mc_stderr` and
    :attr:`~LogLikelihood.certified` apply) and ``acceptance`` the mean HMC acceptance rate.
    ``min(max(8, num_chains // 8), 64)`` more chains run alongside to tune the step sizes and the whitening; their
    weights are not used. Each transition's step size is jittered by a factor U(0.5, 1.5) per chain (Neal 2011), so
    that no fixed trajectory length keeps returning the chains where they began.

    Two uses: the reference (a few chains, many steps: ``num_chains=16, num_steps=1000``), and the most reliable
    estimator on a budget (many chains, few steps from the refined proposal: ``num_chains=500, num_steps=30,
    start="refined"``), whose weights over the chains have a meaningful k-hat. The default batch keeps chains x data
    x features near 2^24. Refuses a point-mass guide (``DeltaGuide``): a start without a density.
    """
    check_integer("num_chains", num_chains, 1)
    check_integer("num_steps", num_steps, 1)
    check_integer("leapfrog_steps", leapfrog_steps, 1)
    check_number("step_size", step_size, 0.0, strict=True)
    check_number("target_accept", target_accept, 0.0, strict=True)
    if target_accept >= 1.0:
        raise ValueError(f"target_accept is an acceptance rate in (0, 1), got {target_accept}")
    num_tuning = min(max(8, num_chains // 8), 64)  # extra chains that tune the kernels (see batch_ais)
    features = getattr(model, "x_dim", None) or getattr(guide, "x_dim", None) or 256
    device = check_device(device) if device is not None else module_device(model, guide)
    start = as_proposal(start)
    betas = sigmoid_schedule(num_steps)
    per_datum, khats, acceptance, effective, prints = [], [], [], [], []
    with evaluation_mode(model, guide, frozen=True), pyro.validation_enabled(False):
        batches = as_batches(data, batch_size, shuffle=False, device=device, check=model_check(model),
                             default_batch_size=max(1, 2**24 // ((num_chains + num_tuning) * features)),
                             dtype=floating_dtype(model, guide))
        for x in batches:  # the batch's arguments (x, ...)
            if not per_datum:
                check_model_guide(model, guide, x)
                if guess_max_plate_nesting(model, guide, *x) != 1:
                    raise NotImplementedError("AIS supports models whose only plate is pyro.plate('data')")
                with poutine.block():
                    guide_trace = poutine.trace(guide).get_trace(*x)
                check_has_density(guide_trace, "the start of annealed importance sampling")
                _annealable_sites(guide_trace)  # refuse before any refinement
            path = AnnealingPath(model, start.for_batch(model, guide, x, 1), x, num_chains + num_tuning)
            log_weights, rate = batch_ais(path, betas, leapfrog_steps, step_size, target_accept, progress, num_tuning)
            per_datum.append(torch.logsumexp(log_weights, 0) - math.log(num_chains))
            normalised = log_weights - log_weights.max(0).values
            effective.append(normalised.logsumexp(0).mul(2).sub(normalised.mul(2).logsumexp(0)).exp().nan_to_num(0.0))
            khats.append(psis_khat(log_weights.T))
            acceptance.append(rate)
            prints.append(fingerprint(x))
    if not per_datum:
        raise ValueError("ais_log_likelihood got an empty data set")
    name = f"ais({num_steps} steps from {start.name})"
    return LogLikelihood(torch.cat(per_datum).cpu(), torch.cat(khats).cpu(), num_chains, name,
                         acceptance=float(torch.stack(acceptance).mean()), ess=torch.cat(effective).cpu(),
                         fingerprint=torch.cat(prints))


__all__ = ["ais_log_likelihood", "sigmoid_schedule"]
