"""Reference mapping on CellBench: map queries onto a frozen reference and transfer the cell lines.

Train on one technology (or plate; ``--reference`` picks other parts), map the others onto it frozen, transfer the
cell lines, and compare with one model trained on everything at once.

* ``--dataset technologies``: reference CEL-seq2, query Drop-seq (three lung cancer cell lines);
* ``--dataset plates``: reference CEL-seq2 ``5cl`` plate 1, queries plates 2 and 3 (five cell lines);
* ``--dataset halves``: a null control: the three plates pooled and split at random into "half A" (the reference)
  and "half B" (the query), so that the query has no batch effect to correct; what the mapping loses to joint
  training there is the method's, not the data's (``--map-epochs 0``: the query encoded as half A, unmapped);
* ``--dataset synthetic``: generated counts (three cell types with marker genes, three batches with gene-wise
  batch effects), for smoke runs without the data.

The reference's most variable genes are kept for every part (a reference fixes the genes). Each kind (``--kinds``)
is built with the library's defaults (NB likelihood, one hidden layer of 128, latent 10, batch norm, dropout 0.1):
``vae``, a SingleCellVAE whose labels are transferred by a vote of the 15 nearest reference cells in the latent,
and ``label_transfer``, a LabelTransferGMVAE whose classifier labels the query. For each:

* **reference**: trained on the reference part, its cell lines known (``--epochs``);
* **mapped**: the queries mapped onto it with ``pyrovae.sc.map_query`` (``--map-epochs``), the reference frozen,
  labels by ``pyrovae.sc.transfer_labels``;
* **everything**: the same model trained on all parts at once (``--epochs``), the query's cell lines hidden;
  labels from its classifier, or by the same vote.

With ``--peer`` the same reference, queries and everything model are also run with scvi-tools' scArches
(``SCVI`` with scArches' recommended architecture: layer norm, no batch norm, dropout 0.2, covariates encoded;
``SCVI.load_query_data`` for the mapping), with our optimiser settings (Adam, no KL warm-up, no weight decay; the
reference and everything model at 1e-3, the mapping at ``--map-lr``) and labels by the same nearest-neighbour vote.

Scores: label accuracy on the query cells; mixing of the reference and query latents (iLISI and batch ASW by cell
line; 1 is perfectly mixed); seconds of mapping against seconds of training on everything. Figure: t-SNE of the
latents by batch and by cell line, mapped and everything, for each kind.

Resumable: each kind's scores and latents (and scArches') are kept in ``OUT/runs.json`` as it finishes, so an
interrupted run goes on with the next kind and a rerun with more ``--kinds`` (or ``--peer``) runs only those; a
rerun with other settings is refused.
"""

import logging
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.manifold import TSNE

import pyrovae.sc as sc
from pyrovae.data import CountData, load_count_dataset
from pyrovae.experiment import (
    experiment_parser,
    non_negative_int,
    positive_float,
    positive_int,
    result_settings,
    setup,
    write_metrics,
)
from pyrovae.metrics import batch_asw, ilisi
from pyrovae.optional import require
from pyrovae.plots import save
from pyrovae.sweep import Sweep

PARTS = {
    "technologies": {"CEL-seq2": "cellbench_celseq2", "Drop-seq": "cellbench_dropseq"},
    "plates": {"plate 1": "cellbench_5cl_p1", "plate 2": "cellbench_5cl_p2", "plate 3": "cellbench_5cl_p3"},
    "synthetic": {"batch 1": None, "batch 2": None, "batch 3": None},
}
HALVES = ("half A", "half B")  # --dataset halves: the plates pooled, split at random
KINDS = {"vae": sc.SingleCellVAE, "label_transfer": sc.LabelTransferGMVAE}
parser = experiment_parser(__doc__, epochs=200, out="results/reference_mapping",
                           quick={"epochs": 2, "map_epochs": 2, "genes": 200}, proposal=False)
parser.add_argument("--dataset", choices=sorted([*PARTS, "halves"]), default="technologies",
                    help="technologies: CEL-seq2, Drop-seq; plates: CEL-seq2 5cl plates; halves: the plates pooled and "
                         "split at random (a null control); synthetic: generated counts")
parser.add_argument("--reference", nargs="+", default=None, metavar="PART",
                    help="the parts the reference is trained on (default: the first: CEL-seq2, plate 1, batch 1); "
                         "the others are mapped onto it")
