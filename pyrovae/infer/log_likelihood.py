"""Importance-sampled estimate of the held-out log-likelihood log p(x), with PSIS diagnostics."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from tqdm.auto import tqdm

from pyrovae.infer.contract import check_model_guide
from pyrovae.infer.data import as_batches, model_check, module_device
from pyrovae.infer.evaluation import evaluation_mode
from pyrovae.infer.importance import guess_max_plate_nesting, log_importance_weights
from pyrovae.infer.proposals import GuideProposal, Proposal, as_proposal
from pyrovae.infer.psis import psis_khat
from pyrovae.infer.settings import check_device, check_integer, floating_dtype


@dataclass
class LogLikelihood:
    """Per-datum estimates of log p(x) and their Pareto k-hat diagnostics.

    :ivar per_datum: (N,) log p(x_i) estimates.
    :ivar khat: (N,) Pareto k-hat of each datum's importance weights (> 0.7: unreliable estimate).
    :ivar num_samples: importance samples per datum.
    :ivar proposal: the importance distribution's name (``"guide"``, ``"refined+defensive"``, ...).
    :ivar acceptance: the mean HMC acceptance rate, for annealed importance sampling (else None).
    :ivar mean_log_weight: (N,) each datum's mean log importance weight, E_r[log p(x, z) - log r(z | x)]: the
        proposal's ELBO, for importance sampling (else None). With an enumerated site (the GMVAE's y) it is the mean
        log of the stratified weights, a bound between the ELBO and log p(x).
    """

    per_datum: torch.Tensor
    khat: torch.Tensor
    num_samples: int
    proposal: str = "guide"
    acceptance: float | None = None
    mean_log_weight: torch.Tensor | None = None

    @property
    def elbo(self) -> float:
        """Mean over the data of each datum's mean log weight: the proposal's ELBO (estimated from the same draws)."""
        return float(self.mean_log_weight.mean()) if self.mean_log_weight is not None else math.nan

    @property
    def mean(self) -> float:
        """Mean log-likelihood per datum."""
        return float(self.per_datum.mean())

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` over the data."""
        n = self.per_datum.numel()
        return float(self.per_datum.std() / math.sqrt(n)) if n > 1 else math.nan

    def summary(self) -> dict:
        """A JSON-ready summary: mean, standard error, and the share of data per k-hat band."""
        khat = self.khat
        n = max(khat.numel(), 1)
        return {
            "log_likelihood": self.mean,
            "stderr": self.stderr,
            "num_data": self.per_datum.numel(),
            "num_samples": self.num_samples,
            "proposal": self.proposal,
            **({"proposal_elbo": self.elbo} if self.mean_log_weight is not None else {}),
            **({"acceptance": self.acceptance} if self.acceptance is not None else {}),
            "khat_max": float(khat.max()) if khat.numel() else math.nan,
            "khat_median": float(khat.median()) if khat.numel() else math.nan,
            "frac_khat_gt_0.5": float((khat > 0.5).sum()) / n,
            "frac_khat_gt_0.7": float((khat > 0.7).sum()) / n,
        }

    def __repr__(self) -> str:
        bad = int((self.khat > 0.7).sum())
        return (
            f"LogLikelihood(mean={self.mean:.3f}, stderr={self.stderr:.3f}, num_data={self.per_datum.numel()}, "
            f"num_samples={self.num_samples}, proposal={self.proposal!r}, khat>0.7: {bad})"
        )


