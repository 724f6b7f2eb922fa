"""scVAE-style count models on real UMI data: VAE and GMVAE x Poisson, constrained Poisson, NB, ZIP, ZINB.

Gronbech et al. (Bioinformatics 2020) in Pyro. A data set is chosen by flag (PBMC 3k by default; the
scDeepCluster and CellBench sets of ../shared/data too), its genes restricted to the most variable ones,
and its cells split 81/19 with a seeded permutation. Every model has an MLP encoder on log1p(x) and a
mirror decoder (batch norm and dropout on the hidden layers). As in scVAE, the Poisson, NB, ZIP and ZINB
means are the exponential of the decoder's output (``--library none``) and only the constrained Poisson scales
its rates, a softmax over genes, by the cell's total count; ``--library observed`` scales every mean so
(scVI's convention; the Poisson is then the constrained Poisson). The GMVAE has one component per cell type and
its component is enumerated exactly (TraceEnum_ELBO); by default it starts from k-means pseudo-labels on
principal components of the log-normalised counts (``pyrovae.infer.pseudo_label_start``, ``--start-epochs`` of
the ``--epochs``): from a random start its components collapse onto one on most of these data sets.

Reported per model: held-out log-likelihood per cell (``--proposal``; the share of cells certified), ELBO and KL,
ARI / NMI of its clusters against the cell types (GMVAE: argmax q(y|x); VAE: KMeans on the latent means,
k = number of types), and the silhouette of the cell types in the latent space. Figures: training curves
and a t-SNE of the latent means coloured by cell type. The latent means go back into an AnnData
(``obsm["X_<model>_<likelihood>"]``, clusters in ``obs``) saved as ``cells.h5ad``.

Nothing is lost to an interruption: every model is checkpointed after each epoch (``OUT/checkpoints``) and its
held-out scores are saved 100 cells at a time (``OUT/scores``, :func:`pyrovae.infer.log_likelihood_in_parts`);
the same command resumes both, and a rerun with other settings is refused (``OUT/runs.json.settings.json``).
"""

import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.manifold import TSNE

from pyrovae import make_pair
from pyrovae.data import SHARED_SETS, add_results, load_count_dataset
from pyrovae.experiment import (
    dropout_rate,
    experiment_parser,
    non_negative_int,
    positive_float,
    positive_int,
    result_settings,
    setup,
    write_metrics,
)
from pyrovae.infer import (
    clustering_scores,
    encode_data,
    kmeans_clusters,
    log_likelihood_in_parts,
    pseudo_label_start,
    train,
)
from pyrovae.plots import latent_scatter, save, training_curves
from pyrovae.sweep import Sweep

LIKELIHOODS = ["poisson", "constrained_poisson", "nb", "zip", "zinb"]

QUICK = {"epochs": 2, "genes": 200, "max_cells": 600, "likelihoods": ["nb"], "num_samples": 32}
parser = experiment_parser(__doc__, epochs=100, out="results/scvae_counts", quick=QUICK, resumable=True)
parser.add_argument("--dataset", default="pbmc3k", choices=sorted(SHARED_SETS),
                    help="count data set from the shared data folder")
parser.add_argument("--models", nargs="+", default=["VAE", "GMVAE"], choices=["VAE", "GMVAE"],
                    help="models trained, each with every --likelihoods")
parser.add_argument("--likelihoods", nargs="+", default=LIKELIHOODS, choices=LIKELIHOODS,
                    help="count likelihoods, each trained with every --models")
parser.add_argument("--genes", type=non_negative_int, default=2000,
                    help="most variable genes kept (0: all expressed genes)")