parser.add_argument("--map-epochs", type=non_negative_int, default=50, help="epochs of mapping the queries")
parser.add_argument("--map-lr", type=positive_float, default=1e-2, help="learning rate of the new batches' weights")
parser.add_argument("--genes", type=non_negative_int, default=2000, help="most variable genes of the reference kept")
parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS),
                    help="vae: SingleCellVAE (labels by a nearest-neighbour vote); label_transfer: LabelTransferGMVAE")
parser.add_argument("--latent", type=positive_int, default=10, help="latent dimension")
parser.add_argument("--hidden", type=positive_int, default=128, help="width of the one hidden layer")
parser.add_argument("--batch-size", type=positive_int, default=128,
                    help="cells per training batch (also of the mapping)")
parser.add_argument("--batch-norm", nargs="+", default=["reference"], choices=["reference", "query"],
                    help="statistics of the mapped model's batch normalisation (map_query's batch_norm): the "
                         "reference's, the query's own (AdaBN), or both, each mapping from the same reference")
parser.add_argument("--early-stopping", action="store_true",
                    help="train the reference and the everything model on 90%% of their cells, stopping when the "
                         "other 10%% stop improving (patience 45 epochs, at most --epochs; the best epoch kept)")
parser.add_argument("--feature-batch-norm", action="store_true",
                    help="the label-transfer GMVAE with batch norm on its guide's features too (feature_batch_norm), "
                         "so that --batch-norm query adapts its classifier to the query")
parser.add_argument("--peer", action="store_true",
                    help="also scvi-tools' scArches (SCVI, load_query_data) on the same split and settings "
                         "(pip install -e '.[peer]')")
args = parser.parse_args()
device = setup(args)
if args.peer:
    require("scvi")  # before any training: an ImportError naming the extra that installs it


def generated_part(batch: int, num_cells: int = 150, num_genes: int = 300) -> CountData:
    """Three cell types with 20 marker genes each; the batch scales every gene by its own log-normal factor."""
    rng = np.random.default_rng(args.seed + batch)
    types = rng.integers(0, 3, num_cells)
    rates = np.full((3, num_genes), 0.5)
    for k in range(3):
        rates[k, 20 * k:20 * (k + 1)] = 6.0
    effect = np.random.default_rng(100 + batch).lognormal(0.0, 0.5, num_genes)
    counts = rng.poisson(rates[types] * effect * rng.lognormal(0.0, 0.3, (num_cells, 1)))
    obs = pd.DataFrame({"cell_line_demuxlet": np.array(["A", "B", "C"])[types]},
                       index=[f"b{batch}_cell{i}" for i in range(num_cells)])
    return CountData(counts, obs, pd.DataFrame(index=[f"gene{j}" for j in range(num_genes)]), "cell_line_demuxlet")


source = PARTS["plates" if args.dataset == "halves" else args.dataset]
names = HALVES if args.dataset == "halves" else tuple(source)
reference_names = args.reference or [names[0]]
if not set(reference_names) < set(names):
    parser.error(f"--reference takes some of the parts {list(names)} (the others are the queries), "
                 f"got {reference_names}")
reference_name = " + ".join(reference_names)
parts = {name: generated_part(b) if key is None else load_count_dataset(key, args.data_dir).without_covariates()
         for b, (name, key) in enumerate(source.items())}
