"""Pareto-smoothed importance sampling diagnostic: the k-hat of each row of log weights.

Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto smoothed importance sampling", JMLR: fit a
generalised Pareto distribution to the largest M = ceil(min(S / 5, 3 sqrt(S))) importance weights,
in excess of the (M+1)-th largest, with the empirical-Bayes estimator of Zhang & Stephens (2009,
Technometrics) and the weakly informative prior of Vehtari et al. on the shape. k-hat < 0.5: the
estimate is reliable; 0.5-0.7: usable; > 0.7: unreliable (the weights' variance is effectively
infinite). Vectorised over rows in torch, so it runs on the device where the weights are; the test
suite checks it against ``arviz.psislw``.
"""

from __future__ import annotations

import math

import torch

# Zhang & Stephens' prior on the scale (3) and Vehtari et al.'s shrinkage of k towards 0.5 (10 pseudo-draws).
_PRIOR_SCALE = 3.0
_PRIOR_SHAPE_DRAWS = 10.0


def psis_tail_length(num_samples: int) -> int:
    """M, the number of largest weights the generalised Pareto is fitted to."""
    return int(math.ceil(min(0.2 * num_samples, 3.0 * math.sqrt(num_samples))))


def _gpd_fit(exceedances: torch.Tensor) -> torch.Tensor:
    """Shape k of a generalised Pareto fitted to each row of sorted (ascending) positive exceedances (R, M)."""
    rows, tail = exceedances.shape
    num_grid = 30 + int(math.sqrt(tail))
    grid = torch.arange(1, num_grid + 1, dtype=exceedances.dtype, device=exceedances.device)
    quartile = exceedances[:, int(tail / 4 + 0.5) - 1 : int(tail / 4 + 0.5)]  # (R, 1) first quartile
    # candidate values of theta = -k / sigma (Zhang & Stephens, eq. 11)
    theta = 1.0 / exceedances[:, -1:] + (1.0 - torch.sqrt(num_grid / (grid - 0.5))) / (_PRIOR_SCALE * quartile)
    k = torch.log1p(-theta.unsqueeze(-1) * exceedances.unsqueeze(-2)).mean(-1)  # (R, num_grid)
    profile = tail * (torch.log(-theta / k) - k - 1.0)  # profile log-likelihood of each theta
    weights = torch.softmax(profile, dim=-1)  # posterior weight of each grid point
    theta_hat = (weights * theta).sum(-1, keepdim=True)
    k_hat = torch.log1p(-theta_hat * exceedances).mean(-1)
    return (tail * k_hat + 0.5 * _PRIOR_SHAPE_DRAWS) / (tail + _PRIOR_SHAPE_DRAWS)


def psis_khat(log_weights: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Pareto k-hat of each row of ``log_weights`` (..., num_samples) -> (...).

    Rows whose tail weights are equal up to rounding (a guide equal to the posterior gives constant
    weights) have bounded weights and get ``-inf``. Fewer than 5 tail draws (S < 25) give ``inf``: too
    few samples to judge.
    """
    batch_shape, num_samples = log_weights.shape[:-1], log_weights.shape[-1]
    flat = log_weights.detach().reshape(-1, num_samples)
    if not torch.is_floating_point(flat) or flat.dtype == torch.float16 or flat.dtype == torch.bfloat16:
        flat = flat.float()
    tail = psis_tail_length(num_samples)
    if tail <= 4:
        return torch.full(batch_shape, math.inf, dtype=flat.dtype, device=flat.device)
    out = []
    for rows in flat.split(chunk_size):
        top = rows.topk(tail + 1, dim=-1).values.flip(-1)  # ascending; top[:, 0] is the cutoff
        # a spread of the tail within rounding error of the log weights means constant weights
        rounding = 64 * torch.finfo(top.dtype).eps * top[:, -1].abs().clamp_min(1.0)
        degenerate = (top[:, -1] - top[:, 0]) <= rounding
        top = top - top[:, -1:]  # scale by the largest weight for stability
        exceedances = torch.exp(top[:, 1:]) - torch.exp(top[:, :1])  # (R, M) >= 0
        positive = torch.where(degenerate.unsqueeze(-1), torch.ones_like(exceedances), exceedances)
        # ties at the cutoff give zero exceedances, which the fit cannot take; they carry no tail mass
        positive = positive.clamp_min(torch.finfo(positive.dtype).tiny)
        khat = _gpd_fit(positive)
        out.append(torch.where(degenerate, torch.full_like(khat, -math.inf), khat))
    return torch.cat(out).reshape(batch_shape)
