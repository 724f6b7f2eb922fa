"""The KL weight over training: a linear warm-up from 0 to a final weight (Bowman et al. 2016; Sonderby et al.
2016), the constant weight without one (beta-VAE: any beta; 0 for a plain auto-encoder)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KLSchedule:
    """``weight(step)``: ``kl_weight * min(1, (step + 1) / (warmup_epochs * steps_per_epoch))``.

    :param float kl_weight: the final weight of the latent sites' terms.
    :param float warmup_epochs: epochs of the linear ramp (0: the constant weight).
    :param int steps_per_epoch: optimisation steps in one epoch.
    """

    kl_weight: float = 1.0
    warmup_epochs: float = 0.0
    steps_per_epoch: int = 1

    def weight(self, step: int) -> float:
        if self.warmup_epochs <= 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, (step + 1) / (self.warmup_epochs * self.steps_per_epoch))


__all__ = ["KLSchedule"]
