"""The table of the distribution contract's cases: each builds a distribution with a batch of two in a dtype."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import torch

from pyrovae.distributions import (
    DefensiveMixture,
    HypersphericalUniform,
    NegativeBinomial,
    Poisson,
    PowerSpherical,
    VonMisesFisher,
    ZeroInflatedNegativeBinomial,
    ZeroInflatedPoisson,
    widen,
)
from pyrovae.likelihoods import get_likelihood

NUM_SAMPLES = 40_000
DTYPES = [torch.float32, torch.float64]


def _loc(m: int, dtype) -> torch.Tensor:
    """Two unit mean directions in R^m."""
    raw = torch.randn(2, m, generator=torch.Generator().manual_seed(m), dtype=torch.float64)
    return (raw / raw.norm(dim=-1, keepdim=True)).to(dtype)


@dataclass
class Case:
    name: str
    build: Callable[[torch.dtype], torch.distributions.Distribution]
    kind: str  # "sphere", "count", "unit" (per feature on [0, 1]) or "real"
    off_support: Callable[[torch.dtype], torch.Tensor] | None = None
    mean_parameter: str | None = None  # a parameter whose pathwise gradient of E[z] is checked
    # False where a rare event (a gate of sigmoid(20) = 1 - 2e-9, a rate of 1e-6) leaves every one of the draws
    # alike, so that the samples' standard errors are 0; the mean and variance are still checked against the pmf
    sampled_moments: bool = True

    def __repr__(self) -> str:
        return self.name


def _off_sphere(m: int):
    def off(dtype):
        return torch.full((2, m), 0.9, dtype=dtype)  # not unit vectors

    return off


def _spherical(family, m: int, kappa: float):
    def build(dtype):
        return family(_loc(m, dtype), torch.tensor([kappa, 2 * kappa], dtype=dtype))

    return build


def _uniform(m: int):
    def build(dtype):
        return HypersphericalUniform(m, batch_shape=(2,), dtype=dtype)

    return build


def _sphere_cases() -> list[Case]:
    cases = []
    for m in (2, 3, 5, 10, 64, 256):
        for kappa in (0.5, float(m), 20.0 * m):
            for family in (VonMisesFisher, PowerSpherical):
                cases.append(Case(f"{family.__name__} m={m} kappa={kappa:g}", _spherical(family, m, kappa), "sphere",
                                  _off_sphere(m), "concentration"))
        cases.append(Case(f"HypersphericalUniform m={m}", _uniform(m), "sphere", _off_sphere(m)))
    return cases


def _tensor(values, dtype):
    return torch.tensor(values, dtype=dtype)


def COUNT_OFF(dtype):  # noqa: N802 - a constant of the table below
    return torch.tensor([-1.0, 0.5], dtype=dtype)  # negative, and not an integer


def _defensive_sphere(dtype):
    proposal = VonMisesFisher(_loc(6, dtype), _tensor([4.0, 40.0], dtype))
    return DefensiveMixture(proposal, widen(proposal, 2.0), 0.2)


def _defensive_real(dtype):
    proposal = dist.Normal(_tensor([[-1.0], [2.0]], dtype), _tensor([[0.5], [1.5]], dtype)).to_event(1)
    return DefensiveMixture(proposal, widen(proposal, 2.0, df=10.0), 0.3)


CASES = [
    *_sphere_cases(),
    Case("NegativeBinomial", lambda d: NegativeBinomial(_tensor([0.3, 25.0], d), _tensor([0.7, 4.0], d)), "count",
         COUNT_OFF),
    Case("NegativeBinomial near Poisson", lambda d: NegativeBinomial(_tensor([2.0, 9.0], d), _tensor([1e6, 1e4], d)),
         "count", COUNT_OFF),
    Case("Poisson", lambda d: Poisson(_tensor([0.2, 40.0], d)), "count", COUNT_OFF),
    Case("ZeroInflatedPoisson", lambda d: ZeroInflatedPoisson(_tensor([3.0, 12.0], d), _tensor([-1.0, 2.0], d)),
         "count", COUNT_OFF),
    Case("ZeroInflatedNegativeBinomial",
         lambda d: ZeroInflatedNegativeBinomial(_tensor([4.0, 0.5], d), _tensor([2.0, 0.3], d),
                                                _tensor([0.5, -3.0], d)),
         "count", COUNT_OFF),
    Case("NegativeBinomial Poisson limit (theta = inf)",
         lambda d: NegativeBinomial(_tensor([2.0, 9.0], d), _tensor([math.inf, math.inf], d)), "count", COUNT_OFF),
    Case("Poisson extreme rates", lambda d: Poisson(_tensor([1e-6, 3e3], d)), "count", COUNT_OFF,
         sampled_moments=False),
    Case("ZeroInflatedPoisson saturated gates",
         lambda d: ZeroInflatedPoisson(_tensor([3.0, 12.0], d), _tensor([40.0, -40.0], d)), "count", COUNT_OFF,
         sampled_moments=False),
    Case("ZeroInflatedNegativeBinomial saturated gates",
         lambda d: ZeroInflatedNegativeBinomial(_tensor([2.0, 30.0], d), _tensor([1.0, 0.5], d),
                                                _tensor([20.0, -20.0], d)),
         "count", COUNT_OFF, sampled_moments=False),
    Case("DefensiveMixture vMF", _defensive_sphere, "sphere", _off_sphere(6)),
    Case("DefensiveMixture Normal + Student-t", _defensive_real, "real"),
    Case("continuous_bernoulli likelihood",
         lambda d: get_likelihood("continuous_bernoulli", 1)(_tensor([[-3.0], [0.7]], d)), "unit",
         lambda d: torch.tensor([[1.5], [-0.2]], dtype=d)),
    Case("gaussian likelihood (learned scale)",
         lambda d: get_likelihood("gaussian", 1).to(d)(_tensor([[-1.0], [2.5]], d)), "real"),
]
