"""How many MNIST test images get a certified log p(x) from ``log_likelihood(proposal="auto")``, at what cost.

Trains the README's MNIST VAE (784-400-20 Bernoulli, Normal guide, ELBO, batch 128, seed 0) for each of
``--epochs`` (3 and 10 by default), then scores ``--num-test`` test images two ways, one after the other:

- the guide as the proposal, ``--num-samples`` draws (the plain estimate: its k-hat is the only certificate);
- ``proposal="auto"``: per image the cheapest estimator that certifies (guide -> refined+defensive -> AIS).

and, on the first ``--num-reference`` images, a long AIS reference (``--reference-chains`` x
``--reference-steps`` from the refined proposal). Prints per model the certified share, the mean log p(x), the
mean difference to the reference with its standard error, the seconds per 1,000 images, and where the time of
"auto" went (per stage: images, seconds). Writes everything to ``--out/certified.json``.

    python benchmarks/certified_log_likelihood.py [--epochs 3 10] [--num-test 1000] [--num-reference 100]
"""

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import torch

from pyrovae import make_pair
from pyrovae.data import load_mnist
from pyrovae.infer import ais_log_likelihood, log_likelihood, train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, nargs="+", default=[3, 10])
parser.add_argument("--num-test", type=int, default=1000)
parser.add_argument("--num-samples", type=int, default=500)
parser.add_argument("--num-reference", type=int, default=100)
parser.add_argument("--reference-chains", type=int, default=16)
parser.add_argument("--reference-steps", type=int, default=2000)
parser.add_argument("--data-dir", default=None)
parser.add_argument("--out", default="results/certified_log_likelihood")
args = parser.parse_args()
warnings.simplefilter("ignore", UserWarning)

train_data, test_data = load_mnist(args.data_dir, binarize="dynamic")
test_data = test_data.subset(torch.arange(args.num_test))
reference_data = test_data.subset(torch.arange(args.num_reference))
rows = {}
for epochs in args.epochs:
    pyro_store = __import__("pyro").get_param_store()
    pyro_store.clear()
    torch.manual_seed(0)  # the initial weights: a fresh process starts from a random state
    model, guide = make_pair("vae", 784, 20, (400,))
    train(model, guide, train_data, epochs=epochs, batch_size=128, elbo="jit", seed=0, progress=False)
    row = {}
    for name, options in {f"guide, {args.num_samples}": {}, "auto": {"proposal": "auto"}}.items():
        torch.manual_seed(2)
        started = time.perf_counter()
        result = log_likelihood(model, guide, test_data, args.num_samples, **options)
        seconds = time.perf_counter() - started
        row[name] = {"result": result, "seconds": seconds}
    reference = None
    if args.num_reference:
        torch.manual_seed(1)
        started = time.perf_counter()
        reference = ais_log_likelihood(model, guide, reference_data, num_chains=args.reference_chains,
                                       num_steps=args.reference_steps, start="refined")
        reference_seconds = time.perf_counter() - started
        print(f"\n{epochs} epochs: reference AIS from refined, {args.reference_chains} chains x "
              f"{args.reference_steps} steps, {args.num_reference} images: {reference.mean:.3f} "
              f"(acceptance {reference.acceptance:.2f}, {reference_seconds:.0f} s)")
    print(f"{'estimator':<16}{'certified':>10}{'log p(x)':>10}{'- ref':>9}{'+/-':>7}{'s/1000':>8}")
    entry = {"epochs": epochs}
    for name, item in row.items():
        result, seconds = item["result"], item["seconds"]
        share = float(result.certified.float().mean())
        difference = stderr = math.nan
        if reference is not None:
            gap = result.per_datum[: args.num_reference] - reference.per_datum
            difference, stderr = float(gap.mean()), float(gap.std() / math.sqrt(gap.numel()))
        per_thousand = seconds * 1000 / args.num_test
        print(f"{name:<16}{share:>10.1%}{result.mean:>10.3f}{difference:>9.3f}{stderr:>7.3f}{per_thousand:>8.0f}")
        entry[name] = {"certified": share, "mean": result.mean, "minus_reference": difference,
                       "minus_reference_stderr": stderr, "seconds_per_1000": per_thousand}
        if reference is not None and result.estimator is not None:  # where the difference comes from
            gap = result.per_datum[: args.num_reference] - reference.per_datum
            stages = result.estimator[: args.num_reference]
            entry[name]["minus_reference_by_stage"] = {
                stage: {"images": sum(s == stage for s in stages),
                        "sum_over_all_images": float(sum(g for g, s in zip(gap.tolist(), stages) if s == stage))
                        / len(stages)}
                for stage in sorted(set(stages))}
            print("    - ref by stage (contribution to the mean):",
                  {k: round(v["sum_over_all_images"], 3) for k, v in entry[name]["minus_reference_by_stage"].items()})
        if result.cost is not None:
            entry[name]["stages"] = result.cost
            entry[name]["estimator_share"] = {stage: result.estimator.count(stage) / len(result.estimator)
                                              for stage in result.cost}
            for stage, cost in result.cost.items():
                print(f"    {stage:<20}{cost['data']:>6} images {cost['seconds']:>8.0f} s")
            reasons = {}
            for line in result.reasons():
                for reason in line.split("; "):
                    kind = "".join(c for c in reason if not (c.isdigit() or c == ".")).strip()
                    if kind != "certified":
                        reasons[kind] = reasons.get(kind, 0) + 1
            entry[name]["uncertified_reasons"] = reasons
            print("    not certified:", reasons or "none")
    if reference is not None:
        entry["reference"] = {**reference.summary(), "seconds": reference_seconds,
                              "chains": args.reference_chains, "steps": args.reference_steps}
    rows[f"{epochs} epochs"] = entry
Path(args.out).mkdir(parents=True, exist_ok=True)
(Path(args.out) / "certified.json").write_text(json.dumps(rows, indent=1))
