"""Differential expression and label transfer on PBMC 3k: what single-cell researchers use scvi-tools for.

1. An NB VAE (scVI's architecture: one hidden layer of 128, latent 10, observed library) on the 2,000 most variable
   genes. For each of the nine cell types against all other cells, Bayesian DE in the "change" mode (Boyeau et
   al. 2023; delta 0.25 on log2 fold changes, 5,000 posterior draws per group), and where each type's canonical
   markers rank among its up-regulated genes (lfc_mean > 0, Bayes factor >= 3, detected in >= 10% of the type's
   cells, sorted by lfc_mean).
2. Label transfer: a semi-supervised GMVAE (Kingma et al. 2014's M2; one component per cell type) trained with
   the labels of a random half of the cells hidden; its accuracy on the hidden half, beside a logistic regression
   on 50 principal components of log-normalised counts trained on the known half.

With scvi-tools installed (``pip install -e ".[peer]"``) the same run trains scVI and scANVI on the same genes
with the same architecture, epochs and optimiser (Adam, lr 1e-3, eps 1e-8, no weight decay, no KL warm-up), and
reports the overlap of the two libraries' top-50 up genes per type (the same filter and order) and scANVI's
accuracy on the same hidden half.

Writes metrics.json, the DE tables (de_<type>.csv), cells.h5ad (latent, transferred labels, normalised
expression of the markers, DE tables in uns) and two figures.

Resumable: our two models are checkpointed after every epoch (``OUT/checkpoints``), so an interrupted run trains on
from where it stopped and a finished one is not trained again (scVI and scANVI are trained again); a rerun with
other settings is refused.
"""

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyro
from pyrovae.guides import GMVAEGuide, NormalGuide
from pyrovae.models import GMVAE, VAE
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

from pyrovae.data import add_results, load_count_dataset
from pyrovae.experiment import (
    experiment_parser,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    result_settings,
    setup,
    write_metrics,
)
from pyrovae.infer import differential_expression, encode_data, markers, normalized_expression, predict_labels, train
from pyrovae.plots import save
from pyrovae.sweep import Sweep

# canonical markers of the PBMC 3k types (Seurat's guided clustering tutorial)
CANONICAL = {
    "B": ["MS4A1", "CD79A", "CD79B"],
    "CD14+ Mono": ["CD14", "LYZ", "S100A8"],
    "CD8 T": ["CD8A", "CD8B"],
    "DC": ["FCER1A", "CST3"],
    "FCGR3A+ Mono": ["FCGR3A", "MS4A7"],
    "Memory CD4 T": ["IL7R", "S100A4"],
    "NK": ["GNLY", "NKG7"],
    "Naive CD4 T": ["IL7R", "CCR7"],
    "Platelet": ["PPBP", "PF4"],
}
QUICK = {"epochs": 2, "label_epochs": 2, "genes": 300, "num_samples": 200}
parser = experiment_parser(__doc__, epochs=200, out="results/pbmc_de", quick=QUICK, proposal=False)
parser.add_argument("--label-epochs", type=non_negative_int, default=60, help="epochs of the semi-supervised GMVAE")
parser.add_argument("--genes", type=non_negative_int, default=2000, help="most variable genes kept")
parser.add_argument("--latent", type=positive_int, default=10, help="latent dimension (VAE, GMVAE, scVI)")
parser.add_argument("--hidden", type=positive_int, nargs="+", default=[128],
                    help="encoder widths (decoder mirrors; scVI: that many layers of the first width)")
parser.add_argument("--batch-size", type=positive_int, default=128, help="cells per training batch")
parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (scVI's and scANVI's too)")
parser.add_argument("--num-samples", type=positive_int, default=5000, help="posterior draws per group for DE")
parser.add_argument("--delta", type=non_negative_float, default=0.25, help="|log2 fold change| that counts as a change")
parser.add_argument("--known-fraction", type=fraction, default=0.5, help="share of cells whose label is given")
args = parser.parse_args()
device = setup(args)
progress = not args.no_progress
sweep = Sweep(Path(args.out) / "runs.json", settings=result_settings(args))  # checkpoints; other settings refused

cells = load_count_dataset("pbmc3k", args.data_dir).prepare(num_genes=args.genes, seed=args.seed)
types = cells.label_names
genes = set(cells.gene_names)
print(f"{cells}; canonical markers among the {cells.num_genes} genes: "
      f"{sum(g in genes for m in CANONICAL.values() for g in m)} of {sum(map(len, CANONICAL.values()))}")

