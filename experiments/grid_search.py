"""Architecture grid search for a count VAE or GMVAE (notebook 001, part 2.1), then the best one trained fully.

Every configuration of hidden layers {[100], [100, 250], [100, 250, 500], [100, 250, 500, 1000]} x latent
size {10, 25, 50, 100} is trained for ``--search-epochs`` (1, as in the notebook) and scored by its ELBO on
validation cells (a tenth of the training cells); the best is then trained for ``--epochs`` with a checkpoint,
kept at its best validation epoch, and scored once on the test cells (19%, never used to choose) by its ELBO and
importance-sampled log-likelihood. Works for either model, any count likelihood and any shared data set.

Differs from the notebook: the encoder and decoder widths mirror each other (16 configurations; the notebook
searched encoder x decoder x latent, 64), the notebook chose by training ELBO, and Adam runs at ``--lr`` 1e-3 with
batches of 128 and no weight decay (the notebook: 1e-4, 100, weight decay 5e-2); the count means are scaled by
the observed library size (``scvae_counts.py --library observed`` trains the same models; its default is
``none``), so ``--likelihood poisson`` and ``constrained_poisson`` are one model here.

Resumable: each finished configuration is recorded in ``grid.json`` and not trained again, and the final run
resumes from its checkpoint (one per configuration, in ``OUT/checkpoints``: a wider grid may pick another best).
The final run's own settings (``--epochs``, ``--num-samples``, ``--proposal``, ``--refine-steps``) may change
between runs on one ``--out``: the grid is kept; the others are refused.
"""

import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from pyrovae import make_pair
from pyrovae.data import SHARED_SETS, load_count_dataset
from pyrovae.experiment import (
    experiment_parser,
    non_negative_int,
    positive_float,
    positive_int,
    result_settings,
    setup,
    write_metrics,
)
from pyrovae.infer import evaluate, load_checkpoint, log_likelihood, train
from pyrovae.likelihoods import likelihood_names
from pyrovae.plots import save, training_curves
from pyrovae.sweep import Sweep

HIDDEN = [[100], [100, 250], [100, 250, 500], [100, 250, 500, 1000]]
LATENT = [10, 25, 50, 100]

QUICK = {"genes": 200, "max_cells": 600, "hidden": ["32"], "latent": [5], "num_samples": 32}
parser = experiment_parser(__doc__, epochs=50, out="results/grid_search", quick=QUICK, resumable=True)
parser.add_argument("--dataset", default="pbmc3k", choices=sorted(SHARED_SETS),
                    help="count data set from the shared data folder")
parser.add_argument("--model", default="VAE", choices=["VAE", "GMVAE"],
                    help="VAE, or GMVAE with one component per cell type (10 when the data have no labels)")
parser.add_argument("--likelihood", default="nb", choices=[n for n in likelihood_names() if "poisson" in n or "nb" in n
                                                          or n in ("zip", "zinb")],
                    help="count likelihood (mean scaled by the cell's observed total count)")
parser.add_argument("--genes", type=non_negative_int, default=2000,
                    help="most variable genes kept (0: all expressed genes)")
parser.add_argument("--max-cells", type=non_negative_int, default=0, help="use a random subset of cells (0: all)")
parser.add_argument("--hidden", type=str, nargs="+", default=[",".join(map(str, h)) for h in HIDDEN],
                    help="hidden-layer configurations, each comma-separated (encoder order; the decoder mirrors)")
parser.add_argument("--latent", type=positive_int, nargs="+", default=LATENT, help="latent sizes searched")
parser.add_argument("--search-epochs", type=positive_int, default=1,
                    help="epochs each configuration of the grid is trained (the notebook: 1)")
parser.add_argument("--batch-size", type=positive_int, default=128, help="cells per training batch")
parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
parser.add_argument("--num-samples", type=positive_int, default=100, help="importance samples per held-out cell")
args = parser.parse_args()
device = setup(args)

cells = load_count_dataset(args.dataset, args.data_dir).prepare(args.genes, args.max_cells, args.seed)
train_cells, test_cells = cells.split(0.81, seed=args.seed)
# the architecture and the final run's best epoch are chosen on validation cells; the test cells are scored once
fit_cells, val_cells = train_cells.split(0.9, seed=args.seed)


