"""Seconds per SVI step of pyrovae's VAE against a hand-written PyTorch step of the same network and loss.

Network: 784-400-20 MLP encoder and decoder (ReLU), Bernoulli likelihood, batch 128, Adam 1e-3. The
baseline computes the identical single-sample ELBO estimator (log p(x|z) + log p(z) - log q(z|x) at a
reparameterised z) by hand, with one fused torch Adam; pyrovae runs its own training step (objective,
NaN guard, optimiser) with Trace_ELBO and its traced (JIT) form. Median over repeats, measured in one run.

    python benchmarks/svi_overhead.py [--device cuda] [--steps 200] [--repeats 7]
"""

import argparse
import math
import statistics
import time

import pyro
import torch
from pyrovae.guides import NormalGuide
from pyrovae.models import VAE
from torch import nn

from pyrovae.infer.objectives import make_objective
from pyrovae.infer.step import build_optimizer as _build_optimizer
from pyrovae.infer.step import svi_step

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--device", default="cpu")
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--repeats", type=int, default=7)
parser.add_argument("--threads", type=int, default=None)
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
device = torch.device(args.device)
BATCH, X_DIM, Z_DIM, HIDDEN = 128, 784, 20, (400,)
x = (torch.rand(BATCH, X_DIM, device=device) < 0.3).float()
LOG_2PI = math.log(2 * math.pi)


def synchronize():
    if device.type == "cuda":
        torch.cuda.synchronize()


def pyrovae_step(elbo):
    pyro.set_rng_seed(0)
    model, guide = VAE(X_DIM, Z_DIM, HIDDEN).to(device), NormalGuide(X_DIM, Z_DIM, HIDDEN).to(device)
    objective, _ = make_objective(elbo, model, guide)
    params = [*model.parameters(), *guide.parameters()]
    optimizer, _ = _build_optimizer(pyro.optim.Adam({"lr": 1e-3}), params, 1e-3)
    scales = torch.tensor([1.0, 1.0], device=device)

    def step():  # the step pyrovae.infer.train runs
        svi_step(objective, params, optimizer, x, scales)

    return step


def handwritten_step():
    torch.manual_seed(0)
    model, guide = VAE(X_DIM, Z_DIM, HIDDEN).to(device), NormalGuide(X_DIM, Z_DIM, HIDDEN).to(device)
    encoder, decoder = guide.encoder, model.decoder
    optimizer = torch.optim.Adam([*decoder.parameters(), *encoder.parameters()], lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loc, raw_scale = encoder(x).split(Z_DIM, dim=-1)
        scale = nn.functional.softplus(raw_scale) + 1e-5
        z = loc + scale * torch.randn_like(loc)
        log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum()
        log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum()
        log_likelihood = -nn.functional.binary_cross_entropy_with_logits(decoder(z), x, reduction="sum")
        loss = -(log_likelihood + log_prior - log_q)
        loss.backward()
        optimizer.step()

    return step


def seconds_per_step(step) -> float:
    for _ in range(20):
        step()
    synchronize()
    timings = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize()
        timings.append((time.perf_counter() - started) / args.steps)
    return statistics.median(timings)


results = {"hand-written PyTorch": seconds_per_step(handwritten_step())}
results["pyrovae Trace_ELBO"] = seconds_per_step(pyrovae_step("trace"))
results["pyrovae JIT (traced Trace_ELBO)"] = seconds_per_step(pyrovae_step("jit"))
baseline = results["hand-written PyTorch"]
print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, "
      f"median of {args.repeats} x {args.steps} steps")
print(f"{'step':<34}{'ms/step':>9}{'ratio':>8}")
for name, seconds in results.items():
    print(f"{name:<34}{1000 * seconds:>9.3f}{seconds / baseline:>8.3f}")
