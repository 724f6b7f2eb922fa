"""The modes of a multimodal posterior, for the refined proposal: where to start, which optima differ, how to mix.

A per-datum refinement of q(z | x) climbs to the optimum nearest its start. Where p(z | x) has several modes and the
encoder points at a minor one, the refined q never draws the major one, and no diagnostic of its weights can see
the mass it misses (k-hat reads the weights of the draws made). :class:`~pyrovae.infer.RefinedProposal` therefore
refines from several starts, the encoder's and the best of many prior draws (:func:`prior_starts`), keeps the
optima, grouped into modes (:func:`distinct_optima`), and mixes them (:class:`ComponentMixture`, weighted by
:func:`mixture_log_weights`): a search, which makes a missed mode unlikely in a low-dimensional latent space and
says how many modes it found, not a proof that none was missed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.distributions import TorchDistribution
from pyro.poutine.util import site_is_subsample

from pyrovae.infer.estimation.importance import SAMPLES_PLATE, per_datum_log_prob

# two optima are one mode when the KL divergence of one from the other is below this, either way (nats): a wide
# optimum that covers a narrow one is the same mode
SAME_MODE_KL = 2.0
# a distinct optimum counts as a mode of the posterior when it holds at least this share of the estimated mass
MODE_MASS = 0.05
# the share of the mixture spread evenly over the distinct optima, whatever their estimated mass
MIXTURE_FLOOR = 0.1
_NO_SHAPE = torch.Size()
# members of a mode are weighted by exp(sharpness * (score - best score)): one a nat below the best gets e^-10
_MEMBER_SHARPNESS = 10.0


@torch.no_grad()
def prior_starts(model: Callable, args: tuple, max_plate_nesting: int, num_starts: int,
                 num_candidates: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """``num_starts`` starting points per datum for a refinement, in different regions of the latent space: the
    ``num_candidates`` draws from the model's prior are split into ``num_starts`` regions (around farthest-point
    centres, the first the draw with the highest log p(x_i, latents)), and each region's start is its draw with the
    highest log p(x_i, latents). A start in every region, not the best draws overall, which may all lie in one
    mode's basin.

    :returns: ``(points, labels)``: ``{site: (num_starts, B, *event)}`` for the continuous latents and
        ``{site: (num_starts, B)}`` for the discrete ones (a GMVAE's y: the component each point was drawn from);
        None when the model's latent sites are not shaped ``(samples, data, *event)`` (plates nested in ``"data"``).
    """
    batch_size = args[0].shape[0]
    with poutine.block(), pyro.plate(SAMPLES_PLATE, num_candidates, dim=-(max_plate_nesting + 1)):
        trace = poutine.trace(model).get_trace(*args)
    trace.compute_log_prob()
    log_joint = args[0].new_zeros(num_candidates, batch_size)
    latents, labels = {}, {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        term = per_datum_log_prob(site, max_plate_nesting)
        log_joint = log_joint + term.reshape(-1, *term.shape[-2:]).sum(0)
        if not site["is_observed"]:
            value = site["value"]
            if value.dim() < 2 or value.shape[:2] != (num_candidates, batch_size):
                return None
            (labels if getattr(site["fn"].support, "is_discrete", False) else latents)[name] = value
    if not latents:
        return None
    points = torch.cat([v.reshape(num_candidates, batch_size, -1).to(log_joint.dtype) for v in latents.values()], -1)
    score = log_joint.nan_to_num(nan=-math.inf)
    rows = torch.arange(batch_size, device=score.device)
    # regions of the latent space: farthest-point centres from the best draw, each draw in its nearest one's region
    centres = [score.argmax(0)]  # (B,) each
    nearest = (points - points[centres[0], rows]).square().sum(-1)  # (P, B) squared distance to the centres
    for _ in range(num_starts - 1):
        centres.append(nearest.argmax(0))
        nearest = torch.minimum(nearest, (points - points[centres[-1], rows]).square().sum(-1))
    distance = torch.stack([(points - points[c, rows]).square().sum(-1) for c in centres])  # (num_starts, P, B)
    region = distance.argmin(0)  # (P, B)
    in_region = region.unsqueeze(0) == torch.arange(num_starts, device=score.device).reshape(-1, 1, 1)
    chosen = score.unsqueeze(0).masked_fill(~in_region, -math.inf).argmax(1)  # (num_starts, B): each region's best
    return ({name: value[chosen, rows] for name, value in latents.items()},
            {name: value[chosen, rows] for name, value in labels.items()})


def distinct_optima(score: torch.Tensor, divergence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Group M refined components into modes, per datum, and count the modes.

    :param score: ``(M, B)`` each component's ELBO (log p(x_i) minus its divergence from the posterior: a
        component that fits a mode of larger mass, or fits it better, scores higher).
    :param divergence: ``(M, M, B)`` KL(component a || component b) per datum.
    :returns: ``group (M, B)``, the index of the component that stands for each one's mode (components taken in
        order of score join the group of the best-scoring earlier one within :data:`SAME_MODE_KL` of them, either
        way: single linkage; the group's first, best member stands for it), and
        ``num_modes (B,)``, the groups that hold at least :data:`MODE_MASS` of the mass the scores estimate.
    """
    num_components, batch_size = score.shape
    score = score.nan_to_num(nan=-math.inf)
    same = torch.minimum(divergence, divergence.transpose(0, 1)).nan_to_num(nan=math.inf) < SAME_MODE_KL
    order = score.argsort(0, descending=True)  # (M, B)
    rows = torch.arange(batch_size, device=score.device)
    group = torch.full((num_components, batch_size), -1, dtype=torch.long, device=score.device)
    for rank in range(num_components):
        m = order[rank]
        representative = m.clone()
        for before in reversed(range(rank)):  # single linkage: the group of the best-scoring one it is close to
            k = order[before]
            representative = torch.where(same[m, k, rows], group[k, rows], representative)
        group[m, rows] = representative
    keep = group == torch.arange(num_components, device=score.device).unsqueeze(-1)
    share = torch.softmax(score.masked_fill(~keep, -math.inf), 0).nan_to_num(0.0)
    num_modes = (keep & (share >= MODE_MASS)).sum(0).clamp_min(1)
    return group, num_modes


def mixture_log_weights(score: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """``(M, B)`` log mixture weights of the components: each mode (a group of :func:`distinct_optima`) gets its
    estimated share of the mass (the softmax of its best score: a mode fitted poorly gets less), with
    :data:`MIXTURE_FLOOR` of the mixture spread evenly over the modes that hold at least :data:`MODE_MASS`, so that
    a mode whose mass was underestimated still gets draws. A mode's weight is split among its components by the
    softmax of ten times their scores (a member a nat below the best gets e^-10 of its weight), and all of them
    stay in the mixture (components that are one mode by the divergence test may still cover different parts of
    it)."""
    num_components = score.shape[0]
    keep = group == torch.arange(num_components, device=score.device).unsqueeze(-1)  # the modes' representatives
    share = torch.softmax(score.nan_to_num(nan=-math.inf).masked_fill(~keep, -math.inf), 0)
    counted = keep & (share.nan_to_num(0.0) >= MODE_MASS)  # the floor is for modes, not for stray optima
    counted = torch.where(counted.any(0, keepdim=True), counted, keep)
    even = counted / counted.sum(0, keepdim=True).clamp_min(1)
    share = torch.where(torch.isfinite(share).all(0, keepdim=True), share, even)  # no finite score: even shares
    mode_weight = (1.0 - MIXTURE_FLOOR) * share + MIXTURE_FLOOR * even  # (M, B), nonzero at representatives
    # within a mode, members by the softmax of their scores: a member that fits the mode poorly gets less
    score = score.nan_to_num(nan=-math.inf)
    best = torch.full_like(score, -math.inf).scatter_reduce(0, group, score, reduce="amax")  # (M, B) per group
    relative = (score - best.gather(0, group)).nan_to_num(nan=-math.inf).mul(_MEMBER_SHARPNESS).exp()
    relative = torch.where(torch.isfinite(best.gather(0, group)), relative, torch.ones_like(relative))
    total = torch.zeros_like(relative).scatter_add_(0, group, relative)
    return (mode_weight.gather(0, group) * relative / total.gather(0, group)).log()


def _expand_weights(log_weights: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
    """``(M, *shape)`` -> ``(M, *batch_shape)``, ``shape`` aligned to the right of ``batch_shape``."""
    padding = (1,) * (len(batch_shape) - (log_weights.dim() - 1))
    return log_weights.reshape(log_weights.shape[:1] + padding + log_weights.shape[1:]).expand(
        log_weights.shape[:1] + batch_shape)


class ComponentMixture(TorchDistribution):
    """A finite mixture of distributions of one family and shape, with weights per batch element.

    ``sum_m exp(log_weights[m]) components[m]``: draws pick a component per batch element (no gradient: an
    evaluation distribution), and every draw is scored by the mixture's density.

    :param components: M distributions with one batch and event shape.
    :param log_weights: ``(M, *batch_shape)`` (broadcastable) log weights that sum to one over M; ``-inf`` drops
        a component.
    """

    arg_constraints = {}
    has_rsample = False

    def __init__(self, components: list, log_weights: torch.Tensor, validate_args=None) -> None:
        if not components or len(components) != log_weights.shape[0]:
            raise ValueError(f"{len(components)} components for {log_weights.shape[0]} mixture weights")
        batch_shape = torch.broadcast_shapes(*(c.batch_shape for c in components), log_weights.shape[1:])
        self.components = [c.expand(batch_shape) for c in components]
        self.log_weights = _expand_weights(log_weights, batch_shape)
        super().__init__(batch_shape, components[0].event_shape, validate_args=False)

    @property
    def support(self):
        return self.components[0].support

    def expand(self, batch_shape, _instance=None) -> ComponentMixture:
        batch_shape = torch.Size(batch_shape)
        return ComponentMixture([c.expand(batch_shape) for c in self.components],
                                _expand_weights(self.log_weights, batch_shape))

    def sample(self, sample_shape=_NO_SHAPE) -> torch.Tensor:
        with torch.no_grad():
            draws = torch.stack([c.sample(sample_shape) for c in self.components])  # (M, *sample, *batch, *event)
            shape = torch.Size(sample_shape) + self.batch_shape
            logits = self.log_weights.movedim(0, -1).expand(shape + (len(self.components),))
            pick = torch.distributions.Categorical(logits=logits).sample()  # (*sample, *batch)
            index = pick.reshape((1,) + shape + (1,) * len(self.event_shape))
            return draws.gather(0, index.expand((1,) + draws.shape[1:])).squeeze(0)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        terms = torch.stack([c.log_prob(value) for c in self.components])  # (M, *sample, *batch)
        padding = (1,) * (terms.dim() - self.log_weights.dim())  # the sample dimensions
        log_weights = self.log_weights.reshape(self.log_weights.shape[:1] + padding + self.log_weights.shape[1:])
        terms = torch.where(torch.isfinite(log_weights), terms + log_weights, torch.full_like(terms, -math.inf))
        return terms.logsumexp(0)


__all__ = ["ComponentMixture", "distinct_optima", "mixture_log_weights", "prior_starts"]
