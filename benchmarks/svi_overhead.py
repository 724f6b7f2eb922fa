"""Seconds per epoch and per SVI step: the public ``train``, its step, Pyro's own SVI on a pyrovae pair, and a
hand-written PyTorch loop.

N-VAE: 784-400-20 MLP encoder and decoder (ReLU), Bernoulli likelihood, batch 128. The baseline computes the
identical single-sample ELBO estimator (log p(x|z) + log p(z) - log q(z|x) at a reparameterised z) by hand,
with the fused torch Adam that ``pyrovae.infer.train`` uses by default.

Whole epochs: ``train(..., elbo="jit")`` with its progress bar and NaN guard on (``eval_size=0``: the end-of-epoch
scores are work the hand loop does not do), its epochs' seconds as its history records them (the first, which
traces the objective, left out), against a hand loop over the same data (12,800 binary images, a new permutation
per epoch, batches of 128, the same fused Adam). Per step, on one fixed batch:

* ``train`` step: :class:`pyrovae.infer.training.step.SVIStep` (objective, NaN guard, fused Adam) with Trace_ELBO,
  pyrovae's traced (JIT) objective, and the compiled one (``train(compile=True)``: loss and gradients as one
  inductor graph; its compile seconds are printed at the end, paid once per batch shape);
* ``pyro.infer.SVI`` with ``Trace_ELBO`` and ``JitTrace_ELBO`` and ``pyro.optim.Adam`` (one torch Adam per
  parameter, as Pyro builds it), the way a Pyro user drives a pyrovae pair.

S-VAE: svae_mnist's sizes (784-256-128, d = 10, so z in R^11, batch 64), VMFGuide under trace, JIT and compiled
against the N-VAE of the same sizes under JIT and compiled. Rounds alternate the contenders; the median of the
rounds is reported, all in one run.

    python benchmarks/svi_overhead.py [--device cuda] [--steps 100] [--repeats 7] [--epoch-data 12800]
"""

import argparse
import math
import statistics
import time

import pyro
import pyro.infer as pinfer
import torch
from pyrovae.guides import NormalGuide, VMFGuide
from pyrovae.models import SVAE, VAE
from torch import nn

from pyrovae.infer import make_objective, train
from pyrovae.infer.training.step import SVIStep

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--device", default="cpu")
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--repeats", type=int, default=7)
parser.add_argument("--threads", type=int, default=None)
parser.add_argument("--epoch-data", type=int, default=12800, help="data per epoch of the whole-epoch comparison")
parser.add_argument("--sections", nargs="+", default=["epochs", "nvae", "svae"], choices=["epochs", "nvae", "svae"],
                    help="what to measure: whole epochs, the N-VAE 784-400-20 steps, the S-VAE against the N-VAE")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
device = torch.device(args.device)
LOG_2PI = math.log(2 * math.pi)


def synchronize():
    if device.type == "cuda":
        torch.cuda.synchronize()


def binary_batch(batch: int) -> torch.Tensor:
    return (torch.rand(batch, 784, generator=torch.Generator().manual_seed(0)) < 0.3).float().to(device)


COMPILED = {}  # name -> the Compiled objective, for its compile seconds


def train_step(model, guide, elbo, x, compile=False, name=None):
    """The step pyrovae.infer.train runs (``compile=True``: train(compile=True)'s)."""
    model, guide = model.to(device), guide.to(device)
    objective, _ = make_objective(elbo, model, guide, compile=compile)
    if compile:
        COMPILED[name] = objective
    step = SVIStep(objective, [*model.parameters(), *guide.parameters()], lr=1e-3)
    scales = torch.tensor([1.0, 1.0], device=device)
    return lambda: step(x, scales)


def pyro_svi_step(model, guide, elbo, x):
    svi = pinfer.SVI(model.to(device), guide.to(device), pyro.optim.Adam({"lr": 1e-3}), elbo)
    return lambda: svi.step(x)


def handwritten_step(x, hidden=(400,), z_dim=20):
    model, guide = VAE(784, z_dim, hidden).to(device), NormalGuide(784, z_dim, hidden).to(device)
    encoder, decoder = guide.encoder, model.decoder
    params = [*decoder.parameters(), *encoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)

    def step(x=x):
        optimizer.zero_grad(set_to_none=True)
        loc, raw_scale = encoder(x).split(z_dim, dim=-1)
        scale = nn.functional.softplus(raw_scale) + 1e-5
        z = loc + scale * torch.randn_like(loc)
        log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum()
        log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum()
        log_likelihood = -nn.functional.binary_cross_entropy_with_logits(decoder(z), x, reduction="sum")
        loss = -(log_likelihood + log_prior - log_q)
        loss.backward()
        optimizer.step()

    return step


def time_steps(step) -> float:
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize()
    return (time.perf_counter() - started) / args.steps


def compare(contenders: dict) -> dict:
    """Median seconds per step of each contender, rounds alternating between them."""
    for step in contenders.values():  # warm up (and trace)
        for _ in range(10):
            step()
    synchronize()
    timings = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, step in contenders.items():
            timings[name].append(time_steps(step))
    return {name: statistics.median(values) for name, values in timings.items()}


def report(title: str, results: dict, baseline: str) -> None:
    print(f"\n{title} (ratio to {baseline})")
    print(f"{'step':<40}{'ms/step':>9}{'ratio':>8}")
    for name, seconds in results.items():
        print(f"{name:<40}{1000 * seconds:>9.3f}{seconds / results[baseline]:>8.3f}")


