"""Milliseconds per SVI step of a count VAE on the CPU: the cost of the count log-densities and their derivatives.

An NB (or ZINB, Poisson, ZIP) VAE with one hidden layer of 128 and latent 10, on ``--genes`` generated genes of
``--cells`` cells (about 60% zeros), ``Trace_ELBO`` and Adam, one thread; the median over ``--rounds`` of the mean
step time of ``--steps`` steps, after five warm-up steps. To compare two versions of pyrovae, alternate this script
on each in one session, the older by its checkout:

    python benchmarks/count_step.py --likelihoods nb zinb
    PYTHONPATH=/path/to/older/checkout python benchmarks/count_step.py --likelihoods nb zinb
"""

import argparse
import statistics
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from pyrovae import VAE, NormalGuide

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--likelihoods", nargs="+", default=["nb", "zinb"], choices=["poisson", "nb", "zip", "zinb"])
parser.add_argument("--genes", type=int, default=2000)
parser.add_argument("--cells", type=int, default=256, help="cells per batch")
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--rounds", type=int, default=7)
args = parser.parse_args()
torch.set_num_threads(1)

for likelihood in args.likelihoods:
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    x = torch.poisson(torch.rand(args.cells, args.genes) ** 3 * 3)
    model = VAE(x_dim=args.genes, z_dim=10, hidden=(128,), likelihood=likelihood)
    guide = NormalGuide(x_dim=args.genes, z_dim=10, hidden=(128,))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for _ in range(5):
        svi.step(x)
    rounds = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for _ in range(args.steps):
            svi.step(x)
        rounds.append((time.perf_counter() - started) / args.steps * 1e3)
    print(f"{likelihood}: {statistics.median(rounds):.1f} ms per step (rounds {min(rounds):.1f}-{max(rounds):.1f}; "
          f"{(x == 0).float().mean():.0%} zeros)")