@torch.no_grad()
def log_likelihood(
    model: Callable,
    guide: Callable,
    data,
    num_samples: int = 500,
    batch_size: int | None = None,
    max_samples_per_chunk: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    proposal: str | Proposal = "guide",
) -> LogLikelihood:
    """Estimate log p(x_i) for every datum by importance sampling.

    ``log p(x_i) ~= logsumexp_s [log p(x_i, z_s) - log r(z_s | x_i)] - log S`` with z_s ~ r(z | x_i)
    (Burda, Grosse & Salakhutdinov 2016): a lower bound in expectation that tightens as S grows and is
    exact for any S when r is the exact posterior. The proposal r is the guide by default; the Pareto k-hat of
    each datum's weights says whether its estimate can be trusted (> 0.7: no). Where the amortised guide is too
    narrow, ``proposal="refined+defensive"`` optimises q(z | x_i) for each datum and mixes it with a wider copy
    of itself (:mod:`pyrovae.infer.proposals`): slower, and far more often reliable. Works for any model/guide
    pair that follows the contract (per-datum sites in ``pyro.plate("data")``), plain Pyro functions included.

    :param data: a tensor ``(N, x_dim)``, a :class:`~pyrovae.data.TensorData`, a Dataset or a DataLoader.
    :param int num_samples: importance samples S per datum.
    :param int batch_size: data per batch (default 256; a DataLoader's or CellStream's own).
    :param int max_samples_per_chunk: draw the S samples in chunks of this size to bound memory
        (default: chosen so that samples x data x features in a chunk stay near 2^24, which bounds the
        decoder's memory: about 1 GB for a conv decoder on 28x28 images).
    :param device: where to compute (default: the model's device).
    :param proposal: ``"guide"``, ``"defensive"``, ``"refined"``, ``"refined+defensive"`` or a
        :class:`~pyrovae.infer.proposals.Proposal`.
    """
    check_integer("num_samples", num_samples, 1)
    check_integer("max_samples_per_chunk", max_samples_per_chunk, 1, allow_none=True)
    device = torch.device(device) if device is not None else module_device(model, guide)
    check_device(device)
    proposal = as_proposal(proposal)
    per_datum, khats, mean_log_weights = [], [], []
    max_plate_nesting = None
    with evaluation_mode(model, guide):
        batches = as_batches(data, batch_size, shuffle=False, device=device, check=model_check(model),
                             default_batch_size=256, dtype=floating_dtype(model, guide))
        for args in tqdm(batches, desc="log-likelihood", disable=not progress, leave=False):
            x = args[0]
            if max_plate_nesting is None:
                check_model_guide(model, guide, args)  # the pairing, as train checks it
                max_plate_nesting = guess_max_plate_nesting(model, guide, *args)
            chunk = max_samples_per_chunk or max(1, 2**24 // (x.shape[0] * max(x.shape[-1], 1)))
            chunks = []
            remaining = num_samples
            with pyro.validation_enabled(False):
                draw_from = proposal.for_batch(model, guide, args, max_plate_nesting)
                while remaining > 0:
                    size = min(remaining, chunk)
                    chunks.append(log_importance_weights(model, draw_from, args, size, max_plate_nesting))
                    remaining -= size
            log_weights = torch.cat(chunks).double()  # (S, B); float64 for the logsumexp over many samples
            undefined = int(log_weights.isnan().sum())
            if undefined:
                warnings.warn(f"{undefined} of {log_weights.numel()} log importance weights are NaN (an overflow in "
                              "the model or proposal); they count as zero weight", stacklevel=3)
                log_weights = log_weights.nan_to_num(nan=-math.inf)
            per_datum.append(torch.logsumexp(log_weights, 0) - math.log(num_samples))
            mean_log_weights.append(log_weights.mean(0))
            khats.append(psis_khat(log_weights.T, resolution=torch.finfo(chunks[0].dtype).eps))
    if not per_datum:
        raise ValueError("log_likelihood got an empty data set")
    result = LogLikelihood(torch.cat(per_datum).cpu(), torch.cat(khats).cpu(), num_samples, proposal.name,
                           mean_log_weight=torch.cat(mean_log_weights).cpu())
    unreliable = float((result.khat > 0.7).float().mean())
    if unreliable > 0.1 and isinstance(proposal, GuideProposal):
        warnings.warn(
            f"k-hat > 0.7 for {unreliable:.0%} of the data: the guide is a poor importance distribution there and "
            "the estimate is a loose lower bound; proposal='refined+defensive' is slower and far more reliable",
            stacklevel=3  # past torch.no_grad's wrapper, to the caller,
        )
    return result