def handwritten_epoch(data, batch_size=128):
    """One epoch of the hand loop: a permutation, full batches, the hand-written step on each."""
    step = handwritten_step(data[:batch_size])

    def epoch():
        order = torch.randperm(data.shape[0], device=device)
        for start in range(0, data.shape[0] - batch_size + 1, batch_size):
            step(data[order[start:start + batch_size]])
    return epoch


def train_epochs(data, batch_size=128, epochs=3, compile=False):
    """The public train as a user calls it (JIT or compiled objective, progress bar, NaN guard): the seconds of its
    epochs after the first (which traces or compiles the objective), as its history records them."""
    model, guide = VAE(784, 20, (400,)), NormalGuide(784, 20, (400,))

    def run():
        history = train(model, guide, data, epochs=epochs, batch_size=batch_size, elbo="jit", eval_size=0,
                        progress=True, device=device, compile=compile)
        return [record["seconds"] for record in history.records[1:]]
    return run


def hand_epochs(data, epochs=2):
    epoch = handwritten_epoch(data)

    def run():
        seconds = []
        for _ in range(epochs):
            started = time.perf_counter()
            epoch()
            synchronize()
            seconds.append(time.perf_counter() - started)
        return seconds
    return run


def time_epochs(contenders: dict, rounds: int) -> dict:
    """Median seconds per epoch, rounds alternating between the contenders (after a warm-up round)."""
    for run in contenders.values():
        run()
    timings = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            timings[name].extend(run())
    return {name: statistics.median(values) for name, values in timings.items()}


pyro.set_rng_seed(0)
print(f"device {device}, torch {torch.__version__}, pyro {pyro.__version__}, {torch.get_num_threads()} threads")
if "epochs" in args.sections:
    data = (torch.rand(args.epoch_data, 784, generator=torch.Generator().manual_seed(1)) < 0.3).float().to(device)
    epochs = time_epochs({"hand-written loop (fused Adam)": hand_epochs(data), "train(elbo='jit')": train_epochs(data),
                          "train(compile=True)": train_epochs(data, compile=True)}, args.repeats)
    print(f"\nwhole epochs, N-VAE 784-400-20, {args.epoch_data} data, batch 128 (ratio to the hand-written loop), "
          f"median of {args.repeats} alternating rounds")
    print(f"{'epoch':<40}{'s/epoch':>9}{'ratio':>8}")
    for name, seconds in epochs.items():
        print(f"{name:<40}{seconds:>9.3f}{seconds / epochs['hand-written loop (fused Adam)']:>8.3f}")


def nvae_steps() -> None:
    x = binary_batch(128)
    nvae = {
        "hand-written PyTorch (fused Adam)": handwritten_step(x),
        "train step, Trace_ELBO": train_step(VAE(784, 20, (400,)), NormalGuide(784, 20, (400,)), "trace", x),
        "train step, JIT": train_step(VAE(784, 20, (400,)), NormalGuide(784, 20, (400,)), "jit", x),
        "train step, compiled": train_step(VAE(784, 20, (400,)), NormalGuide(784, 20, (400,)), "trace", x, True,
                                           "N-VAE 784-400-20"),
        "pyro SVI, Trace_ELBO": pyro_svi_step(VAE(784, 20, (400,)), NormalGuide(784, 20, (400,)),
                                              pinfer.Trace_ELBO(), x),
        "pyro SVI, JitTrace_ELBO": pyro_svi_step(VAE(784, 20, (400,)), NormalGuide(784, 20, (400,)),
                                                 pinfer.JitTrace_ELBO(), x),
    }
    print(f"\nper step: median of {args.repeats} alternating rounds x {args.steps} steps")
    report("N-VAE 784-400-20, batch 128", compare(nvae), "hand-written PyTorch (fused Adam)")


if "nvae" in args.sections:
    nvae_steps()


def svae_steps() -> None:
    x64 = binary_batch(64)
    sizes = (256, 128)
    svae = {
        "N-VAE, train step, JIT": train_step(VAE(784, 10, sizes), NormalGuide(784, 10, sizes), "jit", x64),
        "N-VAE, train step, compiled": train_step(VAE(784, 10, sizes), NormalGuide(784, 10, sizes), "trace", x64, True,
                                                  "N-VAE 784-256-128"),
        "S-VAE vMF, train step, Trace_ELBO": train_step(SVAE(784, 11, sizes), VMFGuide(784, 11, sizes), "trace", x64),
        "S-VAE vMF, train step, JIT": train_step(SVAE(784, 11, sizes), VMFGuide(784, 11, sizes), "jit", x64),
        "S-VAE vMF, train step, compiled": train_step(SVAE(784, 11, sizes), VMFGuide(784, 11, sizes), "trace", x64,
                                                      True, "S-VAE 784-256-128"),
        "S-VAE vMF, pyro SVI, JitTrace_ELBO": pyro_svi_step(SVAE(784, 11, sizes), VMFGuide(784, 11, sizes),
                                                            pinfer.JitTrace_ELBO(), x64),
    }
    results = compare(svae)
    report("784-256-128, d = 10, batch 64", results, "N-VAE, train step, JIT")
    ratio = results["S-VAE vMF, train step, compiled"] / results["N-VAE, train step, compiled"]
    print(f"S-VAE compiled / N-VAE compiled: {ratio:.3f}")
    print("\ncompile seconds (capture + inductor, paid once per batch shape):")
    for name, objective in COMPILED.items():
        print(f"  {name}: {objective.compile_seconds:.1f} s")


if "svae" in args.sections:
    svae_steps()

