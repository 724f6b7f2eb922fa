"""The spread a refinement starts from, calibrated per datum before its steps (:class:`~pyrovae.infer.RefinedProposal`).

Adam moves each unconstrained parameter by about the learning rate per step, so ``steps`` steps change a log scale by
at most about ``steps * lr / 2`` (2.75 at the defaults): an encoder far narrower than the posterior (a VAE trained
with a KL weight of 1e-4: 1/100 of it) stayed several times too narrow, and its weights, nearly constant over draws
that never reach the posterior's mass, certified estimates 0.6 nats low (1/100) to 9 nats (1/10,000).

So each start's spread is first multiplied by the factor of :data:`SPREAD_FACTORS` whose ELBO at the encoder's start
beats that start's own clearly. Every factor is scored on the same draws (the noise of the ELBO from other sites and
directions cancels in the differences), and its gain must exceed ``CALIBRATION_MARGIN`` nats both on average and in
the median draw: a correction of a spread far off, not a choice among draws' noise (a mean gain beyond three
standard errors, the rule before, missed starts far too wide, whose gain is large in every draw but of so heavy a
tail that its mean is within three standard errors of zero at 16 draws). With several latent sites, one factor for
all of them first, then one for each site in turn (the others as chosen), in ``CALIBRATION_SWEEPS`` sweeps over the
sites. Then each coordinate of a Gaussian site (its scale, or its row of the Cholesky factor) gets a factor of its
own, read off the ELBO's slope along it (for a Gaussian posterior 1 - (spread / posterior's)^2; clamped to
1/100 .. 100, one within sqrt(10) left to the steps), kept for the data where it is clearly better, and once more
where one was kept: one factor for a site left a guide far off in one coordinate of two certified wrong (up to 0.64
nats). A law on the sphere has one concentration (a projected normal's directions are left to the steps).

The factor is read at the encoder's start, near a mode, and given to the prior starts too, which carry the encoder's
spread: each start's own ELBO, far from its mode, would choose a spread wide enough to reach the mode from there, too
wide once there (a major mode found so kept 0.2% of the mixture's weight); and a mode found from a prior start left at
the old spread is underweighted where the mixture weighs its optima by their ELBOs. A guide with an enumerated site
(a GMVAE's y) is left as it is: its refinement sums the ELBOs of the q(z | x, y) unweighted, so a far-off rare y
would choose the factor of the dominant one.
"""

from __future__ import annotations

import math

import torch

from pyrovae.infer.estimation.family_parameters import direction_slopes, directions_respread, respread
from pyrovae.infer.estimation.importance import log_importance_weights

# the factors on the starts' spread among which the encoder's start's ELBO chooses before the steps (1: as it is)
SPREAD_FACTORS = (1.0,) + tuple(10 ** (k / 2) for k in (-4, -3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8))
# the draws of each factor's ELBO (the same for every factor), and by how much (nats) one must beat the start's, on
# average and in the median draw
CALIBRATION_PARTICLES, CALIBRATION_MARGIN = 16, 1.0
CALIBRATION_SWEEPS = 2  # with several latent sites: after one factor for all, one for each site in turn, so often


def _clearly_better(gain: torch.Tensor, dim: int) -> torch.Tensor:
    """Where the paired gains ``gain`` (over the draws along ``dim``) exceed the margin on average and in the median."""
    return (gain.mean(dim) > CALIBRATION_MARGIN) & (gain.median(dim).values > CALIBRATION_MARGIN)