# ------------------------------------------------------------------------------------------------ 1. DE
pyro.set_rng_seed(args.seed)
model = VAE(cells.num_genes, args.latent, args.hidden, "nb", batch_norm=True, dropout=0.1)
guide = NormalGuide(cells.num_genes, args.latent, args.hidden, input_transform="log1p", batch_norm=True, dropout=0.1)
history = train(model, guide, cells, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=device,
                seed=args.seed, progress=progress, checkpoint=sweep.checkpoint_path("nb-vae"))
tables, ranks = {}, {}
for kind in types:
    table = differential_expression(model, guide, cells, kind, delta=args.delta, num_samples=args.num_samples,
                                    seed=args.seed)
    tables[kind] = table
    up = list(markers(table).index)
    ranks[kind] = {g: (up.index(g) + 1 if g in up else None) for g in CANONICAL.get(kind, []) if g in genes}
    shown = ", ".join(f"{g} {'#' + str(r) if r else '-'}" for g, r in ranks[kind].items())
    print(f"{kind:>14}: {len(up):4d} up genes; top 5 {up[:5]}; canonical markers: {shown}")
found = [r for kind in ranks.values() for r in kind.values()]
top20 = sum(r is not None and r <= 20 for r in found)
print(f"canonical markers in their type's top 20: {top20} of {len(found)}")

# ----------------------------------------------------------------------------------------- 2. label transfer
rng = np.random.default_rng(args.seed)
known = rng.random(len(cells)) < args.known_fraction
truth = cells.obs[cells.label_key].astype(str).to_numpy()
pyro.set_rng_seed(args.seed)
# the guide's default classification weight (half the number of genes) and dropout 0.3 (LabelTransferGMVAE's)
gmvae = GMVAE(cells.num_genes, args.latent, len(types), args.hidden, "nb", batch_norm=True, dropout=0.3)
gmvae_guide = GMVAEGuide(cells.num_genes, args.latent, args.hidden, num_components=len(types), input_transform="log1p",
                         batch_norm=True, dropout=0.3)
label_history = train(gmvae, gmvae_guide, cells.with_labels(known), epochs=args.label_epochs,
                      batch_size=args.batch_size, lr=args.lr, device=device, seed=args.seed, progress=progress,
                      checkpoint=sweep.checkpoint_path("gmvae"))
predicted = predict_labels(gmvae_guide, cells)
accuracy = float((predicted["label"].astype(str).to_numpy()[~known] == truth[~known]).mean())

counts = cells.counts.toarray()
log_normalised = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
pcs = PCA(50, random_state=args.seed).fit_transform(log_normalised)
baseline = LogisticRegression(max_iter=2000).fit(pcs[known], truth[known])
baseline_accuracy = float((baseline.predict(pcs[~known]) == truth[~known]).mean())
print(f"label transfer, {int((~known).sum())} hidden cells: semi-supervised GMVAE {accuracy:.3f}; "
      f"logistic regression on 50 PCs {baseline_accuracy:.3f}")

# ------------------------------------------------------------------------------ 3. scvi-tools in the same run
peer = {}
try:
    import scvi
except ImportError:
    scvi = None
    print("scvi-tools is not installed: no scVI / scANVI comparison (pip install -e '.[peer]')")
if scvi is not None:
    scvi.settings.seed = args.seed
    plan = {"lr": args.lr, "eps": 1e-8, "weight_decay": 0.0, "n_epochs_kl_warmup": None, "n_steps_kl_warmup": None}
    peer_data = cells.to_anndata()
    peer_data.obs["partial_label"] = np.where(known, truth, "Unknown")
    scvi.model.SCVI.setup_anndata(peer_data, layer="counts", labels_key="partial_label")
    scvi_model = scvi.model.SCVI(peer_data, n_hidden=args.hidden[0], n_latent=args.latent, n_layers=len(args.hidden),
                                 dropout_rate=0.1, gene_likelihood="nb")
    scvi_model.train(max_epochs=args.epochs, batch_size=args.batch_size, train_size=1.0, early_stopping=False,
                     plan_kwargs=plan, enable_progress_bar=progress, accelerator="cpu")
    overlaps = {}
    for kind in types:
        theirs = scvi_model.differential_expression(groupby=cells.label_key, group1=kind, mode="change",
                                                    delta=args.delta)
        ours_top, theirs_top = list(markers(tables[kind]).index[:50]), list(markers(theirs).index[:50])
        shortest = min(len(ours_top), len(theirs_top))  # either may have fewer than 50 genes that pass the filter
        overlaps[kind] = len(set(ours_top) & set(theirs_top)) / shortest if shortest else None
        shown = f"{overlaps[kind]:.0%}" if shortest else "undefined"
        print(f"{kind:>14}: top-50 up genes shared with scVI {shown} (ours {len(ours_top)}, scVI {len(theirs_top)})")
    scanvi = scvi.model.SCANVI.from_scvi_model(scvi_model, unlabeled_category="Unknown")
    scanvi.train(max_epochs=args.label_epochs, batch_size=args.batch_size, train_size=1.0, early_stopping=False,
                 plan_kwargs=plan, enable_progress_bar=progress, accelerator="cpu")
    scanvi_accuracy = float((np.asarray(scanvi.predict(), dtype=str)[~known] == truth[~known]).mean())
    print(f"scANVI on the same hidden half: accuracy {scanvi_accuracy:.3f} (ours {accuracy:.3f})")
    peer = {"scvi_tools": scvi.__version__, "top50_overlap_with_scvi": overlaps,
            "mean_top50_overlap_with_scvi": float(np.mean([v for v in overlaps.values() if v is not None] or [np.nan])),
            "scanvi_accuracy": scanvi_accuracy}

