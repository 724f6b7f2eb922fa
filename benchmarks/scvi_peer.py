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

**Both through their AnnData interfaces** (the default, ``--interface anndata``): ours is ``pyrovae.sc`` (
``setup_anndata``, ``SingleCellVAE(adata, ...)``, ``.train``, ``.get_marginal_ll``, ``.get_latent_representation``,
``.differential_expression``; ``LabelTransferGMVAE`` and ``.predict``), scVI's is ``scvi.model.SCVI`` /
``SCANVI``, on the same AnnData objects. Beside the per-likelihood rows, the first likelihood's models also give
(once per run): **DE agreement**, for each cell type against the rest (change mode, delta 0.25), the share of the
top-50 up-regulated genes (by mean log-fold change, Bayes factor >= 3) that both models name; **label transfer**
on each of ``--label-datasets`` (PBMC 3k by default), labels hidden for a seeded half of the training cells, our
``LabelTransferGMVAE`` against scANVI from a scVI trained on the same cells, both ``--label-epochs`` epochs, and a
linear probe (logistic regression on 50 principal components of the log-normalised counts, fitted on the known
half), accuracy on the hidden cells; and **batch mixing** on the CellBench CEL-seq2 and
Drop-seq cell lines (2,000 HVG of the two, the technology as the batch): iLISI, batch ASW and the cell-line ARI of
KMeans on the latent, for ``SingleCellVAE(batch_key=...)`` and ``SCVI(batch_key=...)`` with the same settings, and
their median seconds per epoch on these dense counts (a third of a batch's entries are non-zero).
``--certified`` also scores our held-out cells with ``proposal="auto"`` (slow on a CPU: AIS for the cells the
refined proposal does not certify). ``--interface functional`` runs ours through the functional API instead (the
protocol of the table recorded on 2026-12-02); ``--parts`` measures only some of rows, de, labels, mixing. For the
mixing, our encoder does not see the batch (``encode_covariates=False``), as scVI's does not by default.

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
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

import pyrovae.sc as psc
from pyrovae.data import SHARED_SETS, CountData, find_dataset, load_count_dataset
from pyrovae.infer import clustering_scores, encode_data, kmeans_clusters, log_likelihood, markers, train
from pyrovae.metrics import batch_asw, ilisi

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--genes", nargs="+", default=["all", "hvg"], choices=["all", "hvg"])
parser.add_argument("--likelihoods", nargs="+", default=["nb", "zinb", "poisson"])
parser.add_argument("--epochs", type=int, default=200)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--dropout", type=float, default=0.2, help="dropout of encoder and decoder hidden layers")
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--data-dir", default=None)
parser.add_argument("--interface", choices=["anndata", "functional"], default="anndata",
                    help="ours through pyrovae.sc's AnnData models (as scVI through its own) or the functional API")
parser.add_argument("--label-epochs", type=int, default=60, help="epochs of the label-transfer models")
parser.add_argument("--certified", action="store_true", help="also our held-out LL with proposal='auto'")
PARTS = ["rows", "de", "labels", "mixing"]
parser.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS,
                    help="what to measure: the per-likelihood rows, DE agreement (needs the rows), label transfer, "
                         "batch mixing")
parser.add_argument("--label-datasets", nargs="+", default=["pbmc3k"], choices=sorted(SHARED_SETS),
                    help="data sets of the label-transfer comparison (PBMC 3k: the 2,000 HVG of --genes hvg; the "
                         "others: their 2,000 most variable genes)")
parser.add_argument("--label-seeds", type=int, default=1,
                    help="label transfer repeated with this many seeds (--seed, --seed + 1, ...: a new hidden half "
                         "and new model seeds each), reported as means with standard errors over seeds")
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


PLAN = {"lr": 1e-3, "eps": 1e-8, "weight_decay": 0.0, "n_epochs_kl_warmup": None, "n_steps_kl_warmup": None}
SCVI_OPTIONS = dict(n_hidden=128, n_latent=10, n_layers=1, dispersion="gene")


def scvi_fit(adata, likelihood: str, epochs: int, seed: int | None = None, **setup):
    """scVI on ``adata`` (set up here, with ``setup``) with our settings, seeded with ``seed`` (``--seed`` when
    None); the model and its median s/epoch."""

    class EpochTimer(Callback):
        def __init__(self):
            self.seconds, self.started = [], None

        def on_train_epoch_start(self, trainer, module):
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.seconds.append(time.perf_counter() - self.started)

    scvi.settings.seed = args.seed if seed is None else seed
    scvi.model.SCVI.setup_anndata(adata, layer="counts", **setup)
    peer = scvi.model.SCVI(adata, dropout_rate=args.dropout, gene_likelihood=likelihood, **SCVI_OPTIONS)
    timer = EpochTimer()
    peer.train(max_epochs=epochs, batch_size=128, train_size=1.0, early_stopping=False, accelerator="cpu",
               enable_progress_bar=False, callbacks=[timer], plan_kwargs=PLAN)
    return peer, float(np.median(timer.seconds))