def calibrate_spread(model, refined, repeated, max_plate_nesting, leaves, indices, sizes, spread,
                     num_starts) -> bool:
    """Calibrate, in place, the spread of every start in ``leaves`` (the refinement's unconstrained parameters by
    site, the data along ``indices[site]``, ``sizes[site]`` coordinates per datum); ``refined`` reads
    ``spread[site]``, a log factor per row, while factors are tried. False, and nothing changed, for a guide with an
    enumerated site."""
    first = next(iter(next(iter(leaves.values())).values()))
    device, dtype = first.device, first.dtype
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []

    def log_weights(seed: int, grad: bool = False) -> torch.Tensor | None:  # (draws, rows): every factor's draws
        with torch.set_grad_enabled(grad), torch.random.fork_rng(devices=devices):
            # the CPU's generator alone where the scoring is on the CPU (torch.manual_seed resets every GPU's too)
            (torch.manual_seed if devices else torch.default_generator.manual_seed)(seed)
            weights = log_importance_weights(model, refined, repeated, CALIBRATION_PARTICLES, max_plate_nesting,
                                             sum_enumerated=False)
        return None if weights.dim() > 2 else weights  # (*enumerated, S, N): an enumerated site

    def at_start(seed: int) -> torch.Tensor | None:  # (draws, B) at the encoder's starts
        weights = log_weights(seed)
        return None if weights is None else weights.unflatten(-1, (num_starts, -1))[:, 0]

    def new_seed() -> int:
        return int(torch.randint(2**62, ()))

    def calibrate(sites) -> bool:  # the sites' factor chosen and applied; False: an enumerated site
        seed, draws = new_seed(), []
        rows = next(iter(leaves[sites[0]].values())).shape[indices[sites[0]]]
        for factor in SPREAD_FACTORS:
            spread.update({name: torch.full((rows,), math.log(factor), dtype=dtype, device=device) for name in sites})
            draws.append(at_start(seed))
            if draws[-1] is None:
                spread.clear()
                return False
        spread.clear()
        stacked = torch.stack(draws)  # (factors, draws, B)
        clear = _clearly_better((stacked - draws[0]).nan_to_num(nan=-math.inf), 1)  # paired: -inf where both are
        best = stacked.mean(1).nan_to_num(nan=-math.inf).masked_fill(~clear, -math.inf).argmax(0)  # else 1, as is
        log_factor = torch.tensor([math.log(f) for f in SPREAD_FACTORS], dtype=dtype, device=device)[best]
        log_factor = log_factor.repeat(num_starts)
        for name in sites:
            for key, value in respread(leaves[name], log_factor, indices[name]).items():
                leaves[name][key].copy_(value)
        return True

    def calibrate_directions(name: str) -> bool:  # whether a factor was kept (none beyond sqrt(10): one gradient)
        params, index = leaves[name], indices[name]
        if "loc" not in params:  # on the sphere: one concentration, or a projected normal's
            return False
        keys = [key for key in ("log_scale", "log_diagonal", "tril") if key in params]
        with torch.enable_grad():
            weights = log_weights(new_seed(), grad=True)
            if weights is None:
                return False
            total = weights.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).mean(0).sum()
            grads = torch.autograd.grad(total, [params[key] for key in keys], allow_unused=True)
        slope = direction_slopes(params, dict(zip(keys, grads, strict=True)))
        if slope is None:
            return False
        ratio = (1 - slope).nan_to_num(nan=1.0)  # (spread / posterior's)^2 along each coordinate
        log_factor = (-0.5 * ratio.clamp_min(1e-4).log()).clamp(math.log(1e-2), math.log(1e2))
        # within sqrt(10) of the start: left to the steps (which move a log scale by up to about 2.75)
        rows = log_factor.masked_fill(log_factor.abs() < 0.5 * math.log(10), 0.0).movedim(index, 0)
        if not rows.any():
            return False
        rows = torch.cat([rows[: rows.shape[0] // num_starts]] * num_starts)  # the encoder's, for every start
        before = {key: value.clone() for key, value in params.items()}
        seed = new_seed()  # draws other than the slope's
        start = at_start(seed)
        for key, value in directions_respread(before, rows.movedim(0, index)).items():
            params[key].copy_(value)
        clear = _clearly_better((at_start(seed) - start).nan_to_num(nan=-math.inf), 0).repeat(num_starts)
        kept = rows * clear.reshape(-1, *(1,) * (rows.dim() - 1))
        for key, value in directions_respread(before, kept.movedim(0, index)).items():
            params[key].copy_(value)
        return bool(clear.any())

    with torch.no_grad():
        sites = list(leaves)
        if not calibrate(sites):
            return False
        for _ in range(CALIBRATION_SWEEPS if len(sites) > 1 else 0):  # twice: a factor beyond the range's end (one
            for name in sites:                                        # site far too narrow, another too wide) goes
                calibrate([name])                                     # on at the second
        for name in sites:
            sweeps = CALIBRATION_SWEEPS if sizes[name] > 1 else 0
            while sweeps and calibrate_directions(name):  # again only where the first changed something
                sweeps -= 1
    return True


__all__ = ["CALIBRATION_MARGIN", "CALIBRATION_PARTICLES", "CALIBRATION_SWEEPS", "SPREAD_FACTORS", "calibrate_spread"]
