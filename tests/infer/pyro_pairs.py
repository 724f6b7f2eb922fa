"""The pairs, data and SVI runners shared by the tests of Pyro's own idioms on pyrovae pairs."""

import warnings

import pyro
import pyro.infer as pinfer
import torch
from pyrovae.guides import NormalGuide
from pyrovae.models import VAE

X_DIM = 12
ELBOS = {
    "Trace_ELBO": lambda: pinfer.Trace_ELBO(),
    "JitTrace_ELBO": lambda: pinfer.JitTrace_ELBO(),
    "TraceEnum_ELBO": lambda: pinfer.TraceEnum_ELBO(max_plate_nesting=1),
}


def binary(n=16, seed=0):
    return torch.rand(n, X_DIM, generator=torch.Generator().manual_seed(seed)).round()


def svi(model, guide, elbo="Trace_ELBO", lr=1e-2):
    return pinfer.SVI(model, guide, pyro.optim.Adam({"lr": lr}), ELBOS[elbo]())


def elbo_estimate(model, guide, x, num_particles=2000):
    """A Monte Carlo ELBO with enough particles to tell a trained pair from an untrained one."""
    pyro.set_rng_seed(5)
    loss = pinfer.Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        return -loss.loss(model, guide, x)


def train_pair(x, steps=150, **names):
    model, guide = VAE(X_DIM, 3, (8,), **names.get("model", {})), NormalGuide(X_DIM, 3, (8,), **names.get("guide", {}))
    runner = svi(model, guide, lr=3e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            runner.step(x)
    return model, guide
