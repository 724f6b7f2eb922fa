"""Pareto-smoothed importance sampling diagnostic: the k-hat of each row of log weights.

Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto smoothed importance sampling", JMLR: fit a
generalised Pareto distribution to the largest M = ceil(min(S / 5, 3 sqrt(S))) importance weights,
in excess of the (M+1)-th largest, with the empirical-Bayes estimator of Zhang & Stephens (2009,
Technometrics) and the weakly informative prior of Vehtari et al. on the shape. The weights have a finite
variance for k < 0.5; Vehtari et al. call an estimate of S draws reliable up to min(1 - 1 / log10 S, 0.7)
(:func:`khat_limit`: 0.5 at S = 100, 0.63 at 500, 0.7 from 2,155 draws), beyond which S is too small for any
estimate. Vectorised over rows in torch, so it runs on the device where the weights are; the test suite
checks it against ``arviz.psislw``.
"""

from __future__ import annotations

import math

import torch

# Zhang & Stephens' prior on the scale (3) and Vehtari et al.'s shrinkage of k towards 0.5 (10 pseudo-draws).
_PRIOR_SCALE = 3.0
_PRIOR_SHAPE_DRAWS = 10.0
_LOG_TINY = math.log(torch.finfo(torch.float64).tiny)
_COARSEST_CONSTANT = 0.05  # nats: the widest rounding within which a tail may be read as constant weights


def psis_tail_length(num_samples: int) -> int:
    """M, the number of largest weights the generalised Pareto is fitted to."""
    return int(math.ceil(min(0.2 * num_samples, 3.0 * math.sqrt(num_samples))))


def khat_limit(num_samples):
    """The largest k-hat at which an importance-sampling estimate of ``num_samples`` draws is called reliable,
    min(1 - 1 / log10 S, 0.7) (Vehtari et al. 2024, section 3): 0.5 at S = 100, 0.63 at 500, 0.7 from 2,155.
    A number for a number, a tensor for a tensor of draws per datum."""
    if isinstance(num_samples, torch.Tensor):
        draws = num_samples.double()
        limit = torch.clamp(1.0 - 1.0 / torch.log10(draws.clamp_min(2.0)), max=0.7)
        return torch.where(draws > 1, limit, torch.full_like(limit, -math.inf))
    if num_samples <= 1:
        return -math.inf
    return min(1.0 - 1.0 / math.log10(num_samples), 0.7)


def _gpd_fit(exceedances: torch.Tensor) -> torch.Tensor:
    """Shape k of a generalised Pareto fitted to each row of sorted (ascending) exceedances (R, M) >= 0.

    Zero exceedances (draws tied with the cutoff) are left out, as arviz leaves them out: each row is fitted to
    its n positive entries, the last n of the row, with the grid size and quartile of Zhang & Stephens for that n.
    """
    rows, tail = exceedances.shape
    count = (exceedances > 0).sum(-1, keepdim=True)  # n per row, (R, 1)
    n = count.to(exceedances.dtype).clamp_min(1.0)
    num_grid = 30 + torch.floor(torch.sqrt(n))  # (R, 1)
    grid = torch.arange(1, 30 + int(math.sqrt(tail)) + 1, dtype=exceedances.dtype, device=exceedances.device)
    in_grid = grid <= num_grid  # (R, G)
    quartile_index = (tail - count + torch.floor(n / 4 + 0.5).long() - 1).clamp(0, tail - 1)
    quartile = exceedances.gather(-1, quartile_index)  # (R, 1)
    # candidate values of theta = -k / sigma (Zhang & Stephens, eq. 11)
    theta = 1.0 / exceedances[:, -1:] + (1.0 - torch.sqrt(num_grid / (grid - 0.5))) / (_PRIOR_SCALE * quartile)
    # tied entries are 0: log1p(0) = 0 adds nothing to the sums, so dividing by n averages over the tail only
    k = torch.log1p(-theta.unsqueeze(-1) * exceedances.unsqueeze(-2)).sum(-1) / n  # (R, G)
    profile = n * (torch.log(-theta / k) - k - 1.0)  # profile log-likelihood of each theta
    profile = torch.where(in_grid, profile, torch.full_like(profile, -math.inf))
    weights = torch.softmax(profile, dim=-1)  # posterior weight of each grid point
    theta_hat = (torch.where(in_grid, weights * theta, torch.zeros_like(theta))).sum(-1, keepdim=True)
    k_hat = torch.log1p(-theta_hat * exceedances).sum(-1, keepdim=True) / n
    return ((n * k_hat + 0.5 * _PRIOR_SHAPE_DRAWS) / (n + _PRIOR_SHAPE_DRAWS)).squeeze(-1)


