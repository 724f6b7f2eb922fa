"""How far each estimator of held-out log p(x) can be trusted, on the quickstart's MNIST VAE.

Trains the `make run` VAE (784-400-20 Bernoulli, Normal guide, ELBO, 4 epochs, batch 128, seed 0), then scores
``--num-test`` test images with: importance sampling from the guide, from the defensive mixture, from the refined
proposal and from refined+defensive (``--num-samples`` each); AIS from the refined proposal with 500 chains of 50
steps (the reliable estimator on a budget); and, on the first ``--num-reference`` images, a long AIS reference
(16 chains x 1,000 steps from the guide). Prints, per estimator, the mean log p(x), the share of images with k-hat
> 0.7, seconds, and the mean difference to the reference where the estimator's k-hat < 0.7. Writes the figures to
``--out/reliability.json``.

    python benchmarks/estimator_reliability.py [--num-test 1000] [--num-reference 200]
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from pyrovae import make_pair
from pyrovae.data import load_mnist
from pyrovae.infer import ais_log_likelihood, log_likelihood, train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--num-test", type=int, default=1000)
parser.add_argument("--num-reference", type=int, default=200)
parser.add_argument("--num-samples", type=int, default=500)
parser.add_argument("--data-dir", default=None)
parser.add_argument("--out", default="results/estimator_reliability")
args = parser.parse_args()
warnings.simplefilter("ignore", UserWarning)

train_data, test_data = load_mnist(args.data_dir, binarize="dynamic")
test_data = test_data.subset(torch.arange(args.num_test))
torch.manual_seed(0)  # the initial weights: a fresh process starts from a random state
model, guide = make_pair("vae", 784, 20, (400,))
train(model, guide, train_data, epochs=4, batch_size=128, elbo="jit", val_data=test_data, seed=0, progress=False)

estimators = {
    f"IS, guide, {args.num_samples}": lambda x: log_likelihood(model, guide, x, args.num_samples),
    f"IS, defensive, {args.num_samples}": lambda x: log_likelihood(model, guide, x, args.num_samples,
                                                                   proposal="defensive"),
    f"IS, refined, {args.num_samples}": lambda x: log_likelihood(model, guide, x, args.num_samples,
                                                                 proposal="refined"),
    f"IS, refined+defensive, {args.num_samples}": lambda x: log_likelihood(model, guide, x, args.num_samples,
                                                                           proposal="refined+defensive"),
    "AIS from refined, 500 chains x 50 steps": lambda x: ais_log_likelihood(model, guide, x, num_chains=500,
                                                                            num_steps=50, start="refined"),
}
torch.manual_seed(1)
started = time.perf_counter()
reference = ais_log_likelihood(model, guide, test_data.subset(torch.arange(args.num_reference)), num_chains=16,
                               num_steps=1000)
reference_seconds = time.perf_counter() - started
print(f"reference: AIS from the guide, 16 chains x 1000 steps, {args.num_reference} images: "
      f"{reference.mean:.3f} +/- {reference.stderr:.3f} ({reference_seconds:.0f} s, acceptance "
      f"{reference.acceptance:.2f})")
rows = {"reference": {**reference.summary(), "seconds": reference_seconds, "num_data": args.num_reference}}
print(f"{'estimator':<44}{'log p(x)':>10}{'k>0.7':>8}{'- ref (k<0.7)':>15}{'- ref (all)':>13}{'seconds':>9}")
for name, estimate in estimators.items():
    torch.manual_seed(2)
    started = time.perf_counter()
    result = estimate(test_data)
    seconds = time.perf_counter() - started
    head = result.per_datum[: args.num_reference]
    reliable = result.khat[: args.num_reference] < 0.7
    difference = (head - reference.per_datum)[reliable].mean().item() if reliable.any() else float("nan")
    difference_all = (head - reference.per_datum).mean().item()
    unreliable = (result.khat > 0.7).float().mean().item()
    print(f"{name:<44}{result.mean:>10.3f}{unreliable:>8.1%}{difference:>15.3f}{difference_all:>13.3f}{seconds:>9.0f}")
    rows[name] = {**result.summary(), "seconds": seconds, "minus_reference_where_reliable": difference,
                  "minus_reference": difference_all}
Path(args.out).mkdir(parents=True, exist_ok=True)
(Path(args.out) / "reliability.json").write_text(json.dumps(rows, indent=1))
