"""Data integration on CellBench: the same cell lines measured by two technologies, or on three plates.

* ``--dataset technologies``: CEL-seq2 and Drop-seq (three lung cancer cell lines each), technology as the batch;
* ``--dataset plates``: the three CEL-seq2 ``5cl`` plates (five cell lines), plate as the batch.

The parts are concatenated on their shared genes, and the 2,000 most variable genes kept. Models, all with an NB
likelihood, one hidden layer of 128, batch norm and dropout 0.1, and the batch as a covariate of the decoder
(scVI's architecture): a VAE (latent 10), an S-VAE (vMF guide on S^10), a GMVAE (one component per cell line),
and the VAE without the batch covariate (no integration). With scvi-tools installed (``pip install -e
".[peer]"``), scVI with ``batch_key`` in the same run: ``scvi`` with our settings (the same genes, epochs, batch
size, architecture, Adam with lr 1e-3, eps 1e-8, no weight decay, no KL warm-up) and ``scvi-defaults`` with its
own (Adam eps 0.01, weight decay 1e-6, KL warm-up over 400 epochs, so a 200-epoch run ends at KL weight 0.5).

Scores on the latent means of all cells: KMeans (k = number of cell lines) against the cell lines (ARI, NMI), and
batch mixing as scIB defines it (batch ASW, iLISI; 1 is perfectly mixed); seconds per training epoch. Figures:
t-SNE of the latent means coloured by batch and by cell line, for every model.

Resumable: each of our models is checkpointed after every epoch and each model's latent means and seconds are kept
in ``OUT/runs.json`` as it finishes (scVI's too), so an interrupted run goes on where it stopped and a rerun with more
``--models`` trains only the new ones; a rerun with other settings is refused.
"""

import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pyro
from pyrovae.guides import GMVAEGuide, NormalGuide, VMFGuide
from pyrovae.models import GMVAE, SVAE, VAE
from sklearn.manifold import TSNE

from pyrovae.data import CountData, add_results, load_count_dataset
from pyrovae.experiment import (
    experiment_parser,
    non_negative_int,
    positive_float,
    positive_int,
    result_settings,
    setup,
    write_metrics,
)
from pyrovae.infer import encode_data, train
from pyrovae.metrics import batch_asw, clustering_scores, ilisi, kmeans_clusters
from pyrovae.plots import save
from pyrovae.sweep import Sweep

PARTS = {
    "technologies": {"CEL-seq2": "cellbench_celseq2", "Drop-seq": "cellbench_dropseq"},
    "plates": {"plate 1": "cellbench_5cl_p1", "plate 2": "cellbench_5cl_p2", "plate 3": "cellbench_5cl_p3"},
}
QUICK = {"epochs": 2, "genes": 200, "models": ["vae", "vae-unintegrated"]}
parser = experiment_parser(__doc__, epochs=200, out="results/integration", quick=QUICK, proposal=False)
parser.add_argument("--dataset", choices=sorted(PARTS), default="technologies",
                    help="technologies: CEL-seq2 and Drop-seq; plates: the three CEL-seq2 5cl plates")
parser.add_argument("--genes", type=non_negative_int, default=2000, help="most variable genes kept")
MODELS = ["vae", "svae", "gmvae", "vae-unintegrated", "scvi", "scvi-defaults"]
parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS,
                    help="models compared (scvi, scvi-defaults: need scvi-tools; see the description)")
parser.add_argument("--latent", type=positive_int, default=10,
                    help="latent dimension d (the S-VAE: the sphere S^d in R^(d+1))")
