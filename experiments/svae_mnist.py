"""S-VAE vs N-VAE on dynamically binarised MNIST: Davidson et al. (2018), Table 1.

For each latent dimension d, an N-VAE (Gaussian prior and guide on R^d) and an S-VAE (uniform prior on the
sphere S^d in R^(d+1), von Mises-Fisher guide; ``--models power`` adds the Power Spherical guide) with the
paper's networks: MLP encoder 784-256-128 and mirror decoder 128-256-784, ReLU, Bernoulli likelihood on
pixels redrawn at every batch, Adam 1e-3, batch 64. The last ``--num-val`` training images are the
validation split: training stops when the validation ELBO has not improved for ``--patience`` epochs (or at
``--epochs``) and keeps the best epoch. Reported on the test set: log-likelihood by ``--proposal`` (default
``auto``: per image the cheapest estimator that certifies, ``--num-samples`` importance samples or AIS, with the share
certified) and by the guide as the proposal (the paper's estimator), ELBO, reconstruction and KL, beside the paper's
numbers.

Every run is checkpointed after each epoch and its result kept in ``OUT/runs.json`` (:class:`pyrovae.sweep.Sweep`),
so an interrupted sweep resumes where it stopped and a finished run is not trained again (delete
``OUT/runs.json``, ``OUT/checkpoints`` and ``OUT/scores`` to retrain). Its test scores are saved 500 images at a
time in ``OUT/scores/<cell>`` (:func:`pyrovae.infer.log_likelihood_in_parts`), so an interrupted scoring, hours
long where many images need AIS, resumes too; an unfinished cell resumed with other scoring options
(``--num-test``, ``--num-samples``, ``--proposal``, ``--ais-*``, ``--seed``) is refused by name. Both guides train
under the traced ELBO (``elbo="jit"``), or with ``--compile`` a step compiled by inductor (``train(compile=True)``;
the vMF draw stays exact).

``--jobs N`` trains N cells at once, each in a process of its own on the same device (its log and result in
``OUT/cells/<cell>``, its checkpoint and scores where a run without ``--jobs`` keeps them, so either resumes the
other's cells), and gathers their results here. The paper's whole table, ten cells to convergence, is
one command on one GPU::

    python experiments/svae_mnist.py --device cuda --jobs 10

(the models are small: ten processes share one GPU by time-slicing, each keeping its own CUDA stream busy).
"""

import os
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from pyrovae import make_pair
from pyrovae.data import TensorData, load_mnist
from pyrovae.experiment import (
    experiment_parser,
    non_negative_int,
    positive_float,
    positive_int,
    result_settings,
    run_jobs,
    setup,
    write_metrics,
)
from pyrovae.infer import evaluate, log_likelihood_in_parts, train
from pyrovae.plots import save
from pyrovae.sweep import Sweep

PAPER = {  # Davidson et al. (2018), Table 1: test log-likelihood
    "normal": {2: -135.73, 5: -110.21, 10: -93.84, 20: -88.90, 40: -88.93},
    "vmf": {2: -132.50, 5: -108.43, 10: -93.16, 20: -89.02, 40: -90.87},
}
NAMES = {"normal": "N-VAE", "vmf": "S-VAE (vMF)", "power": "S-VAE (Power Spherical)"}

QUICK = {"dims": [2], "num_train": 2000, "num_val": 500, "num_test": 500, "num_samples": 50, "ais_chains": 32,
         "ais_steps": 20}
parser = experiment_parser(__doc__, epochs=1000, out="results/svae_mnist", quick=QUICK, resumable=True)
parser.set_defaults(proposal="auto")  # the estimator that says which estimates it certifies
parser.add_argument("--dims", type=positive_int, nargs="+", default=[2, 5, 10, 20, 40], help="latent dimensions d")
parser.add_argument("--models", nargs="+", default=["normal", "vmf"], choices=list(NAMES),
                    help="N-VAE (normal), S-VAE with the vMF (vmf) or Power Spherical (power) guide, each at every d")
parser.add_argument("--patience", type=positive_int, default=50, help="early stopping: epochs without improvement")
parser.add_argument("--batch-size", type=positive_int, default=64, help="images per training batch")
parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
parser.add_argument("--hidden", type=positive_int, nargs="+", default=[256, 128],
                    help="encoder widths (decoder mirrors)")