parser.add_argument("--max-cells", type=non_negative_int, default=0, help="use a random subset of cells (0: all)")
parser.add_argument("--latent", type=positive_int, default=10, help="latent dimension")
parser.add_argument("--hidden", type=positive_int, nargs="+", default=[128], help="encoder widths (decoder mirrors)")
parser.add_argument("--components", type=non_negative_int, default=0, help="GMVAE components (0: number of cell types)")
parser.add_argument("--batch-size", type=positive_int, default=128, help="cells per training batch")
parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (the pseudo-label start's too)")
parser.add_argument("--dropout", type=dropout_rate, default=0.2, help="dropout of the hidden layers (with batch norm)")
parser.add_argument("--num-samples", type=positive_int, default=100, help="importance samples per held-out cell")
parser.add_argument("--library", choices=["none", "observed"], default="none",
                    help="the mean's scale: 'none', exp of the decoder's output (scVAE's unconstrained models), or "
                         "'observed', softmax over genes times the cell's total count (scVI's convention; the Poisson "
                         "is then scVAE's constrained Poisson); constrained_poisson always uses the total count")
parser.add_argument("--gmvae-start", choices=["pseudo-labels", "random"], default="pseudo-labels",
                    help="the GMVAE's start: k-means pseudo-labels (pyrovae.infer.pseudo_label_start) or random")
parser.add_argument("--start-epochs", type=non_negative_int, default=30,
                    help="epochs of the pseudo-label start, counted in --epochs")
parser.add_argument("--score-batch-size", type=positive_int, default=None,
                    help="held-out cells scored at once (default 256; less bounds the memory of the scoring)")
args = parser.parse_args()
device = setup(args)

# what the loader and the filters drop is reported as a warning
cells = load_count_dataset(args.dataset, args.data_dir).prepare(args.genes, args.max_cells, args.seed)
train_cells, test_cells = cells.split(0.81, seed=args.seed)
num_types = len(cells.label_names)
components = args.components or num_types
print(f"{cells}: {len(train_cells)} training and {len(test_cells)} held-out cells")


runs, adata = {}, cells.to_anndata()
# checkpoints and score parts resume an interrupted run; the models and likelihoods may grow between runs
out = Path(args.out)
sweep = Sweep(out / "runs.json", settings=result_settings(args, exclude=("models", "likelihoods")))
regularise = {"batch_norm": True, "dropout": args.dropout}
for model_name in args.models:
    for likelihood in args.likelihoods:
        name = f"{model_name}, {likelihood}"
        kind, num_components = ("gmvae", components) if model_name == "GMVAE" else ("vae", None)
        library = "observed" if likelihood == "constrained_poisson" else args.library
        torch.manual_seed(args.seed)  # each model's start its own: the same when the sweep grows as in a fresh run
        model, guide = make_pair(kind, cells.num_genes, args.latent, args.hidden, likelihood,
                                 num_components=num_components, input_transform="log1p",
                                 likelihood_options={"library": library}, **regularise)
        key = f"{model_name}_{likelihood}"
        epochs, start_seconds = args.epochs, 0.0
        if model_name == "GMVAE" and args.gmvae_start == "pseudo-labels":
            start_epochs = min(args.start_epochs, epochs - 1)
            if start_epochs < args.start_epochs:
                print(f"{name}: --start-epochs {args.start_epochs} cut to {start_epochs}, one fewer than --epochs "
                      f"{epochs} (the start is part of the run's epochs)", flush=True)
            if start_epochs > 0:
                started = time.perf_counter()
                pseudo_label_start(model, guide, train_cells, epochs=start_epochs, batch_size=args.batch_size,
                                   lr=args.lr, device=device, seed=args.seed, progress=not args.no_progress,
                                   checkpoint=sweep.checkpoint_path(f"{key}_start"))
                # the seconds of the run that finished the start (a resumed start is read back in no time)
                start_seconds = sweep.run(f"{key}_start_seconds", float, time.perf_counter() - started, verbose=False)
                epochs -= start_epochs
        history = train(model, guide, train_cells, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                        val_data=test_cells, restore_best=False, device=device, seed=args.seed, eval_size=0,
                        progress=not args.no_progress, checkpoint=sweep.checkpoint_path(key))
        seconds = start_seconds + sum(history["seconds"])  # the epochs' seconds, those of earlier runs included
        ll = log_likelihood_in_parts(model, guide, test_cells, out / "scores" / key / args.proposal,
                                     part_size=100, seed=args.seed, progress=not args.no_progress,
                                     num_samples=args.num_samples, proposal=args.proposal,
                                     refine_steps=args.refine_steps, batch_size=args.score_batch_size)
        latent = encode_data(guide, cells, device=device)
        if model_name == "GMVAE":
            clusters = encode_data(guide, cells, guide.assign, device=device)
        else:
            clusters = kmeans_clusters(latent, num_types)
        scores = clustering_scores(cells.labels, clusters, latent)
        add_results(adata, latent, clusters, key=key)
        last = history.last
        certified = float(ll.certified.float().mean())
        runs[name] = {"history": history, "latent": latent, **ll.summary(), "test_elbo": last["val_elbo"],
                      "test_kl": last["val_kl"], **scores, "train_seconds": seconds, "certified": certified,
                      **({"start": args.gmvae_start} if model_name == "GMVAE" else {})}
        print(f"{name:<28} log p(x) {ll.mean:9.2f} +/- {ll.stderr:5.2f}  ELBO {last['val_elbo']:9.2f}  "
              f"KL {last['val_kl']:6.2f}  ARI {scores['ari']:.3f}  NMI {scores['nmi']:.3f}  "
              f"certified {certified:5.1%}  {seconds:6.1f} s", flush=True)

# ----------------------------------------------------------------------------------------------- figures
fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
training_curves(axes[0], {name: run["history"] for name, run in runs.items()}, key="val_elbo",
                ylabel="held-out ELBO per cell")
training_curves(axes[1], {name: run["history"] for name, run in runs.items()}, key="val_kl", ylabel="KL per cell")
for ax in axes:
    ax.legend(fontsize="x-small", ncol=2)
save(fig, f"{args.out}/training_curves.png")

columns = min(len(runs), 5)
rows = (len(runs) + columns - 1) // columns
fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 4.5 * rows), squeeze=False, layout="constrained")
types = np.asarray(cells.label_names, dtype=object)[cells.labels.numpy()]  # the legend names the cell types
for ax, (name, run) in zip(axes.flat, runs.items()):
    embedding = TSNE(init="pca", random_state=args.seed, perplexity=min(30, len(cells) // 4)).fit_transform(
        run["latent"].numpy())
    latent_scatter(ax, embedding, types, title=f"{name}\nARI {run['ari']:.2f}, log p(x) {run['log_likelihood']:.0f}")
    ax.set(xlabel="t-SNE 1", ylabel="t-SNE 2")
for ax in axes.flat[len(runs):]:
    ax.axis("off")
fig.suptitle(f"{args.dataset}: t-SNE of latent means, coloured by cell type")
save(fig, f"{args.out}/latent_tsne.png")
adata.write_h5ad(f"{args.out}/cells.h5ad")

metrics = {"dataset": args.dataset, "num_cells": len(cells), "num_genes": cells.num_genes,
           "num_train": len(train_cells), "num_test": len(test_cells), "cell_types": cells.label_names,
           "runs": {name: {k: v for k, v in run.items() if k not in ("history", "latent")}
                    for name, run in runs.items()}}
print(f"\n| model | likelihood | test log p(x)/cell ({args.proposal}) | certified | ELBO | KL | ARI | NMI | seconds |")
print("|---|---|---|---|---|---|---|---|---|")
for name, run in runs.items():
    model_name, likelihood = name.split(", ")
    print(f"| {model_name} | {likelihood} | {run['log_likelihood']:.2f} | {run['certified']:.0%} | "
          f"{run['test_elbo']:.2f} | {run['test_kl']:.2f} | {run['ari']:.3f} | {run['nmi']:.3f} | "
          f"{run['train_seconds']:.0f} |")
write_metrics(args.out, metrics, args)
