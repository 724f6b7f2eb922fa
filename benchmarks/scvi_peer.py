"""pyrovae's count VAEs against scvi-tools' SCVI on PBMC 3k, on the protocol of issue 5.

Protocol: PBMC 3k raw UMI counts (2,638 cells), all 13,714 genes or the 2,000 HVG of ``hvg2000.tsv``;
split ``numpy.random.default_rng(0).permutation``, the first round(0.81 n) cells train, the rest (501)
test; latent 10, one hidden layer of 128, batch 128, 200 epochs, Adam 1e-3, observed library size, KL
weight 1 throughout; encoder input log1p(x); batch norm and dropout 0.2 on the hidden layer of encoder
and decoder (scVI uses batch norm and dropout 0.1 in its encoder). Reported per likelihood: test
log-likelihood per cell (mean over test cells of a 100-sample importance estimate of log p(x | library),
normalising constants included, with k-hat), seconds per training epoch (training only), and the ARI of
KMeans (k = number of cell types, n_init 10, seed 0) on the latent means of all cells against the types.

The baseline is scvi-tools 1.4.2 (SCVI, dispersion per gene, its defaults), measured by the issue's author
on this kind of machine (2 cores, torch 2.13 CPU) on the same protocol: scvi-tools is not installed here,
so its figures are constants below, and the ratios compare against them.

    python benchmarks/scvi_peer.py [--genes all hvg] [--likelihoods nb zinb poisson] [--epochs 200]
"""

import argparse
import json
import platform
import time
from pathlib import Path

import pandas as pd
import pyro
import torch
from pyrovae.guides import NormalGuide
from pyrovae.models import VAE

from pyrovae.data import find_dataset, load_count_dataset
from pyrovae.infer import clustering_scores, encode_data, kmeans_clusters, log_likelihood, train

# scvi-tools 1.4.2: test LL/cell with its KL warm-up, without warm-up, s/epoch, ARI (warm-up, none)
SCVI = {
    ("all", "nb"): (-2917.63, -2911.21, 1.68, 0.558, 0.527),
    ("all", "zinb"): (-2938.22, -2938.21, 2.38, 0.545, 0.458),
    ("all", "poisson"): (-3039.34, -3032.04, 0.92, 0.562, 0.549),
    ("hvg", "nb"): (-696.64, -690.40, 0.29, 0.553, 0.535),
    ("hvg", "zinb"): (-699.15, -691.50, 0.38, 0.543, 0.509),
    ("hvg", "poisson"): (-780.89, -774.86, 0.19, 0.546, 0.586),
}

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
        seconds = sum(r["seconds"] for r in history.records) / len(history.records)
        started = time.perf_counter()
        ll = log_likelihood(model, guide, test_cells, num_samples=100)
        ll_seconds = time.perf_counter() - started
        latent = encode_data(guide, data)  # in evaluation mode: no dropout, batch norm's running statistics
        ari = clustering_scores(data.labels, kmeans_clusters(latent, len(data.label_names), seed=0))["ari"]
        warm, cold, scvi_seconds, scvi_ari_warm, scvi_ari_cold = SCVI[(genes, name)]
        row = {
            "genes": genes, "likelihood": name, "test_ll": ll.mean, "test_ll_stderr": ll.stderr,
            "frac_khat_gt_0.7": float((ll.khat > 0.7).float().mean()), "seconds_per_epoch": seconds, "ari": ari,
            "ll_seconds": ll_seconds, "scvi_best_ll": max(warm, cold), "scvi_seconds": scvi_seconds,
            "scvi_best_ari": max(scvi_ari_warm, scvi_ari_cold),
        }
        row["ll_met"] = row["test_ll"] >= row["scvi_best_ll"]
        row["speed_ratio"] = seconds / scvi_seconds
        row["ari_met"] = ari >= row["scvi_best_ari"]
        rows.append(row)
        print(f"{genes:>4} {name:>8}: test LL/cell {ll.mean:9.2f} (scVI best {row['scvi_best_ll']:9.2f}, "
              f"{'met' if row['ll_met'] else 'NOT met'}), s/epoch {seconds:5.2f} (scVI {scvi_seconds:.2f}, "
              f"ratio {row['speed_ratio']:.2f}), ARI {ari:.3f} (scVI best {row['scvi_best_ari']:.3f}), "
              f"k-hat>0.7 {row['frac_khat_gt_0.7']:.1%}", flush=True)

Path(args.out).parent.mkdir(parents=True, exist_ok=True)
machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
Path(args.out).write_text(json.dumps({"machine": machine, "epochs": args.epochs, "rows": rows}, indent=2))
print(f"wrote {args.out}")
