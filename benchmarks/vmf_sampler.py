"""Samples per second of VonMisesFisher.rsample against scipy.stats.vonmises_fisher and PowerSpherical.rsample.

For each ambient dimension m in {3, 10, 100, 1000} and concentration kappa in {1, 10, 100, 1e4}, our
samplers draw one sample for each of ``--rows`` rows (float32), every row with its own random mean
direction, so the batch is what a VAE guide produces; a last row per m gives every row its own kappa too
(log-uniform in [1, 1e4]). The baseline, measured in the same run, is scipy's best case: one mean and one
concentration for all rows, in float64 (``scipy.stats.vonmises_fisher(mu, kappa).rvs(n)``); scipy is timed
on fewer rows where it is slow (up to ``--rows``, until a draw takes ``--scipy-seconds``). Best of
``--repeats`` timings. The second table is one S-VAE training step (vMF or Power Spherical guide) over one
N-VAE step of the same size: MNIST-sized MLP 784-256-128, latent d = 10 (S-VAE on S^10 in R^11), batch 64,
Trace_ELBO, Adam.

    python benchmarks/vmf_sampler.py [--device cuda] [--rows 100000] [--repeats 3]
"""

import argparse
import math
import statistics
import time

import numpy as np
import pyro
import scipy
import scipy.stats
import torch
from pyrovae.guides import NormalGuide, PowerSphericalGuide, VMFGuide
from pyrovae.models import SVAE, VAE

from pyrovae.distributions import PowerSpherical, VonMisesFisher
from pyrovae.infer.training.objectives import make_objective
from pyrovae.infer.training.step import build_optimizer as _build_optimizer
from pyrovae.infer.training.step import svi_step

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--device", default="cpu")
parser.add_argument("--rows", type=int, default=100_000)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--scipy-seconds", type=float, default=1.0, help="scipy is timed on up to this long a draw")
parser.add_argument("--dims", type=int, nargs="+", default=[3, 10, 100, 1000])
parser.add_argument("--kappas", type=float, nargs="+", default=[1.0, 10.0, 100.0, 1e4])
parser.add_argument("--steps", type=int, default=100, help="training steps per timing of the step-time table")
args = parser.parse_args()
device = torch.device(args.device)
# the reference implementations' samples/s on this kind of machine, for the "ahead" column
REFERENCE = {3: (12.2e6, 15.8e6, 7.4e6), 10: (3.0e6, 2.0e6, 5.1e6), 100: (236e3, 480e3, 505e3),
             1000: (2.5e3, 49e3, 44e3)}


def synchronize():
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(draw, repeats: int) -> float:
    draw()  # warm-up
    synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        draw()
        synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def scipy_rate(m: int, kappa: float) -> float:
    mu = np.zeros(m)
    mu[0] = 1.0
    law = scipy.stats.vonmises_fisher(mu, kappa, seed=np.random.default_rng(0))
    rows = 1000
    while True:
        seconds = best_time(lambda n=rows: law.rvs(n), 1)
        if seconds >= args.scipy_seconds or rows >= args.rows:
            break
        rows = min(args.rows, rows * 10)
    return rows / best_time(lambda: law.rvs(rows), args.repeats)


def torch_rate(family, m: int, kappa) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    loc = torch.randn(args.rows, m, device=device, generator=generator)
    loc = loc / loc.norm(dim=-1, keepdim=True)
    if kappa == "varying":
        kappa = torch.exp(torch.rand(args.rows, device=device, generator=generator) * math.log(1e4))
    else:
        kappa = torch.full((args.rows,), kappa, device=device)
    law = family(loc, kappa)
    return args.rows / best_time(law.rsample, args.repeats)


def fmt(rate: float) -> str:
    return f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate / 1e3:.1f}k"


print(f"torch {torch.__version__}, pyro {pyro.__version__}, scipy {scipy.__version__}, device {device}, "
      f"{torch.get_num_threads()} threads, {args.rows} rows, best of {args.repeats}\n")
print("| m | kappa | scipy (float64, one mu/kappa) | vMF rsample | vMF / scipy | PowerSpherical rsample | "
      "vMF ahead of every reference? |")
print("|---|---|---|---|---|---|---|")
for family in (VonMisesFisher, PowerSpherical):  # warm-up: the process's first seconds of draws run slower
    for m in args.dims:
        torch_rate(family, m, args.kappas[0])
for m in args.dims:
    for kappa in [*args.kappas, "varying"]:
        ours = torch_rate(VonMisesFisher, m, kappa)
        power = torch_rate(PowerSpherical, m, kappa)
        if kappa == "varying":
            base, ratio, label = "-", "-", "1 to 1e4 per row"
        else:
            rate = scipy_rate(m, kappa)
            base, ratio, label = fmt(rate), f"{ours / rate:.2f}", f"{kappa:g}"
        ahead = "yes" if ours > max(REFERENCE.get(m, (0,))) else "no"
        print(f"| {m} | {label} | {base} | {fmt(ours)} | {ratio} | {fmt(power)} | {ahead} |", flush=True)

# one training step of the S-VAE relative to the N-VAE of the same size
X_DIM, D, BATCH = 784, 10, 64
x = (torch.rand(BATCH, X_DIM, device=device) < 0.3).float()


def step_time(model, guide, elbo="trace") -> float:
    pyro.set_rng_seed(0)
    model, guide = model.to(device), guide.to(device)
    objective, _ = make_objective(elbo, model, guide)
    params = [*model.parameters(), *guide.parameters()]
    optimizer, _ = _build_optimizer(None, params, 1e-3)
    scales = torch.tensor([1.0, 1.0], device=device)

    def run():
        for _ in range(args.steps):
            svi_step(objective, params, optimizer, x, scales)

    return statistics.median(best_time(run, 1) for _ in range(args.repeats)) / args.steps


print(f"\nOne training step, MLP 784-256-128, d = {D}, batch {BATCH}, Adam; median of {args.repeats} x {args.steps}\n")
print("| step | ms/step | ratio to N-VAE (Trace_ELBO) |")
print("|---|---|---|")
encoder, decoder = (256, 128), (128, 256)
normal = step_time(VAE(X_DIM, D, decoder), NormalGuide(X_DIM, D, encoder))
rows = [("N-VAE, Trace_ELBO", normal),
        ("N-VAE, JIT", step_time(VAE(X_DIM, D, decoder), NormalGuide(X_DIM, D, encoder), "jit")),
        ("S-VAE vMF, Trace_ELBO", step_time(SVAE(X_DIM, D + 1, decoder), VMFGuide(X_DIM, D + 1, encoder))),
        ("S-VAE Power Spherical, Trace_ELBO",
         step_time(SVAE(X_DIM, D + 1, decoder), PowerSphericalGuide(X_DIM, D + 1, encoder))),
        ("S-VAE Power Spherical, JIT",
         step_time(SVAE(X_DIM, D + 1, decoder), PowerSphericalGuide(X_DIM, D + 1, encoder), "jit"))]
for name, seconds in rows:
    print(f"| {name} | {seconds * 1e3:.2f} | {seconds / normal:.2f} |")