# ----------------------------------------------------------------------------------------------- outputs
marker_list = [g for kind in types for g in CANONICAL.get(kind, []) if g in genes]
marker_list = list(dict.fromkeys(marker_list))
by_type = normalized_expression(model, guide, cells, groupby=cells.label_key, num_samples=10)[marker_list]

fig, axes = plt.subplots(1, 2, figsize=(17, 6), gridspec_kw={"width_ratios": [1.6, 1]})
shown = np.log1p(by_type.loc[types])
image = axes[0].imshow(shown / shown.max(0), aspect="auto", cmap="viridis")
axes[0].set(xticks=range(len(marker_list)), yticks=range(len(types)), title="normalised expression (posterior mean, "
            "log1p, scaled per gene) of the canonical markers")
axes[0].set_xticklabels(marker_list, rotation=90)
axes[0].set_yticklabels(types)
fig.colorbar(image, ax=axes[0])
confusion = pd.crosstab(pd.Categorical(truth[~known], categories=types),
                        pd.Categorical(predicted["label"].astype(str).to_numpy()[~known], categories=types),
                        normalize="index", dropna=False)
axes[1].imshow(confusion.to_numpy(), cmap="Blues", vmin=0, vmax=1)
axes[1].set(xticks=range(len(types)), yticks=range(len(types)), xlabel="transferred label", ylabel="true label",
            title=f"label transfer on the hidden half: accuracy {accuracy:.3f}")
axes[1].set_xticklabels(types, rotation=90)
axes[1].set_yticklabels(types)
save(fig, f"{args.out}/pbmc_de.png")

fig, axes = plt.subplots(3, 3, figsize=(15, 12))
for ax, kind in zip(axes.ravel(), types):
    table = tables[kind]
    ax.scatter(table["lfc_mean"], table["proba_de"], s=4, c="0.6")
    for g in CANONICAL.get(kind, []):
        if g in table.index:
            ax.scatter(table.loc[g, "lfc_mean"], table.loc[g, "proba_de"], s=20, c="C3")
            ax.annotate(g, (table.loc[g, "lfc_mean"], table.loc[g, "proba_de"]), fontsize=8)
    ax.set(title=f"{kind} vs rest", xlabel="mean log2 fold change", ylabel="P(|lfc| > delta)")
save(fig, f"{args.out}/pbmc_de_volcano.png")

for kind, table in tables.items():
    table.to_csv(f"{args.out}/de_{re.sub(r'[^A-Za-z0-9]+', '_', kind)}.csv")
adata = cells.to_anndata()
add_results(adata, latent=encode_data(guide, cells), key="pyrovae_vae",
            de={kind: table.head(100) for kind, table in tables.items()})
add_results(adata, labels=predicted, key="pyrovae_transferred")
adata.obs["pyrovae_label_known"] = known
adata.write_h5ad(f"{args.out}/cells.h5ad")

metrics = {
    "cells": len(cells), "genes": cells.num_genes, "vae_final_loss": history.last["loss"],
    "gmvae_final_loss": label_history.last["loss"],
    "marker_ranks": ranks, "canonical_markers_in_top20": top20, "canonical_markers_scored": len(found),
    "top5_up": {kind: list(markers(t).index[:5]) for kind, t in tables.items()},
    "label_transfer_accuracy": accuracy, "logistic_regression_on_pcs_accuracy": baseline_accuracy,
    "hidden_cells": int((~known).sum()), **peer,
}
write_metrics(args.out, metrics, args)