parser.add_argument("--hidden", type=positive_int, default=128, help="width of the one hidden layer (scVI's too)")
parser.add_argument("--batch-size", type=positive_int, default=128, help="cells per training batch")
parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (scVI's too)")
args = parser.parse_args()
device = setup(args)

parts = {name: load_count_dataset(key, args.data_dir).without_covariates() for name, key in
         PARTS[args.dataset].items()}
# "part", not "batch": the plates hold a "batch" column of their own, which concatenate refuses to overwrite
cells = CountData.concatenate(parts, batch_key="part", label_key="cell_line_demuxlet", name=args.dataset)
cells = cells.prepare(num_genes=args.genes, seed=args.seed)
lines = cells.obs["cell_line_demuxlet"].astype(str).to_numpy()
batches = cells.obs["part"].astype(str).to_numpy()
num_lines = len(np.unique(lines))
print(f"{cells}; cell lines {sorted(set(lines))}")


# each model's latent and seconds kept as it finishes, its training checkpointed; other settings refused
sweep = Sweep(Path(args.out) / "runs.json", settings=result_settings(args, exclude=("models",)))


def options():
    return dict(hidden=(args.hidden,), batch_norm=True, dropout=0.1)


def guide_options():
    return dict(input_transform="log1p", batch_norm=True, dropout=0.1)


def fit(name: str):
    """Train one model and return its latent means and seconds per epoch."""
    pyro.set_rng_seed(args.seed)
    covariates = dict(categorical=cells.categorical_sizes)
    data = cells
    if name == "vae":
        model, guide = VAE(cells.num_genes, args.latent, likelihood="nb", **options(), **covariates), \
            NormalGuide(cells.num_genes, args.latent, (args.hidden,), **guide_options())
    elif name == "vae-unintegrated":
        data = cells.without_covariates()
        model, guide = VAE(cells.num_genes, args.latent, likelihood="nb", **options()), \
            NormalGuide(cells.num_genes, args.latent, (args.hidden,), **guide_options())
    elif name == "svae":
        model, guide = SVAE(cells.num_genes, args.latent + 1, likelihood="nb", **options(), **covariates), \
            VMFGuide(cells.num_genes, args.latent + 1, (args.hidden,), **guide_options())
    elif name == "gmvae":
        model = GMVAE(cells.num_genes, args.latent, num_lines, likelihood="nb", **options(), **covariates)
        guide = GMVAEGuide(cells.num_genes, args.latent, (args.hidden,), num_components=num_lines, **guide_options())
    else:
        return fit_scvi(defaults=name == "scvi-defaults")
    history = train(model, guide, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=device,
                    seed=args.seed, progress=not args.no_progress, eval_size=0, checkpoint=sweep.checkpoint_path(name))
    seconds = float(np.median([r["seconds"] for r in history.records])) if history.records else float("nan")
    return encode_data(guide, data).numpy(), seconds


def kept(name: str) -> tuple[np.ndarray, float]:
    """``fit(name)``, or what an earlier run of the same settings kept of it."""
    def computed() -> dict:
        latent, seconds = fit(name)
        return {"latent": latent.tolist(), "seconds_per_epoch": seconds}

    result = sweep.run(name, computed)
    return np.asarray(result["latent"], dtype=np.float32), result["seconds_per_epoch"]


def fit_scvi(defaults: bool):
    import scvi

    scvi.settings.seed = args.seed
    adata = cells.to_anndata()
    scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key="part")
    peer = scvi.model.SCVI(adata, n_hidden=args.hidden, n_latent=args.latent, n_layers=1, gene_likelihood="nb",
                           dropout_rate=0.1)
    started = time.perf_counter()
    plan = {"lr": args.lr} if defaults else {"lr": args.lr, "eps": 1e-8, "weight_decay": 0.0,
                                             "n_epochs_kl_warmup": None, "n_steps_kl_warmup": None}
    peer.train(max_epochs=args.epochs, batch_size=args.batch_size, plan_kwargs=plan, train_size=1.0,
               early_stopping=False, enable_progress_bar=not args.no_progress,
               accelerator="gpu" if device.type == "cuda" else "cpu")
    seconds = (time.perf_counter() - started) / max(args.epochs, 1)
    return peer.get_latent_representation(), seconds


results, latents = {}, {}
for name in args.models:
    if name.startswith("scvi"):
        try:
            import scvi  # noqa: F401
        except ImportError:
            print("scvi-tools is not installed: no scVI row (pip install -e '.[peer]' installs scvi-tools 1.4.2)")
            continue
    latent, seconds = kept(name)
    latents[name] = latent
    scores = clustering_scores(lines, kmeans_clusters(latent, num_lines, args.seed))
    results[name] = {"ari": scores["ari"], "nmi": scores["nmi"], "batch_asw": batch_asw(latent, batches, lines),
                     "ilisi": ilisi(latent, batches), "seconds_per_epoch": seconds}
    print(f"{name:>17}: cell-line ARI {scores['ari']:.3f}, NMI {scores['nmi']:.3f}; batch ASW "
          f"{results[name]['batch_asw']:.3f}, iLISI {results[name]['ilisi']:.3f}; {seconds:.2f} s/epoch")

fig, axes = plt.subplots(2, len(latents), figsize=(4.5 * len(latents), 8.5), squeeze=False)
for column, (name, latent) in enumerate(latents.items()):
    embedding = TSNE(init="pca", random_state=args.seed, perplexity=min(30, len(latent) // 4)).fit_transform(latent)
    for row, (values, what) in enumerate(((batches, "batch"), (lines, "cell line"))):
        ax = axes[row, column]
        for k, value in enumerate(sorted(set(values))):
            chosen = values == value
            ax.scatter(*embedding[chosen].T, s=5, color=f"C{k}", label=value)
        ax.set(xticks=[], yticks=[], title=f"{name}, by {what}")
        if column == 0:
            ax.legend(markerscale=3, fontsize=8)
    axes[0, column].set_title(f"{name}, by batch\nARI {results[name]['ari']:.2f}, iLISI {results[name]['ilisi']:.2f}")
save(fig, f"{args.out}/integration_tsne.png")

adata = cells.to_anndata()
for name, latent in latents.items():
    add_results(adata, latent=latent, key=name.replace("-", "_"))
adata.write_h5ad(f"{args.out}/cells.h5ad")
write_metrics(args.out, {"dataset": args.dataset, "cells": len(cells), "genes": cells.num_genes,
                         "batches": sorted(set(batches)), "results": results}, args)