cells = CountData.concatenate(parts, batch_key="part", label_key="cell_line_demuxlet").prepare(seed=args.seed)
if args.dataset == "halves":  # the null control: two random halves of the same cells as the "batches"
    cells = cells.without_covariates()  # "part" becomes a plain column, relabelled here
    cells.obs["part"] = np.where(np.random.default_rng(args.seed).permutation(len(cells)) < len(cells) // 2, *HALVES)
is_reference = cells.obs["part"].isin(reference_names).to_numpy()
genes = cells.subset(cells=is_reference).highly_variable_genes(min(args.genes, cells.num_genes))
cells = cells.subset(genes=np.sort(genes)).filter_cells(min_counts=1)
is_reference = cells.obs["part"].isin(reference_names).to_numpy()
adata = cells.to_anndata()
lines = adata.obs["cell_line_demuxlet"].astype(str).to_numpy()
batches = adata.obs["part"].astype(str).to_numpy()
adata.obs["reference_line"] = np.where(is_reference, lines, "Unknown")  # the query's cell lines are hidden
reference_adata, query_adata = adata[is_reference].copy(), adata[~is_reference].copy()
print(f"{cells}; reference {reference_name} ({is_reference.sum()} cells), queries "
      f"{sorted(set(batches[~is_reference]))} ({(~is_reference).sum()} cells)")

train_options = dict(batch_size=args.batch_size, seed=args.seed, device=device, progress=not args.no_progress)
model_options = dict(latent_dim=args.latent, hidden=(args.hidden,), likelihood="nb")


def trained(cls, data):
    sc.setup_anndata(data, layer="counts", batch_key="part", labels_key="reference_line")
    extra = {"feature_batch_norm": True} if args.feature_batch_norm and cls is sc.LabelTransferGMVAE else {}
    model = cls(data, **model_options, **extra)
    started = time.perf_counter()
    stopping = {"train_size": 0.9, "early_stopping": True} if args.early_stopping else {}
    model.train(epochs=args.epochs, **stopping, **train_options)
    return model, time.perf_counter() - started


def scores(latent, labels) -> dict:
    """Accuracy on the query cells, mixing of all cells (``latent`` in ``adata``'s cell order)."""
    return {"query_accuracy": float(np.mean(np.asarray(labels, dtype=str) == lines[~is_reference])),
            "ilisi": ilisi(latent, batches), "batch_asw": batch_asw(latent, batches, lines)}


def joined(reference_latent, query_latent) -> np.ndarray:
    """The reference's and the query's latents as one array in ``adata``'s cell order."""
    latent = np.empty((adata.n_obs, reference_latent.shape[1]), dtype=np.float32)
    latent[is_reference], latent[~is_reference] = reference_latent, query_latent
    return latent


def vote(latent):
    """The query's cell lines by a vote of their 15 nearest reference cells in ``latent`` (``adata``'s order)."""
    return sc.nearest_neighbor_labels(latent[is_reference], lines[is_reference], latent[~is_reference])["label"]


def report(kind: str, name: str, row: dict) -> None:
    print(f"{kind:>14} {name:>10}: query accuracy {row['query_accuracy']:.3f}, iLISI {row['ilisi']:.3f}, "
          f"batch ASW {row['batch_asw']:.3f}; {row['seconds']:.1f} s")


def compare(kind: str) -> dict:
    """Reference, mapped queries and the everything model of ``kind``: their scores and latents (JSON-able)."""
    reference, reference_seconds = trained(KINDS[kind], reference_adata)
    maps = {}
    for statistics in args.batch_norm:  # "mapped" the first, "mapped (query BN)" etc. the others
        started = time.perf_counter()
        mapped = reference.map_query(query_adata, batch_norm=statistics, epochs=args.map_epochs, lr=args.map_lr,
                                     **train_options)
        mapping_seconds = time.perf_counter() - started
        latent = joined(reference.get_latent_representation(), mapped.get_latent_representation())
        name = "mapped" if not maps else f"mapped ({statistics} BN)"
        maps[name] = {**scores(latent, sc.transfer_labels(reference, mapped)), "seconds": mapping_seconds,
                      "epochs": len(mapped.history), "batch_norm": statistics}, latent

    everything, everything_seconds = trained(KINDS[kind], adata.copy())
    combined = everything.get_latent_representation()
    everything_labels = everything.predict()[~is_reference] if kind == "label_transfer" else vote(combined)
    result = {
        **{name: row for name, (row, _) in maps.items()},
        "everything": {**scores(combined, everything_labels), "seconds": everything_seconds,
                       "epochs": len(everything.history)},
        "reference_seconds": reference_seconds,
    }
    result["time_ratio"] = result["mapped"]["seconds"] / everything_seconds
    latent_of = {**{name: latent for name, (_, latent) in maps.items()}, "everything": combined}
    return {"results": result, "latents": {name: np.asarray(v).tolist() for name, v in latent_of.items()}}


def kept(key: str, fn) -> None:
    """``fn()``'s results and latents under ``key``, or what an earlier run of the same settings kept of them."""
    stored = sweep.run(key, fn)
    results[key] = stored["results"]
    latents[key] = {name: np.asarray(v, dtype=np.float32) for name, v in stored["latents"].items()}


# each kind's results and latents kept as it finishes: an interrupted run goes on with the next, other settings refused
sweep = Sweep(Path(args.out) / "runs.json", settings=result_settings(args, exclude=("kinds", "peer")))
results, latents = {}, {}
for kind in args.kinds:
    kept(kind, lambda kind=kind: compare(kind))
    for name in [*latents[kind].keys()]:
        report(kind, name, results[kind][name])
    print(f"{kind:>14}: mapping took {results[kind]['time_ratio']:.2f} of training on everything "
          f"(reference {results[kind]['reference_seconds']:.1f} s)")


def scvi_fit(data, epochs: int, lr: float, reference=None):
    """scvi-tools' SCVI trained on ``data`` (a query mapped onto ``reference`` when given) and its seconds, timed as
    ours: a model's training from after its construction, a mapping's from ``load_query_data`` on. A query trains
    on all its cells (as ``map_query`` here), the reference and the everything model as ``--early-stopping`` says
    (scvi-tools' early stopping does not go back to the best epoch, ours does)."""
    scvi = require("scvi")
    scvi.settings.seed = args.seed
    if reference is None:
        scvi.model.SCVI.setup_anndata(data, layer="counts", batch_key="part")
        fitted = scvi.model.SCVI(data, n_hidden=args.hidden, n_latent=args.latent, n_layers=1, gene_likelihood="nb",
                                 use_layer_norm="both", use_batch_norm="none", encode_covariates=True,
                                 dropout_rate=0.2)
        started = time.perf_counter()
    else:
        started = time.perf_counter()
        fitted = scvi.model.SCVI.load_query_data(data, reference)
    stopping = {"train_size": 0.9, "early_stopping": True, "early_stopping_patience": 45} \
        if args.early_stopping and reference is None else {"train_size": 1.0}
    hardware = {"accelerator": "cpu"} if device.type == "cpu" else {"accelerator": "gpu",
                                                                    "devices": [device.index or 0]}
    fitted.train(max_epochs=epochs, batch_size=args.batch_size, enable_progress_bar=not args.no_progress, **hardware,
                 **stopping, plan_kwargs={"lr": lr, "eps": 1e-8, "weight_decay": 0.0, "n_epochs_kl_warmup": None,
                                          "n_steps_kl_warmup": None})
    return fitted, time.perf_counter() - started


def compare_peer() -> dict:
    """scvi-tools' scArches on the same split: scores and latents (JSON-able)."""
    peer_reference, reference_seconds = scvi_fit(reference_adata.copy(), args.epochs, 1e-3)
    peer_mapped, mapping_seconds = scvi_fit(query_adata.copy(), args.map_epochs, args.map_lr, peer_reference)
    latent = joined(peer_reference.get_latent_representation(), peer_mapped.get_latent_representation())
    peer_everything, everything_seconds = scvi_fit(adata.copy(), args.epochs, 1e-3)
    combined = peer_everything.get_latent_representation()
    result = {"mapped": {**scores(latent, vote(latent)), "seconds": mapping_seconds},
              "everything": {**scores(combined, vote(combined)), "seconds": everything_seconds},
              "reference_seconds": reference_seconds, "time_ratio": mapping_seconds / everything_seconds}
    return {"results": result, "latents": {"mapped": latent.tolist(), "everything": np.asarray(combined).tolist()}}


if args.peer:
    for noisy in ("scvi", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    kept("scvi_tools", compare_peer)
    for name in ("mapped", "everything"):
        report("scvi_tools", name, results["scvi_tools"][name])

panels = [(kind, name) for kind in latents for name in latents[kind]]
fig, axes = plt.subplots(2, len(panels), figsize=(4.5 * len(panels), 8.5), squeeze=False)
for column, (kind, name) in enumerate(panels):
    latent = latents[kind][name]
    embedding = TSNE(init="pca", random_state=args.seed, perplexity=min(30, len(latent) // 4)).fit_transform(latent)
    for row, (values, what) in enumerate(((batches, "batch"), (lines, "cell line"))):
        ax = axes[row, column]
        for k, value in enumerate(sorted(set(values))):
            ax.scatter(*embedding[values == value].T, s=5, color=f"C{k}", label=value)
        ax.set(xticks=[], yticks=[], title=f"{kind}, {name}, by {what}")
        if column == 0:
            ax.legend(markerscale=3, fontsize=8)
    row = results[kind][name]
    axes[0, column].set_title(f"{kind}, {name}\naccuracy {row['query_accuracy']:.3f}, iLISI {row['ilisi']:.2f}, "
                              f"{row['seconds']:.0f} s")
save(fig, f"{args.out}/reference_mapping_tsne.png")
write_metrics(args.out, {"dataset": args.dataset, "reference": reference_name, "cells": int(adata.n_obs),
                         "reference_cells": int(is_reference.sum()), "genes": int(adata.n_vars),
                         "queries": sorted(set(batches[~is_reference])), "results": results}, args)
