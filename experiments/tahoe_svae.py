"""S-VAE on single cells streamed from a Tahoe-100M-schema atlas (notebook 000, single-cell part).

The notebook read 1,000 cells through a Python loop and kept the first 500 list entries of each (token order, not
genes). Here the atlas is streamed shard by shard: a gene panel (``--genes`` highly variable genes from a streamed
sample, or ``--panel`` a file of symbols) is fixed first, 5% of the cells are held out by a hash of shard and row,
and the model trains on the rest, under ``torchrun`` on several processes or GPUs if launched so. The default
model is the notebook's S-VAE: uniform prior on S^9 (``--latent-dim 10``), von Mises-Fisher guide (``--guide
power``: Power Spherical; ``--guide normal``: the N-VAE), with a negative binomial likelihood on the panel's counts
(library size observed); ``--pca`` is the notebook's setting instead: log1p, standardise, PCA 50 fitted on a
sample, Gaussian likelihood.

Without ``--source`` it reads ``tahoe/`` under the data folders (``--data-dir``, ``$PYROVAE_DATA``,
``../shared/data``) if there is one, else generates a simulated atlas in the Tahoe schema (cell-line and drug
effects, NB counts) under ``OUT/atlas`` (or ``--atlas-dir``, which several runs may share: one generates it, the
others wait for it); pass a folder of Tahoe parquet shards with their ``metadata/gene_metadata.parquet``, or
``--source tahoebio/Tahoe-100M`` to stream the hub data set (needs ``huggingface_hub`` and a network).

Outputs on a held-out sample: t-SNE of latent means by drug and by cell line, the concentration histogram,
reconstruction MSE and per-cell correlation, KMeans silhouette for k = 2..10, generation from the prior, a
spherical interpolation between two cells of different lines, and the held-out log-likelihood. Training resumes
from ``OUT/checkpoint.pt``, the scoring from the parts saved in ``OUT/scores``.

Plates as covariates: ``--covariates plate`` (the default) conditions the encoder and the decoder on the plate, as
scVI does with its batch; ``--covariates`` alone trains without. Both report the plates' mixing in the latent space
(iLISI, batch ASW within cell lines) beside the drug and cell-line structure (ARI of KMeans, ASW). The generated atlas
has a plate effect (``--plate-effect``, log-fold changes on 10% of the genes) for the covariate to remove.
``--hold-out drug=drug_5`` holds out whole groups instead of a random 5%: every cell of those labels is the test
set. A label cannot be both held out and a covariate (its held-out levels would be decoded with weights never
trained): hold out plates with ``--covariates`` alone.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from pyrovae import make_pair
from pyrovae.data import CellStream, LogPCA, TahoeAtlas, find_dataset, write_tahoe_shards
from pyrovae.data.tahoe_synthetic import GENERATOR_VERSION
from pyrovae.experiment import (
    experiment_parser,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    setup,
    write_metrics,
)
from pyrovae.infer import FileLock, atomic_write, encode_data, interpolation_path, log_likelihood_in_parts, train
from pyrovae.infer.distributed import barrier, init_distributed, is_main_process, local_device
from pyrovae.metrics import (
    batch_asw,
    clustering_scores,
    ilisi,
    kmeans_clusters,
    reconstruction_scores,
    silhouette_sweep,
)
from pyrovae.plots import latent_scatter, save, training_curves

QUICK = {"synthetic_cells": 4000, "synthetic_shards": 4, "vocabulary": 3000, "genes_per_cell": 300, "genes": 200,
         "hvg_cells": 1000, "held_out": 300, "num_samples": 32, "hidden": [64], "workers": 0}
parser = experiment_parser(__doc__, epochs=10, out="results/tahoe_svae", quick=QUICK, resumable=True)
parser.add_argument("--source", default=None, help="Tahoe parquet file/folder, or tahoebio/Tahoe-100M (hub)")
parser.add_argument("--atlas-dir", default=None,
                    help="folder of the generated atlas, shared by runs that name the same one (default: OUT/atlas)")
parser.add_argument("--synthetic-cells", type=positive_int, default=60_000, help="cells of the generated atlas")
parser.add_argument("--synthetic-shards", type=positive_int, default=12, help="parquet shards of the generated atlas")
parser.add_argument("--vocabulary", type=positive_int, default=62_710, help="genes in the generated atlas's vocabulary")
parser.add_argument("--genes-per-cell", type=positive_int, default=2_000, help="genes detected per generated cell")
parser.add_argument("--plate-effect", type=non_negative_float, default=0.5,
                    help="generated atlas: scale of the plates' effects")
parser.add_argument("--covariates", nargs="*", default=["plate"], help="atlas labels the pair is conditioned on")
parser.add_argument("--hold-out", nargs="*", default=[], metavar="LABEL=VALUES",
                    help="hold out whole groups, e.g. drug=drug_5 or plate=plate3,plate4 (default: a random 5%%)")
parser.add_argument("--genes", type=non_negative_int, default=2_000,
                    help="panel: highly variable genes from a streamed sample")
parser.add_argument("--panel", default=None, help="panel: a text file of gene symbols or Ensembl ids, one per line")
parser.add_argument("--hvg-cells", type=positive_int, default=20_000, help="cells sampled to choose the panel")
parser.add_argument("--guide", choices=["vmf", "power", "normal"], default="vmf",
                    help="vmf, power: the S-VAE with a von Mises-Fisher or Power Spherical guide; normal: the N-VAE")
parser.add_argument("--likelihood", choices=["nb", "zinb", "poisson", "zip"], default="nb",
                    help="count likelihood (library size observed); ignored with --pca")
parser.add_argument("--pca", action="store_true", help="log1p + standardise + PCA, Gaussian likelihood")
parser.add_argument("--pca-components", type=positive_int, default=50, help="principal components kept with --pca")
parser.add_argument("--latent-dim", type=positive_int, default=10,
                    help="ambient latent dimension (S^(d-1) for an S-VAE)")
parser.add_argument("--hidden", type=positive_int, nargs="+", default=[256, 128],
                    help="encoder widths (decoder mirrors)")
parser.add_argument("--batch-size", type=positive_int, default=256, help="cells per batch per process")
parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
parser.add_argument("--workers", type=non_negative_int, default=1, help="DataLoader workers reading shards")
parser.add_argument("--test-fraction", type=fraction, default=0.05, help="cells held out (hash of shard and row)")
parser.add_argument("--held-out", type=positive_int, default=3_000, help="held-out cells analysed")
parser.add_argument("--scored-cells", type=positive_int, default=None,
                    help="held-out cells whose log p(x) is estimated: a random sample of N of the analysed cells "
                         "(default: all of them)")
parser.add_argument("--num-samples", type=positive_int, default=100, help="importance samples per held-out cell")
parser.add_argument("--part-size", type=positive_int, default=100,
                    help="held-out cells scored per saved part (what an interruption can cost; a folder of saved "
                         "parts keeps the size it was scored with)")
parser.add_argument("--ais-chains", type=positive_int, default=128,
                    help="chains per cell of the 'auto' estimator's AIS stage")
parser.add_argument("--ais-steps", type=positive_int, default=200,
                    help="annealing steps of the 'auto' estimator's AIS stage (fewer: a cheaper, looser bound)")
args = parser.parse_args()
device = setup(args)
if init_distributed():
    device = local_device()
out = Path(args.out)
progress = not args.no_progress and is_main_process()

def held_out_groups(items: list[str]) -> dict[str, list[str]]:
    groups = {}
    for item in items:
        label, sep, values = item.partition("=")
        if not sep or not label or not values:
            parser.error(f"--hold-out takes LABEL=VALUE[,VALUE...], got {item!r}")
        groups.setdefault(label, []).extend(v for v in values.split(",") if v)
    return groups


held_out_spec = held_out_groups(args.hold_out)  # checked before hours of atlas generation

# --- data: the atlas, a gene panel fixed before training, the streams -------------------------------------------
source = args.source or find_dataset("tahoe", args.data_dir)  # a local copy: DATA/tahoe/{data,metadata}
if source is None:
    source = Path(args.atlas_dir) if args.atlas_dir else out / "atlas"
    generated = {"cells": args.synthetic_cells, "shards": args.synthetic_shards, "vocabulary": args.vocabulary,
                 "genes_per_cell": args.genes_per_cell, "seed": args.seed, "plate_effect": args.plate_effect,
                 "generator": GENERATOR_VERSION}
    if is_main_process():
        with FileLock(source):  # runs sharing an --atlas-dir: one generates it, the others wait and read it
            marker = source / "generated.json"  # written last: an atlas without it was interrupted
            found = json.loads(marker.read_text()) if marker.exists() else None
            if found is not None and found.get("generator", 1) != GENERATOR_VERSION:
                raise SystemExit(f"{source} holds an atlas of an earlier simulator (version {found.get('generator', 1)}"
                                 f", now {GENERATOR_VERSION}: it could put the control on a plate twice and leave a "
                                 "drug off every plate); the runs trained on it are of that atlas: start again in a "
                                 "new --out (or delete the atlas and, with it, the checkpoint.pt, panel files and "
                                 "scores of every run that used it)")
            if found is not None and found != generated:
                differ = ", ".join(f"{k} {found.get(k)} there, {v} now" for k, v in generated.items()
                                   if found.get(k) != v)
                raise SystemExit(f"{source} holds an atlas generated with other settings ({differ}); "
                                 f"use another {'--atlas-dir' if args.atlas_dir else '--out'}, or delete {source}")
            if found is None:
                if source.exists():
                    print(f"{source} holds an atlas whose generation was interrupted; generating it again")
                    shutil.rmtree(source)
                print(f"generating a {args.synthetic_cells:,}-cell Tahoe-schema atlas in {source}")
                write_tahoe_shards(source, args.synthetic_cells, args.synthetic_shards, args.vocabulary,
                                   args.genes_per_cell, seed=args.seed, plate_effect=args.plate_effect)
                marker.write_text(json.dumps(generated))
    barrier()
atlas = TahoeAtlas(source)
panel_file, chosen_file = out / "panel.txt", out / "panel.json"
chosen = {"genes": min(args.genes, atlas.num_genes), "hvg_cells": args.hvg_cells, "seed": args.seed}
if args.panel:
    panel = atlas.panel_positions([line.strip() for line in Path(args.panel).read_text().split() if line.strip()])
elif panel_file.exists():  # a resumed run keeps its panel, chosen as this run would choose it
    panel = atlas.panel_positions(panel_file.read_text().split())
    if is_main_process():  # the one process that writes the record reads it
        kept = json.loads(chosen_file.read_text()) if chosen_file.exists() else {"genes": len(panel)}  # older runs
        differ = ", ".join(f"{k} {kept[k]} there, {chosen[k]} now" for k in kept if kept[k] != chosen[k])
        if differ:
            raise SystemExit(f"{panel_file} holds the gene panel this run was trained on, chosen otherwise "
                             f"({differ}); use another --out, or delete its panel.txt and checkpoint.pt to start again")
else:
    panel = atlas.highly_variable_genes(chosen["genes"], num_cells=args.hvg_cells, seed=args.seed)
    if is_main_process():  # written whole: another process of the job may read it as it appears
        atomic_write(panel_file, lambda stream: stream.write("\n".join(atlas.vocabulary.ensembl_ids[panel]) + "\n"),
                     binary=False)
if not args.panel and is_main_process() and not chosen_file.exists():
    atomic_write(chosen_file, lambda stream: json.dump(chosen, stream), binary=False)
print(f"{atlas}; panel of {len(panel):,} genes")



split = {"test_fraction": args.test_fraction, "split_seed": args.seed, "held_out": held_out_spec,
         "covariates": args.covariates}
train_stream = CellStream(atlas, panel, args.batch_size, split="train", seed=args.seed, num_workers=args.workers,
                          **split)
test_stream = CellStream(atlas, panel, split="test", shuffle=False, **split)
held_out = test_stream.take(min(args.held_out, test_stream.num_cells), seed=args.seed)
if args.pca:
    sample = train_stream.take(min(20_000, train_stream.num_cells), seed=args.seed + 1)
    train_stream.transform = LogPCA.fit(sample.counts, args.pca_components)
inputs = train_stream.inputs(held_out)  # x (cells, features), or (x, cat, cont) with covariates
data_held = tuple(t.to(device) for t in inputs) if isinstance(inputs, tuple) else inputs.to(device)
x_held, covariates = (data_held[0], data_held[1:]) if isinstance(data_held, tuple) else (data_held, (None, None))
codes = {name: held_out.labels[name].numpy() for name in ("drug", "cell_line", "plate")}
names = atlas.categories
print(f"{train_stream}; {len(held_out):,} held-out cells analysed")

# --- model and guide ------------------------------------------------------------------------------------------
x_dim, widths = x_held.shape[1], tuple(args.hidden)
likelihood = "gaussian" if args.pca else args.likelihood
transform = None if args.pca else "log1p"
spherical = args.guide != "normal"
kind = {"normal": "vae", "vmf": "svae-vmf", "power": "svae-power"}[args.guide]
# --latent-dim is the length of a latent vector, as in the notebook: S^9 in R^10 for the S-VAE, R^10 for the N-VAE
manifold_dim = args.latent_dim - 1 if spherical else args.latent_dim
model, guide = make_pair(kind, x_dim, manifold_dim, widths, likelihood, input_transform=transform,
                         categorical=train_stream.categorical_sizes)

history = train(model, guide, train_stream, epochs=args.epochs, lr=args.lr, val_data=data_held, seed=args.seed,
                checkpoint=out / "checkpoint.pt", device=device, progress=progress)
if not is_main_process():
    raise SystemExit(0)

# --- analyses on the held-out sample --------------------------------------------------------------------------
model.eval()


def posterior_summary(x: torch.Tensor, *covariates) -> torch.Tensor:
    """Latent mean (mean direction on the sphere) and concentration (mean posterior scale for the N-VAE)."""
    q = guide.encode(x, *covariates)
    location, spread = (q.loc, q.concentration) if spherical else (q.mean, q.stddev.mean(-1))
    return torch.cat([location, spread[:, None]], dim=-1)


posterior = encode_data(guide, data_held, fn=posterior_summary)  # (cells, latent dim + 1)
locations, spread = posterior[:, :-1], posterior[:, -1]
panel_sizes = held_out.counts.sum(-1).to(device)  # the observed library of the panel, as in training
with torch.no_grad():
    library = None if args.pca else panel_sizes
    decoded = model.decode(locations.to(device), library, *covariates)
    reconstruction = decoded.mean.cpu()
observed = x_held.cpu()
if not args.pca:  # compare on the log scale, where counts of all sizes weigh in
    observed, reconstruction = torch.log1p(observed), torch.log1p(reconstruction)
reconstruction_metrics = reconstruction_scores(observed, reconstruction)
silhouettes = silhouette_sweep(locations, range(2, 11), seed=args.seed)
num_lines = len(np.unique(codes["cell_line"]))
line_scores = clustering_scores(codes["cell_line"], kmeans_clusters(locations, num_lines, args.seed), locations)
drug_scores = clustering_scores(codes["drug"], kmeans_clusters(locations, len(np.unique(codes["drug"])), args.seed),
                                locations)
plates = len(np.unique(codes["plate"]))
plate_mixing = {"ilisi": ilisi(locations, codes["plate"]) if plates > 1 else None,
                "batch_asw": batch_asw(locations, codes["plate"], codes["cell_line"]) if plates > 1 else None}
# --part-size cells at a time, each part saved as it finishes (hours of AIS survive an interruption), in a folder of
# the weights' epoch and the estimator: a run resumed to more epochs, or scored otherwise, scores afresh
ais = {"ais_chains": args.ais_chains, "ais_steps": args.ais_steps} if args.proposal == "auto" else {}
other_ais = ais and any(v != parser.get_default(k) for k, v in ais.items())  # named in the folder if not defaults
scores = out / "scores" / (f"epoch{len(history)}-{args.proposal}-{args.num_samples}"
                           + (f"-ais{args.ais_chains}x{args.ais_steps}" if other_ais else "")
                           + (f"-refine{args.refine_steps}" if args.refine_steps is not None else ""))
scored = len(held_out) if args.scored_cells is None else min(args.scored_cells, len(held_out))
if scored < len(held_out):  # a random subset: the analysed cells come shard by shard, plates in blocks
    scores = scores.with_name(f"{scores.name}-cells{scored}")
    picked = np.sort(np.random.default_rng(args.seed).choice(len(held_out), scored, replace=False))
    data_scored = tuple(t[picked] for t in data_held) if isinstance(data_held, tuple) else data_held[picked]
else:
    picked, data_scored = np.arange(len(held_out)), data_held
part_size, manifest = args.part_size, scores / "manifest.json"
recorded = json.loads(manifest.read_text()).get("part_size") if manifest.exists() else part_size
if recorded != part_size:
    if any(scores.glob("part-*.pt")):  # saved parts keep their size
        print(f"{scores} holds parts of {recorded} cells: scoring on in parts of {recorded}")
        part_size = recorded
    else:  # nothing saved yet: this run's size
        print(f"{scores} holds no saved part: scoring in parts of {part_size} cells, not {recorded}")
        manifest.unlink()
ll = log_likelihood_in_parts(model, guide, data_scored, scores, part_size=part_size, seed=args.seed,
                             progress=progress, num_samples=args.num_samples, proposal=args.proposal,
                             refine_steps=args.refine_steps, **ais)
certified = float(ll.certified.float().mean())
# each scored cell's estimate with its atlas id: runs on the same cells compare by paired differences
# (LogLikelihood.compare), far tighter than the difference of two means (tahoe_plates.py does)
atomic_write(out / "held_out_scores.pt", lambda stream: torch.save(
    {"cell_ids": held_out.ids[torch.from_numpy(picked)], **dataclasses.asdict(ll)}, stream))
print(f"held-out LL {ll.mean:.2f} +/- {ll.stderr:.2f} nats per cell over {scored:,} cells "
      f"(certified: {certified:.1%}; k-hat > 0.7: {(ll.khat > 0.7).float().mean():.1%})")
print(f"reconstruction MSE {reconstruction_metrics['mse']:.4f}, per-cell correlation "
      f"{reconstruction_metrics['correlation_mean']:.3f}; KMeans vs cell line ARI {line_scores['ari']:.3f}")
if plates > 1:
    print(f"plate mixing: iLISI {plate_mixing['ilisi']:.3f}, batch ASW {plate_mixing['batch_asw']:.3f} "
          f"(covariates: {', '.join(args.covariates) or 'none'})")

# --- figures --------------------------------------------------------------------------------------------------
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

embedding = TSNE(n_components=2, perplexity=min(30, len(locations) - 1), random_state=args.seed).fit_transform(
    locations.numpy())
fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
for ax, key in zip(axes, ("drug", "cell_line")):
    latent_scatter(ax, embedding, np.array(names[key], dtype=object)[codes[key]], title=f"t-SNE of latent means, {key}")
    ax.set(xlabel="t-SNE 1", ylabel="t-SNE 2")
save(fig, out / "tsne.png")

fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
axes[0].hist(spread.numpy(), bins=50, color="tab:red")
axes[0].set(xlabel="concentration" if spherical else "mean posterior scale", ylabel="cells",
            title="posterior concentration" if spherical else "posterior scale")
axes[1].hist(reconstruction_metrics["correlations"], bins=50, color="tab:blue")
axes[1].axvline(reconstruction_metrics["correlation_mean"], color="k", ls="--")
axes[1].set(xlabel="Pearson correlation", title="per-cell reconstruction" + ("" if args.pca else " (log1p)"))
axes[2].plot(list(silhouettes), list(silhouettes.values()), "o-")
axes[2].set(xlabel="KMeans clusters k", ylabel="silhouette", title="clustering of the latent means")
save(fig, out / "posterior_reconstruction_clusters.png")

# generation from the prior beside the held-out cells, on the held-out cells' first two principal axes
with torch.no_grad():
    generated = model.sample(len(held_out), library=None if args.pca else panel_sizes, cat=covariates[0],
                             cont=covariates[1]).cpu()
features = (lambda v: v) if args.pca else (lambda v: torch.log1p(v * (1e4 / v.sum(-1, keepdim=True).clamp(min=1))))
plane = PCA(2, random_state=args.seed).fit(features(x_held.cpu()).numpy())
real_2d, generated_2d = plane.transform(features(x_held.cpu()).numpy()), plane.transform(features(generated).numpy())
fig, ax = plt.subplots(figsize=(6.5, 5.5))
ax.scatter(*real_2d.T, s=3, alpha=0.4, label="held-out cells")
ax.scatter(*generated_2d.T, s=3, alpha=0.4, label="generated from the prior")
ax.set(xlabel="PC1", ylabel="PC2", title="generation from the prior")
ax.legend(markerscale=4)
save(fig, out / "generation.png")

# interpolation between two held-out cells of different cell lines, along the great circle (a line for the N-VAE)
first = 0
second = int(np.flatnonzero(codes["cell_line"] != codes["cell_line"][first])[0])
ends = locations[[first, second]]
path = interpolation_path(ends[0], ends[1], 11, spherical)  # the great circle on the sphere, a line otherwise
with torch.no_grad():
    size = panel_sizes[[first, second]].mean().expand(11)
    cat = covariates[0][first].expand(11, -1) if covariates[0] is not None else None  # as measured with the first
    cont = covariates[1][first].expand(11, -1) if covariates[1] is not None else None
    profiles = model.decode(path.to(device), None if args.pca else size, cat, cont).mean.cpu()
shown = torch.argsort(features(profiles).var(0), descending=True)[:30]
fig, ax = plt.subplots(figsize=(9, 5))
image = ax.imshow(features(profiles)[:, shown].T.numpy(), aspect="auto", cmap="viridis")
ax.set(xlabel="interpolation step", ylabel="feature" if args.pca else "gene (30 most changing)",
       title=f"{names['cell_line'][codes['cell_line'][first]]} -> {names['cell_line'][codes['cell_line'][second]]}")
fig.colorbar(image, ax=ax, label="decoded " + ("feature" if args.pca else "log1p(normalised mean)"))
save(fig, out / "interpolation.png")

fig, ax = plt.subplots(figsize=(6.5, 4.5))
training_curves(ax, {"held-out cells": history}, key="val_elbo", ylabel="ELBO per cell")
save(fig, out / "training.png")

write_metrics(out, {
    "cells": atlas.num_cells, "shards": len(atlas.shards), "panel_genes": len(panel), "train_cells":
    train_stream.num_cells, "held_out_cells": len(held_out), "scored_cells": scored, "features": x_dim,
    "held_out_log_likelihood": ll.mean, "held_out_log_likelihood_stderr": ll.stderr,
    "khat_above_0.7": float((ll.khat > 0.7).float().mean()), "certified": certified,
    "proposal": args.proposal, "reconstruction_mse": reconstruction_metrics["mse"],
    "reconstruction_correlation": reconstruction_metrics["correlation_mean"],
    "silhouette_by_k": silhouettes, "best_k": max(silhouettes, key=silhouettes.get),
    "kmeans_vs_cell_line": line_scores, "kmeans_vs_drug": drug_scores, "plate_mixing": plate_mixing,
    "covariates": args.covariates, "held_out_groups": split["held_out"], "guide": args.guide,
    "concentration_mean": float(spread.mean()), "concentration_std": float(spread.std()),
    "epochs": len(history), "seconds_per_epoch": float(np.mean(history["seconds"])),
    "history": history.records,
}, args)
print(f"figures and metrics.json in {out}")
