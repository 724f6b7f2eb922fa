"""pyrovae's count VAEs against scvi-tools' SCVI on PBMC 3k, on a fixed protocol.

Protocol: PBMC 3k raw UMI counts (2,638 cells), all 13,714 genes or the 2,000 HVG of ``hvg2000.tsv``;
split ``numpy.random.default_rng(0).permutation``, the first round(0.81 n) cells train, the rest (501)
test; latent 10, one hidden layer of 128, batch 128, 200 epochs, Adam 1e-3, observed library size, KL
weight 1 throughout; encoder input log1p(x); batch norm and dropout 0.2 on the hidden layer of encoder
and decoder (scVI uses batch norm and dropout 0.1 in its encoder). Reported per likelihood: test
log-likelihood per cell (mean over test cells of a 100-sample importance estimate of log p(x | library),
normalising constants included, with k-hat), seconds per training epoch (training only), and the ARI of
KMeans (k = number of cell types, n_init 10, seed 0) on the latent means of all cells against the types.

The baseline is scvi-tools 1.4.2's SCVI, run in the same process on the same split, alternating with ours per
likelihood: ``n_hidden=128, n_latent=10, n_layers=1``, the same dropout, ``gene_likelihood`` the same, dispersion
per gene, batch 128, the same epochs, Adam with lr 1e-3, eps 1e-8 and no weight decay (scVI's defaults are eps
0.01 and weight decay 1e-6: ours are given to both), no KL warm-up (as ours), all cells of the training split
(``train_size=1``), no early stopping. Its test log-likelihood is its own ``get_marginal_ll`` (100 importance
samples from its guide, observed library), and ours is ``log_likelihood`` with the guide as the proposal and
100 samples: the same estimator. Seconds per epoch are the medians of the epochs' wall times (a Lightning
callback for scVI, ``History`` for ours), training only.

scvi-tools is an extra: ``pip install -e ".[peer]"`` (it pins scvi-tools==1.4.2, which installs on Python 3.11
beside torch 2.13.0). Without it the script runs ours alone and says how to install it.

    python benchmarks/scvi_peer.py [--genes hvg all] [--likelihoods nb zinb poisson] [--epochs 200]
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch
from pyrovae.guides import NormalGuide
from pyrovae.models import VAE

from pyrovae.data import find_dataset, load_count_dataset
from pyrovae.infer import clustering_scores, encode_data, kmeans_clusters, log_likelihood, train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--genes", nargs="+", default=["all", "hvg"], choices=["all", "hvg"])
parser.add_argument("--likelihoods", nargs="+", default=["nb", "zinb", "poisson"])
parser.add_argument("--epochs", type=int, default=200)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--dropout", type=float, default=0.2, help="dropout of encoder and decoder hidden layers")
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--data-dir", default=None)
parser.add_argument("--out", default="benchmarks/results/scvi_peer.json")
args = parser.parse_args()
torch.set_num_threads(args.threads)

try:
    import scvi
    from lightning.pytorch.callbacks import Callback
except ImportError:
    scvi = None
    print("scvi-tools is not installed, so only pyrovae's rows are measured; for the peer in the same run: "
          "pip install -e '.[peer]' (scvi-tools==1.4.2)")


def run_scvi(train_cells, test_cells, data, likelihood: str) -> dict:
    """scVI on the same cells and settings (see the module docstring): its test LL, s/epoch and ARI."""

    class EpochTimer(Callback):
        def __init__(self):
            self.seconds, self.started = [], None

        def on_train_epoch_start(self, trainer, module):
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.seconds.append(time.perf_counter() - self.started)

    scvi.settings.seed = args.seed
    adata_train, adata_test, adata_all = (c.to_anndata() for c in (train_cells, test_cells, data))
    for adata in (adata_train, adata_test, adata_all):
        scvi.model.SCVI.setup_anndata(adata, layer="counts")
    peer = scvi.model.SCVI(adata_train, n_hidden=128, n_latent=10, n_layers=1, dropout_rate=args.dropout,
                           gene_likelihood=likelihood, dispersion="gene")
    timer = EpochTimer()
    peer.train(max_epochs=args.epochs, batch_size=128, train_size=1.0, early_stopping=False, accelerator="cpu",
               enable_progress_bar=False, callbacks=[timer],
               plan_kwargs={"lr": 1e-3, "eps": 1e-8, "weight_decay": 0.0, "n_epochs_kl_warmup": None,
                            "n_steps_kl_warmup": None})
    ll = peer.get_marginal_ll(adata_test, n_mc_samples=100)
    latent = peer.get_latent_representation(adata_all)
    ari = clustering_scores(data.labels, kmeans_clusters(latent, len(data.label_names), seed=0))["ari"]
    return {"scvi_ll": float(ll), "scvi_seconds": float(np.median(timer.seconds)), "scvi_ari": ari}


cells = load_count_dataset("pbmc3k", args.data_dir)
rows = []
for genes in args.genes:
    data = cells
    if genes == "hvg":
        data = cells.select_genes(pd.read_csv(find_dataset("pbmc3k", args.data_dir) / "hvg2000.tsv", header=None)[0])
    train_cells, test_cells = data.split(0.81, seed=0)
    for name in args.likelihoods:
        pyro.set_rng_seed(args.seed)
        model = VAE(data.num_genes, 10, [128], likelihood=name, batch_norm=True, dropout=args.dropout)
        guide = NormalGuide(data.num_genes, 10, [128], input_transform="log1p", batch_norm=True, dropout=args.dropout)
        history = train(model, guide, train_cells, epochs=args.epochs, batch_size=128, eval_size=0, seed=args.seed,
                        progress=False)
        seconds = float(np.median([r["seconds"] for r in history.records]))
        ll = log_likelihood(model, guide, test_cells, num_samples=100)
        latent = encode_data(guide, data)  # in evaluation mode: no dropout, batch norm's running statistics
        ari = clustering_scores(data.labels, kmeans_clusters(latent, len(data.label_names), seed=0))["ari"]
        row = {
            "genes": genes, "likelihood": name, "test_ll": ll.mean, "test_ll_stderr": ll.stderr,
            "frac_khat_gt_0.7": float((ll.khat > 0.7).float().mean()), "seconds_per_epoch": seconds, "ari": ari,
        }
        if scvi is not None:
            peer = run_scvi(train_cells, test_cells, data, name)
            row.update(peer)
            row["ll_met"] = row["test_ll"] >= peer["scvi_ll"]
            row["speed_ratio"] = seconds / peer["scvi_seconds"]
            row["ari_met"] = ari >= peer["scvi_ari"]
        rows.append(row)
        versus = (f" (scVI {row['scvi_ll']:9.2f}, {'met' if row['ll_met'] else 'NOT met'}), s/epoch {seconds:5.2f} "
                  f"(scVI {row['scvi_seconds']:.2f}, ratio {row['speed_ratio']:.2f}), ARI {ari:.3f} (scVI "
                  f"{row['scvi_ari']:.3f})") if scvi is not None else f", s/epoch {seconds:5.2f}, ARI {ari:.3f}"
        print(f"{genes:>4} {name:>8}: test LL/cell {ll.mean:9.2f}{versus}, k-hat>0.7 {row['frac_khat_gt_0.7']:.1%}",
              flush=True)

Path(args.out).parent.mkdir(parents=True, exist_ok=True)
machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
peer_version = getattr(scvi, "__version__", None)
Path(args.out).write_text(json.dumps({"machine": machine, "epochs": args.epochs, "scvi_tools": peer_version,
                                      "rows": rows}, indent=2))
print(f"wrote {args.out}")