def build(hidden: list[int], latent: int):
    torch.manual_seed(args.seed)  # a configuration's start its own, whichever ran before it (or was read back)
    kind, components = ("gmvae", len(cells.label_names) or 10) if args.model == "GMVAE" else ("vae", None)
    return make_pair(kind, cells.num_genes, latent, hidden, args.likelihood, num_components=components,
                     input_transform="log1p")


def search(hidden: list[int], latent: int) -> dict:
    model, guide = build(hidden, latent)
    started = time.perf_counter()
    history = train(model, guide, fit_cells, epochs=args.search_epochs, batch_size=args.batch_size, lr=args.lr,
                    val_data=val_cells, restore_best=False, device=device, seed=args.seed, eval_size=0,
                    progress=not args.no_progress)
    result = {"hidden": hidden, "latent": latent, "val_elbo": history.last["val_elbo"],
              "seconds": time.perf_counter() - started}
    print(f"hidden {hidden} latent {latent}: val ELBO {result['val_elbo']:.2f} ({result['seconds']:.1f} s)", flush=True)
    return result


# a finished configuration is never trained again; results of other settings are refused (those of the final run
# alone may change: its checkpoint goes on for more epochs, and its score is made afresh)
final_only = ("hidden", "latent", "epochs", "num_samples", "proposal", "refine_steps")
sweep = Sweep(Path(args.out) / "grid.json", settings={**result_settings(args, exclude=final_only),
                                                      "chosen_on": "validation cells"}, retired=final_only)
grid = {f"hidden {spec} latent {latent}": sweep.run(f"hidden {spec} latent {latent}", search,
                                                   [int(h) for h in spec.split(",")], latent)
        for spec in args.hidden for latent in args.latent}
best_key = max(grid, key=lambda k: grid[k]["val_elbo"])  # among the configurations searched now
best = grid[best_key]
print(f"best: {best_key} (val ELBO {best['val_elbo']:.2f}); training it for {args.epochs} epochs")
model, guide = build(best["hidden"], best["latent"])
final = sweep.checkpoint_path(best_key)
earlier = Path(args.out) / "best.pt"  # where an earlier pyrovae kept the final run: resumed if it is this one's
if earlier.exists() and not final.exists():
    saved = load_checkpoint(earlier).get("architecture", {})
    if saved == {"model": repr(model), "guide": repr(guide)}:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(earlier, final)
history = train(model, guide, fit_cells, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                val_data=val_cells, device=device, seed=args.seed, eval_size=0,
                checkpoint=final, progress=not args.no_progress)
best_epoch = history.best_epoch or len(history.records)  # the epoch restored
test_elbo = evaluate(model, guide, test_cells, seed=args.seed)["elbo"]
ll = log_likelihood(model, guide, test_cells, num_samples=args.num_samples, proposal=args.proposal,
                    refine_steps=args.refine_steps)
print(f"best configuration (epoch {best_epoch}): test log p(x) {ll.mean:.2f} +/- {ll.stderr:.2f}, test ELBO "
      f"{test_elbo:.2f}")

# ----------------------------------------------------------------------------------------------- figures
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
table = np.full((len(args.hidden), len(args.latent)), np.nan)
for i, hidden_spec in enumerate(args.hidden):
    for j, latent in enumerate(args.latent):
        table[i, j] = grid.get(f"hidden {hidden_spec} latent {latent}", {}).get("val_elbo", np.nan)
image = axes[0].imshow(table, cmap="viridis")
for (i, j), value in np.ndenumerate(table):
    axes[0].text(j, i, f"{value:.0f}", ha="center", va="center", color="w", fontsize=8)
axes[0].set(xticks=range(len(args.latent)), xticklabels=args.latent, yticks=range(len(args.hidden)),
            yticklabels=args.hidden, xlabel="latent size", ylabel="hidden layers",
            title=f"validation ELBO after {args.search_epochs} epoch(s)")
fig.colorbar(image, ax=axes[0])
training_curves(axes[1], {best_key: history}, key="val_elbo", ylabel="validation ELBO per cell")
fig.suptitle(f"{args.model} / {args.likelihood} on {args.dataset}")
save(fig, f"{args.out}/grid_search.png")
write_metrics(args.out, {"grid": grid, "best": best_key, "best_log_likelihood": ll.summary(),
                         "best_elbo": test_elbo, "best_epoch": best_epoch, "best_epochs": len(history.records),
                         "cells": {"fit": len(fit_cells), "validation": len(val_cells), "test": len(test_cells)}},
              args)