def psis_khat(log_weights: torch.Tensor, chunk_size: int = 4096, resolution: float | None = None) -> torch.Tensor:
    """Pareto k-hat of each row of ``log_weights`` (..., num_samples) -> (...).

    As arviz's ``psislw``: the tail is the draws strictly above the cutoff, the (M+1)-th largest, so draws tied
    with it are left out, and a row with 4 or fewer tail draws gets ``inf`` (too few to judge; always so for
    S < 21). One deliberate difference: rows whose tail weights are all equal up to the rounding of the
    log-weights (a guide equal to the posterior gives constant weights) have bounded weights and get ``-inf``,
    where arviz says ``inf``; where that rounding is itself coarser than 0.05 nats (float32 log-weights beyond
    about 5e4 in size), such a row gets ``inf``: weights that far apart are not known to be constant.

    A row is never read as reliable when its weights are undefined: a row with a NaN log-weight (the weight is
    undefined), a ``+inf`` one (an infinite weight), or only ``-inf`` ones (no weight at all: the estimate is
    log 0) gets ``inf``, as does a row with 4 or fewer distinct tail weights. The result is never NaN, so
    ``khat > limit`` selects every unreliable row.

    :param resolution: the relative precision the log-weights were computed in (default: the epsilon of their
        dtype). Pass ``torch.finfo(torch.float32).eps`` for float32 weights upcast to float64, or rounding noise
        would be read as a tail.
    """
    batch_shape, num_samples = log_weights.shape[:-1], log_weights.shape[-1]
    flat = log_weights.detach().reshape(-1, num_samples)
    if not torch.is_floating_point(flat) or flat.dtype == torch.float16 or flat.dtype == torch.bfloat16:
        flat = flat.float()
    tail = psis_tail_length(num_samples)
    if tail <= 4:  # too few draws to judge any row
        return torch.full(batch_shape, math.inf, dtype=flat.dtype, device=flat.device)
    eps = torch.finfo(flat.dtype).eps if resolution is None else max(float(resolution), torch.finfo(flat.dtype).eps)
    out = []
    for rows in flat.split(chunk_size):
        undefined = rows.isnan().any(-1) | (rows == math.inf).any(-1) | (rows == -math.inf).all(-1)
        top = rows.topk(tail + 1, dim=-1).values.flip(-1).double()  # ascending; top[:, 0] is the cutoff
        # a spread of the tail within a few roundings of the log weights means constant weights; a wider spread is
        # fitted (rounding noise fits a bounded tail, k < 0): 64 ulps read a k = 1 tail at |log w| = 1e6 in float32,
        # spread over about 4 nats, as constant weights and certified it
        rounding = 8 * eps * top[:, -1].abs().clamp_min(1.0)
        degenerate = ~((top[:, -1] - top[:, 0]) > rounding)  # NaN spreads (all -inf) count as degenerate
        # where that rounding is itself more than 0.05 nats (|log w| > 5e4 in float32), weights within it are not
        # known to be constant: too coarse to judge
        coarse = degenerate & (rounding > _COARSEST_CONSTANT) & top[:, -1].isfinite()
        top = top - top[:, -1:]  # scale by the largest weight for stability
        # as arviz: the cutoff is at least log(tiny) below the largest weight (float64), the tail is what exceeds it
        cutoff = top[:, :1].clamp_min(_LOG_TINY)
        exceedances = (torch.exp(top[:, 1:]) - torch.exp(cutoff)).nan_to_num(0.0).clamp_min(0.0)  # (R, M)
        few = (exceedances > 0).sum(-1) <= 4
        safe = torch.where((degenerate | few).unsqueeze(-1), torch.linspace(1, 2, tail, dtype=top.dtype,
                                                                            device=top.device), exceedances)
        khat = _gpd_fit(safe)
        khat = torch.where(few, torch.full_like(khat, math.inf), khat)
        khat = torch.where(degenerate, torch.full_like(khat, -math.inf), khat)
        khat = torch.where(coarse, torch.full_like(khat, math.inf), khat)
        out.append(torch.where(undefined.to(khat.device), torch.full_like(khat, math.inf), khat))
    return torch.cat(out).to(flat.dtype).reshape(batch_shape)