def run_scvi(train_cells, test_cells, data, likelihood: str) -> tuple[dict, object]:
    """scVI on the same cells and settings (see the module docstring): its test LL, s/epoch and ARI, and the model."""
    adata_train, adata_test, adata_all = (c.to_anndata() for c in (train_cells, test_cells, data))
    peer, seconds = scvi_fit(adata_train, likelihood, args.epochs)
    for adata in (adata_test, adata_all):
        scvi.model.SCVI.setup_anndata(adata, layer="counts")
    ll = peer.get_marginal_ll(adata_test, n_mc_samples=100)
    latent = peer.get_latent_representation(adata_all)
    ari = clustering_scores(data.labels, kmeans_clusters(latent, len(data.label_names), seed=0))["ari"]
    return {"scvi_ll": float(ll), "scvi_seconds": seconds, "scvi_ari": ari}, (peer, adata_all)


def run_ours_functional(train_cells, test_cells, data, name: str) -> tuple[dict, None]:
    """Ours through the functional API: VAE + NormalGuide, ``train``, ``log_likelihood``, ``encode_data``."""
    pyro.set_rng_seed(args.seed)
    model = VAE(data.num_genes, 10, [128], likelihood=name, batch_norm=True, dropout=args.dropout)
    guide = NormalGuide(data.num_genes, 10, [128], input_transform="log1p", batch_norm=True, dropout=args.dropout)
    history = train(model, guide, train_cells, epochs=args.epochs, batch_size=128, eval_size=0, seed=args.seed,
                    progress=False)
    ll = log_likelihood(model, guide, test_cells, num_samples=100)
    latent = encode_data(guide, data)  # in evaluation mode: no dropout, batch norm's running statistics
    return _row(history, ll, latent, data), None


def run_ours_anndata(train_cells, test_cells, data, name: str) -> tuple[dict, tuple]:
    """Ours through pyrovae.sc: the AnnData of the training cells registered once, the rest read through it."""
    adata_train, adata_test, adata_all = (c.to_anndata() for c in (train_cells, test_cells, data))
    psc.setup_anndata(adata_train, layer="counts")
    pyro.set_rng_seed(args.seed)
    model = psc.SingleCellVAE(adata_train, latent_dim=10, hidden=[128], likelihood=name, dropout=args.dropout)
    history = model.train(args.epochs, batch_size=128, lr=1e-3, seed=args.seed, progress=False, eval_size=0)
    ll = model.get_marginal_ll(adata_test, num_samples=100, proposal="guide")
    row = _row(history, ll, model.get_latent_representation(adata_all), data)
    if args.certified:
        started = time.perf_counter()
        certified = model.get_marginal_ll(adata_test, num_samples=100, proposal="auto")
        row.update({"test_ll_auto": certified.mean, "test_ll_auto_stderr": certified.stderr,
                    "frac_certified_auto": float(certified.certified.float().mean()),
                    "seconds_auto": time.perf_counter() - started})
    return row, (model, adata_all)


def _row(history, ll, latent, data) -> dict:
    ari = clustering_scores(data.labels, kmeans_clusters(latent, len(data.label_names), seed=0))["ari"]
    return {"test_ll": ll.mean, "test_ll_stderr": ll.stderr, "frac_khat_gt_0.7": float((ll.khat > 0.7).float().mean()),
            "seconds_per_epoch": float(np.median([r["seconds"] for r in history.records])), "ari": ari}


def de_agreement(ours, theirs, data) -> dict:
    """Per cell type against the rest: the share of the top-50 up genes that both models name (of the shorter list:
    either may pass fewer than 50 genes through the filter)."""
    model, adata = ours
    peer, peer_adata = theirs
    shared = {}
    for kind in data.label_names:
        mine = markers(model.differential_expression(kind, groupby=data.label_key, adata=adata, mode="change",
                                                     delta=0.25, seed=args.seed), top=50)
        other = markers(peer.differential_expression(peer_adata, groupby=data.label_key, group1=kind, mode="change",
                                                     delta=0.25), top=50)
        shortest = min(len(mine), len(other))
        shared[kind] = len(set(mine.index) & set(other.index)) / shortest if shortest else None
        print(f"  DE {kind:>18}: top-50 up genes shared {shared[kind] if shortest else 'undefined'} "
              f"(ours {len(mine)}, scVI {len(other)})", flush=True)
    values = [v for v in shared.values() if v is not None]
    return {"de_top50_shared": shared, "de_top50_shared_mean": float(np.mean(values)) if values else None}