parser.add_argument("--num-train", type=positive_int, default=None, help="use only this many training images")
parser.add_argument("--num-val", type=non_negative_int, default=10_000, help="training images held out for validation")
parser.add_argument("--num-test", type=positive_int, default=10_000, help="test images scored")
parser.add_argument("--num-samples", type=positive_int, default=500, help="importance samples per test image")
parser.add_argument("--ais-chains", type=positive_int, default=128,
                    help="chains per image of the 'auto' estimator's AIS stage")
parser.add_argument("--ais-steps", type=positive_int, default=200,
                    help="annealing steps of the 'auto' estimator's AIS stage")
parser.add_argument("--jobs", type=positive_int, default=1, help="cells trained at once, each in its own process")
parser.add_argument("--state-dir", default=None,
                    help="where checkpoints and scores are kept (default: --out; --jobs gives its workers the sweep's)")
parser.add_argument("--compile", action="store_true",
                    help="train(compile=True): the step compiled by inductor instead of the traced ELBO")
args = parser.parse_args()
if args.jobs < 1:
    parser.error(f"--jobs must be at least 1, got {args.jobs}")
device = setup(args)
out = Path(args.out)

try:
    train_all, test_data = load_mnist(args.data_dir, binarize="dynamic", seed=args.seed)
except FileNotFoundError as error:
    raise SystemExit(f"{error}\nthis experiment needs MNIST") from error
if args.num_val >= len(train_all):
    raise SystemExit(f"--num-val {args.num_val} leaves no training images out of {len(train_all)}")
cut = len(train_all) - args.num_val
train_data = train_all.subset(torch.arange(cut if args.num_train is None else min(args.num_train, cut)))
# the validation images are binarised once, so that the early-stopping metric does not move with the draw
val_data = TensorData(torch.bernoulli(train_all.x[cut:], generator=torch.Generator().manual_seed(args.seed + 2)),
                      train_all.labels[cut:], name="MNIST validation")
test_data = test_data.subset(torch.arange(min(args.num_test, len(test_data))))
train_data, val_data, test_data = train_data.to(device), val_data.to(device), test_data.to(device)
print(f"MNIST: {len(train_data)} training, {len(val_data)} validation, {len(test_data)} test images on {device}")
widths = tuple(args.hidden)  # from the data side: the decoder mirrors the encoder


PAIRS = {"normal": "vae", "vmf": "svae-vmf", "power": "svae-power"}  # S^d in R^(d+1) for the spherical ones
# finished runs are kept, an interrupted one resumes from its checkpoint; results of other settings are refused
sweep = Sweep(out / "runs.json", settings=result_settings(args, exclude=("dims", "models", "jobs", "compile",
                                                                         "refine_steps", "state_dir")))
state = Path(args.state_dir) if args.state_dir is not None else out  # checkpoints and scores, shared by --jobs


def moved_from_worker_folder(path: Path) -> Path:
    """``path`` (under the state folder), where a --jobs worker's checkpoint or scores folder of an earlier
    pyrovae, kept in its own ``--out``, is moved to first: a sweep interrupted before the upgrade resumes."""
    earlier = out / path.relative_to(state)
    if earlier != path and earlier.exists() and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(earlier, path)
        print(f"moved {earlier} to {path}")
    return path


def score(model, guide, cell: str, proposal: str, **options):
    """The test log-likelihood by ``proposal``, 500 images at a time, each part saved in ``OUT/scores/<cell>``
    as it finishes (a later run reads them: hours of AIS are not lost to an interruption)."""
    folder = moved_from_worker_folder(state / "scores" / cell / proposal)
    return log_likelihood_in_parts(model, guide, test_data, folder, part_size=500,
                                   seed=args.seed, progress=not args.no_progress, num_samples=args.num_samples,
                                   proposal=proposal, **options)


