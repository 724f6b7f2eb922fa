"""The scvi-tools quick start on PBMC 3k through pyrovae's AnnData layer, on the VAE, the S-VAE and the GMVAE.

Setup (raw counts in a layer, half of the labels hidden), train, latent, clusters (KMeans on the latent, ARI
against the cell types), normalised expression, DE between CD14+ and FCGR3A+ monocytes, label transfer to the
hidden half (semi-supervised GMVAE), save, load, and the same latent after loading. Writes metrics.json,
cells.h5ad (every result in obsm, layers, obs and uns) and a figure of the latents.
"""

import matplotlib.pyplot as plt
import numpy as np

import pyrovae.sc as sc
from pyrovae.data import load_count_dataset
from pyrovae.experiment import experiment_parser, non_negative_int, positive_int, setup, write_metrics
from pyrovae.metrics import clustering_scores, kmeans_clusters
from pyrovae.plots import latent_scatter, save

parser = experiment_parser(__doc__, epochs=200, out="results/pbmc_quickstart",
                           quick={"epochs": 2, "genes": 300, "num_samples": 200}, proposal=False)
parser.add_argument("--genes", type=non_negative_int, default=2000, help="most variable genes kept")
parser.add_argument("--latent", type=positive_int, default=10,
                    help="latent dimension d of every model (the S-VAE: the sphere S^d in R^(d+1))")
parser.add_argument("--num-samples", type=positive_int, default=5000, help="posterior draws per group for DE")
parser.add_argument("--likelihood", default="nb", choices=["nb", "zinb", "poisson", "zip"],
                    help="count likelihood of every model")
args = parser.parse_args()
device = setup(args)

adata = load_count_dataset("pbmc3k", args.data_dir).prepare(num_genes=args.genes, seed=args.seed).to_anndata()
hidden = np.random.default_rng(args.seed).random(adata.n_obs) < 0.5
adata.obs["partial"] = adata.obs["cell_type"].astype(str).where(~hidden, "Unknown")
sc.setup_anndata(adata, layer="counts", labels_key="partial")
truth = adata.obs["cell_type"].astype(str).to_numpy()
kinds = {"vae": (sc.SingleCellVAE, {}), "svae": (sc.SingleCellSVAE, {"distribution": "vmf"}),
         "gmvae": (sc.SingleCellGMVAE, {"num_components": 9}), "label_transfer": (sc.LabelTransferGMVAE, {})}
train_options = dict(epochs=args.epochs, seed=args.seed, device=device, progress=not args.no_progress)

runs, fig, axes = {}, *plt.subplots(1, 3, figsize=(15, 4.5))
for (name, (cls, options)), ax in zip(kinds.items(), [*axes, None]):
    model = cls(adata, latent_dim=args.latent, likelihood=args.likelihood, **options)
    history = model.train(**train_options)
    key = f"pyrovae_{name}"
    latent = model.get_latent_representation(key=key)
    clusters = kmeans_clusters(latent, 9, seed=args.seed)
    model.get_normalized_expression(key=key)
    table = model.differential_expression("CD14+ Mono", "FCGR3A+ Mono", groupby="cell_type", key=key,
                                         num_samples=args.num_samples)
    model.save(f"{args.out}/{name}", overwrite=True)
    reloaded = cls.load(f"{args.out}/{name}", adata)
    runs[name] = {"final_loss": history.last["loss"], **clustering_scores(truth, clusters),
                  "de_top_up": table[table["lfc_mean"] > 0].index[:5].tolist(),
                  "same_latent_after_loading": bool(np.array_equal(reloaded.get_latent_representation(key=key),
                                                                   latent))}
    if name == "label_transfer":
        predicted = model.predict(key=key).astype(str).to_numpy()
        runs[name]["accuracy_on_hidden"] = float((predicted[hidden] == truth[hidden]).mean())
        runs[name]["same_labels_after_loading"] = bool((reloaded.predict(key=key) == predicted).all())
    else:
        latent_scatter(ax, latent, truth, title=f"{name}: ARI {runs[name]['ari']:.2f}")
    print(name, runs[name])

save(fig, f"{args.out}/latents.png")
adata.write_h5ad(f"{args.out}/cells.h5ad")
write_metrics(args.out, {"cells": adata.n_obs, "genes": adata.n_vars, "hidden_cells": int(hidden.sum()),
                         "runs": runs}, args)