def label_transfer(train_cells, seed: int) -> dict:
    """Labels hidden for a half of the training cells drawn with ``seed``: LabelTransferGMVAE against scANVI (from
    scVI) and a linear probe (logistic regression on 50 principal components of log1p(10^4 x / total), fitted on the
    known half); the models are seeded with ``seed`` too."""
    rng = np.random.default_rng(seed)
    hidden = rng.permutation(len(train_cells)) < len(train_cells) // 2
    truth = np.asarray(train_cells.label_names)[train_cells.labels.numpy()]
    adata = train_cells.to_anndata()
    adata.obs["partial"] = np.where(hidden, "Unknown", truth)
    psc.setup_anndata(adata, layer="counts", labels_key="partial")
    pyro.set_rng_seed(seed)
    ours = psc.LabelTransferGMVAE(adata, latent_dim=10, hidden=[128], likelihood="nb")
    ours.train(args.label_epochs, batch_size=128, lr=1e-3, seed=seed, progress=False, eval_size=0)
    accuracy = float((np.asarray(ours.predict(), dtype=str)[hidden] == truth[hidden]).mean())
    counts = train_cells.counts.toarray()
    components = PCA(min(50, min(counts.shape) - 1), random_state=seed)
    pcs = components.fit_transform(np.log1p(counts / counts.sum(1, keepdims=True) * 1e4))
    probe = LogisticRegression(max_iter=2000).fit(pcs[~hidden], truth[~hidden])
    result = {"accuracy": accuracy, "hidden_cells": int(hidden.sum()),
              "probe_accuracy": float((probe.predict(pcs[hidden]) == truth[hidden]).mean())}
    if scvi is not None:
        peer_adata = train_cells.to_anndata()
        peer_adata.obs["partial"] = adata.obs["partial"].to_numpy()
        peer, _ = scvi_fit(peer_adata, "nb", args.epochs, seed, labels_key="partial")
        scanvi = scvi.model.SCANVI.from_scvi_model(peer, unlabeled_category="Unknown")
        scanvi.train(max_epochs=args.label_epochs, batch_size=128, train_size=1.0, early_stopping=False,
                     plan_kwargs=PLAN, enable_progress_bar=False, accelerator="cpu")
        predicted = np.asarray(scanvi.predict(), dtype=str)
        result["scanvi_accuracy"] = float((predicted[hidden] == truth[hidden]).mean())
    print(f"  label transfer on {train_cells.name}, seed {seed}, {int(hidden.sum())} hidden training cells: ours "
          f"{accuracy:.3f}, linear probe {result['probe_accuracy']:.3f}"
          + (f", scANVI {result['scanvi_accuracy']:.3f}" if scvi is not None else ""), flush=True)
    return result


def summarise_seeds(runs: list[dict], seeds: list[int]) -> dict:
    """One seed's result as it is; several: the mean of each accuracy, its standard error over seeds, the
    per-seed values, and the mean difference ours - probe and ours - scANVI with the standard error of the paired
    differences (the same hidden cells for all three in each seed)."""
    if len(runs) == 1:
        return runs[0]
    summary = {"seeds": seeds, "hidden_cells": [run["hidden_cells"] for run in runs]}
    for key in ("accuracy", "probe_accuracy", "scanvi_accuracy"):
        if key in runs[0]:
            values = np.array([run[key] for run in runs])
            summary[key] = float(values.mean())
            summary[key + "_se"] = float(values.std(ddof=1) / np.sqrt(len(values)))
            summary[key + "_per_seed"] = values.tolist()
    for other in ("probe", "scanvi"):
        if f"{other}_accuracy_per_seed" in summary:
            gaps = np.array(summary["accuracy_per_seed"]) - np.array(summary[f"{other}_accuracy_per_seed"])
            summary[f"minus_{other}"] = float(gaps.mean())
            summary[f"minus_{other}_se"] = float(gaps.std(ddof=1) / np.sqrt(len(gaps)))
    return summary