def fit_and_score(kind: str, d: int) -> dict:
    print(f"{NAMES[kind]}, d = {d}")
    torch.manual_seed(args.seed)  # a cell's start its own: the same alone, after other cells, or in a --jobs worker
    model, guide = make_pair(PAIRS[kind], 784, d, widths)
    history = train(model, guide, train_data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    **({"compile": True} if args.compile else {"elbo": "jit"}),
                    val_data=val_data, patience=args.patience,
                    checkpoint=moved_from_worker_folder(state / "checkpoints"
                                                        / sweep.checkpoint_path(f"{kind}_d{d}").name),
                    device=device, seed=args.seed, progress=not args.no_progress)
    started = time.perf_counter()
    stage = {"ais_chains": args.ais_chains, "ais_steps": args.ais_steps} if args.proposal == "auto" else {}
    if args.refine_steps is not None:
        stage["refine_steps"] = args.refine_steps
    ll = score(model, guide, f"{kind}_d{d}", args.proposal, **stage)
    # the seconds of every part, those read back from an earlier run included
    scoring_seconds = sum(s["seconds"] for s in ll.cost.values()) if ll.cost else time.perf_counter() - started
    print(f"  test LL {ll.mean:.2f} +/- {ll.stderr:.2f} ({ll.certified.float().mean():.1%} certified) "
          f"after {len(history)} epochs")
    # the paper's estimator: the guide as the proposal, with the same number of samples
    started = time.perf_counter()
    by_guide = ll if args.proposal == "guide" else score(model, guide, f"{kind}_d{d}", "guide")
    return {
        "model": NAMES[kind], "d": d, "test_log_likelihood": ll.mean, "stderr": ll.stderr,
        "khat_above_0.7": float((ll.khat > 0.7).float().mean()), "proposal": args.proposal,
        "certified": float(ll.certified.float().mean()), "scoring_seconds": scoring_seconds,
        "guide_scoring_seconds": time.perf_counter() - started,
        "guide_log_likelihood": by_guide.mean, "guide_stderr": by_guide.stderr,
        "guide_certified": float(by_guide.certified.float().mean()),
        **{f"test_{k}": v for k, v in evaluate(model, guide, test_data).items()},
        "epochs_trained": len(history), "best_epoch": history.best_epoch, "stopped_early": history.stopped_early,
        "train_seconds": sum(history["seconds"]), "paper_log_likelihood": PAPER.get(kind, {}).get(d),
        "val_elbo": history["val_elbo"], "refine_steps": args.refine_steps,
    }


def worker_command(kind: str, d: int) -> list[str]:
    """This script for one cell, with this run's settings (``--quick`` already applied), in ``OUT/cells/<cell>``."""
    options = {"--device": str(device), "--seed": args.seed, "--epochs": args.epochs, "--patience": args.patience,
               "--batch-size": args.batch_size, "--lr": args.lr, "--num-val": args.num_val, "--num-test": args.num_test,
               "--num-samples": args.num_samples, "--proposal": args.proposal, "--ais-chains": args.ais_chains,
               "--ais-steps": args.ais_steps, "--out": out / "cells" / f"{kind}_d{d}", "--state-dir": state,
               "--dims": d, "--models": kind}
    if args.num_train is not None:
        options["--num-train"] = args.num_train
    if args.refine_steps is not None:
        options["--refine-steps"] = args.refine_steps
    if args.data_dir is not None:
        options["--data-dir"] = args.data_dir
    command = [sys.executable, __file__, "--no-progress", "--hidden", *map(str, args.hidden),
               *(["--compile"] if args.compile else [])]
    for name, value in options.items():
        command += [name, str(value)]
    return command


cells = [(kind, d) for d in args.dims for kind in args.models]
# --refine-steps is not a sweep setting (runs.json files of before it): each result records it, and a kept result
# scored otherwise is refused before any cell is trained (a result without the record is taken as it stands;
# --refine-steps 100 resumes a scoring made before the full-covariance default grew with the dimension)
other_steps = sorted(f"{kind}_d{d}" for kind, d in cells if f"{kind}_d{d}" in sweep
                     and sweep[f"{kind}_d{d}"].get("refine_steps", args.refine_steps) != args.refine_steps)
if other_steps:
    raise SystemExit(f"{', '.join(other_steps)} in {out / 'runs.json'} were scored with other --refine-steps than "
                     f"{args.refine_steps}; rerun with theirs, or remove those results (and their scores folders) to "
                     "score them again")
if args.jobs > 1:
    run_jobs({(kind, d): (worker_command(kind, d), out / "cells" / f"{kind}_d{d}.log", f"{NAMES[kind]}, d = {d}")
              for kind, d in cells if f"{kind}_d{d}" not in sweep}, args.jobs, device)
    for kind, d in cells:  # each cell's result, from its own sweep file, into this one
        key = f"{kind}_d{d}"
        sweep.run(key, lambda key=key: Sweep(out / "cells" / key / "runs.json")[key], verbose=False)
runs = {f"{kind}_d{d}": sweep.run(f"{kind}_d{d}", fit_and_score, kind, d) for kind, d in cells}

estimators = sorted({run.get("proposal", "refined+defensive") for run in runs.values()})  # kept runs may predate
print(f"\nTest log-likelihood (nats, proposal {', '.join(estimators)}); paper: Davidson et al. 2018, Table 1 (the "
      "guide as proposal)\n")
columns = " | ".join(f"{NAMES[k]} | paper" for k in args.models)
print(f"| d | {columns} | epochs ({', '.join(args.models)}) |")
print("|---" * (2 + 2 * len(args.models)) + "|")
for d in args.dims:
    cells = [f"{runs[f'{k}_d{d}']['test_log_likelihood']:.2f} +/- {runs[f'{k}_d{d}']['stderr']:.2f} | "
             + (f"{PAPER[k][d]:.2f}" if d in PAPER.get(k, {}) else "-") for k in args.models]
    epochs = ", ".join(str(runs[f"{k}_d{d}"]["epochs_trained"]) for k in args.models)
    print(f"| {d} | " + " | ".join(cells) + f" | {epochs} |")
print(f"\n{'d':>3} {'model':<26}{'ELBO':>10}{'recon':>10}{'KL':>8}{'k>0.7':>8}{'certified':>10}"
      f"{'guide as proposal':>26}")
for d in args.dims:
    for k in args.models:
        run = runs[f"{k}_d{d}"]
        by_guide = (f"{run['guide_log_likelihood']:.2f} ({run['guide_certified']:.1%})"
                    if "guide_log_likelihood" in run else "-")  # runs kept from before it was scored
        print(f"{d:>3} {NAMES[k]:<26}{run['test_elbo']:>10.2f}{run['test_reconstruction']:>10.2f}"
              f"{run['test_kl']:>8.2f}{run['khat_above_0.7']:>8.1%}{run.get('certified', float('nan')):>10.1%}"
              f"{by_guide:>26}")

fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
colours = {"normal": "tab:blue", "vmf": "tab:red", "power": "tab:green"}
for k in args.models:
    dims = list(args.dims)
    axes[0].errorbar(dims, [runs[f"{k}_d{d}"]["test_log_likelihood"] for d in dims],
                     yerr=[runs[f"{k}_d{d}"]["stderr"] for d in dims], marker="o", color=colours[k], label=NAMES[k])
    if k in PAPER:
        axes[0].plot(dims, [PAPER[k].get(d, float("nan")) for d in dims], "--", marker="x", color=colours[k],
                     alpha=0.6, label=f"{NAMES[k]}, paper")
    for d in dims:
        axes[1].plot(range(1, len(runs[f"{k}_d{d}"]["val_elbo"]) + 1), runs[f"{k}_d{d}"]["val_elbo"],
                     color=colours[k], alpha=0.3 + 0.7 * dims.index(d) / max(len(dims) - 1, 1),
                     label=f"{NAMES[k]}, d = {d}")
axes[0].set(xscale="log", xticks=args.dims, xticklabels=[str(d) for d in args.dims], xlabel="latent dimension d",
            ylabel="test log-likelihood (nats)", title="held-out log-likelihood")
axes[0].minorticks_off()  # the log axis's minor labels (3 x 10^0, ...) crowd the dimensions
axes[0].legend()
axes[1].set(xlabel="epoch", ylabel="validation ELBO per image", title="training curves")
axes[1].legend(fontsize=7, ncol=2)
save(fig, out / "table1.png")
write_metrics(out, {"runs": runs, "paper": PAPER, "num_train": len(train_data), "num_val": len(val_data),
                    "num_test": len(test_data)}, args)
print(f"\nfigure and metrics.json in {out}")