def batch_mixing() -> dict:
    """CellBench CEL-seq2 + Drop-seq, the technology as the batch: iLISI, batch ASW and cell-line ARI of the latent."""
    parts = {"CEL-seq2": "cellbench_celseq2", "Drop-seq": "cellbench_dropseq"}
    parts = {name: load_count_dataset(key, args.data_dir).without_covariates() for name, key in parts.items()}
    cells = CountData.concatenate(parts, batch_key="batch", label_key="cell_line_demuxlet", name="technologies")
    cells = cells.prepare(num_genes=2000, seed=args.seed)
    lines, batches = cells.obs["cell_line_demuxlet"].astype(str).to_numpy(), cells.obs["batch"].astype(str).to_numpy()

    def scores(latent, prefix):
        ari = clustering_scores(lines, kmeans_clusters(latent, len(np.unique(lines)), seed=0))["ari"]
        return {f"{prefix}mixing_ilisi": ilisi(latent, batches),
                f"{prefix}mixing_batch_asw": batch_asw(latent, batches, lines), f"{prefix}mixing_ari": ari}

    adata = cells.to_anndata()
    psc.setup_anndata(adata, layer="counts", batch_key="batch")
    pyro.set_rng_seed(args.seed)
    # scVI's encoder does not see the batch by default (encode_covariates=False): ours the same
    ours = psc.SingleCellVAE(adata, latent_dim=10, hidden=[128], likelihood="nb", dropout=args.dropout,
                             encode_covariates=False)
    history = ours.train(args.epochs, batch_size=128, lr=1e-3, seed=args.seed, progress=False, eval_size=0)
    result = scores(ours.get_latent_representation(), "")
    result["mixing_seconds_per_epoch"] = float(np.median([r["seconds"] for r in history.records]))
    if scvi is not None:
        peer_adata = cells.to_anndata()
        peer, seconds = scvi_fit(peer_adata, "nb", args.epochs, batch_key="batch")
        result.update(scores(peer.get_latent_representation(peer_adata), "scvi_"))
        result["scvi_mixing_seconds_per_epoch"] = seconds
    print("  batch mixing (CellBench technologies): " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()),
          flush=True)
    return result


cells = load_count_dataset("pbmc3k", args.data_dir)


def pbmc_genes(genes: str) -> CountData:
    """PBMC 3k on all its genes or on the 2,000 HVG of ``hvg2000.tsv``."""
    if genes == "all":
        return cells
    return cells.select_genes(pd.read_csv(find_dataset("pbmc3k", args.data_dir) / "hvg2000.tsv", header=None)[0])


rows, extras = [], {}
run_ours = run_ours_anndata if args.interface == "anndata" else run_ours_functional
extras_wanted = args.interface == "anndata"
for genes in args.genes if "rows" in args.parts else []:
    data = pbmc_genes(genes)
    train_cells, test_cells = data.split(0.81, seed=0)
    for name in args.likelihoods:
        row, ours = run_ours(train_cells, test_cells, data, name)
        row = {"genes": genes, "likelihood": name, **row}
        seconds, ari = row["seconds_per_epoch"], row["ari"]
        theirs = None
        if scvi is not None:
            peer, theirs = run_scvi(train_cells, test_cells, data, name)
            row.update(peer)
            row["ll_met"] = row["test_ll"] >= peer["scvi_ll"]
            row["speed_ratio"] = seconds / peer["scvi_seconds"]
            row["ari_met"] = ari >= peer["scvi_ari"]
        rows.append(row)
        versus = (f" (scVI {row['scvi_ll']:9.2f}, {'met' if row['ll_met'] else 'NOT met'}), s/epoch {seconds:5.2f} "
                  f"(scVI {row['scvi_seconds']:.2f}, ratio {row['speed_ratio']:.2f}), ARI {ari:.3f} (scVI "
                  f"{row['scvi_ari']:.3f})") if scvi is not None else f", s/epoch {seconds:5.2f}, ARI {ari:.3f}"
        certified = (f"; proposal='auto' {row['test_ll_auto']:.2f}, {row['frac_certified_auto']:.1%} certified"
                     if "test_ll_auto" in row else "")
        print(f"{genes:>4} {name:>8}: test LL/cell {row['test_ll']:9.2f}{versus}, k-hat>0.7 "
              f"{row['frac_khat_gt_0.7']:.1%}{certified}", flush=True)
        first = genes == args.genes[0] and name == args.likelihoods[0]
        if extras_wanted and first and "de" in args.parts and theirs is not None:
            extras.update(de_agreement(ours, theirs, data))
if extras_wanted and "labels" in args.parts:
    extras["label_transfer"] = {}
    for name in args.label_datasets:
        labelled = (pbmc_genes(args.genes[0]) if name == "pbmc3k" else
                    load_count_dataset(name, args.data_dir).prepare(num_genes=2000, seed=args.seed))
        seeds, training_cells = range(args.seed, args.seed + args.label_seeds), labelled.split(0.81, seed=0)[0]
        runs = [label_transfer(training_cells, seed) for seed in seeds]
        extras["label_transfer"][name] = summarise_seeds(runs, list(seeds))
if extras_wanted and "mixing" in args.parts:
    extras.update(batch_mixing())

Path(args.out).parent.mkdir(parents=True, exist_ok=True)
machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
peer_version = getattr(scvi, "__version__", None)
Path(args.out).write_text(json.dumps({"machine": machine, "epochs": args.epochs, "scvi_tools": peer_version,
                                      "interface": args.interface, "parts": args.parts, "rows": rows, **extras},
                                     indent=2))
print(f"wrote {args.out}")
