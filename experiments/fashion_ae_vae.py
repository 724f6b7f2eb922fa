"""Fashion-MNIST conv auto-encoder vs conv VAE (notebook 004): one model class, two guides.

Both use the notebook's nets: a 4x4 stride-2 conv encoder (32, 64 channels) to a 10-D code and the
mirror transposed-conv decoder. The auto-encoder is the model with a point-mass guide (DeltaGuide) and no
KL term, with a Gaussian likelihood on grey levels through a sigmoid mean (the notebook's MSE); the VAE is
the model with a Normal guide, a Bernoulli likelihood and the KL weighted by beta. The notebook's BCE on
grey levels is, in expectation, the Bernoulli likelihood of dynamically binarised pixels, which is what is
trained. ``--ae-likelihood bernoulli`` makes the two differ in the guide alone.

Figures: originals and reconstructions, denoising (uniform noise, clamped), 50 generations from the prior,
an 11-step linear interpolation between two test images' codes, and t-SNE of test codes by class. Metrics:
test reconstruction MSE of both, and held-out log-likelihoods by importance sampling (the auto-encoder's
point mass is no proposal, so a Normal guide is refitted to its frozen decoder first).

Nothing is lost to an interruption: each model (and the refitted guide) is checkpointed after every epoch and its
scores saved in parts (``OUT/checkpoints``, ``OUT/scores``); the same command resumes, and a rerun with other
settings is refused (``OUT/runs.json.settings.json``).
"""

from pathlib import Path

import matplotlib.pyplot as plt
import pyro.optim
import torch
from pyrovae.guides import DeltaGuide, NormalGuide
from pyrovae.models import VAE
from sklearn.manifold import TSNE

from pyrovae.data import FASHION_CLASSES, binarize_split, load_fashion_mnist
from pyrovae.experiment import (
    experiment_parser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    result_settings,
    setup,
    write_metrics,
)
from pyrovae.infer import interpolate, locate, log_likelihood_in_parts, reconstruct, refit_guide, train
from pyrovae.likelihoods import Gaussian
from pyrovae.metrics import clustering_scores, kmeans_clusters, reconstruction_scores
from pyrovae.nn import ConvDecoder, ConvEncoder
from pyrovae.plots import save, show_images
from pyrovae.sweep import Sweep

QUICK = {"num_train": 2000, "num_ll": 100, "num_samples": 32, "refit_epochs": 1, "num_tsne": 300}

parser = experiment_parser(__doc__, epochs=10, out="results/fashion_ae_vae", quick=QUICK,
                           resumable=True)
parser.add_argument("--z-dim", type=positive_int, default=10, help="latent dimension of both models")
parser.add_argument("--batch-size", type=positive_int, default=128, help="images per training batch")
parser.add_argument("--lr", type=positive_float, default=1e-3,
                    help="Adam learning rate (both models and the refitted guide)")
parser.add_argument("--weight-decay", type=non_negative_float, default=1e-5, help="Adam weight decay (the notebook's)")
parser.add_argument("--beta", type=non_negative_float, default=1.0, help="KL weight of the VAE")
parser.add_argument("--ae-likelihood", choices=["gaussian", "bernoulli"], default="gaussian",
                    help="AE likelihood: Gaussian on grey levels (the notebook's MSE) or Bernoulli on binarised pixels")
parser.add_argument("--noise", type=non_negative_float, default=0.5,
                    help="denoising: x + noise * U(-0.5, 0.5), clamped to [0, 1]")
parser.add_argument("--num-train", type=positive_int, default=None, help="use only this many training images")
parser.add_argument("--num-ll", type=positive_int, default=500, help="test images scored by importance sampling")
parser.add_argument("--num-samples", type=positive_int, default=200, help="importance samples per scored image")
parser.add_argument("--refit-epochs", type=non_negative_int, default=3,
                    help="epochs of the Normal guide refitted to the AE")
parser.add_argument("--num-tsne", type=positive_int, default=3000, help="test codes embedded by t-SNE")
args = parser.parse_args()
device = setup(args)

grey_train, grey_test = load_fashion_mnist(args.data_dir)
binary_train, binary_test = binarize_split(grey_train, grey_test, "dynamic", seed=args.seed)
if args.num_train:
    first = torch.arange(min(args.num_train, len(grey_train)))
    grey_train, binary_train = grey_train.subset(first), binary_train.subset(first)
scored = torch.arange(min(args.num_ll, len(grey_test)))
print(f"Fashion-MNIST: {len(grey_train)} training images, {len(grey_test)} test images, {len(scored)} scored")

Z = args.z_dim


def conv_model(likelihood) -> VAE:
    """The generative side shared by both runs: N(0, I) prior, the notebook's transposed-conv decoder."""
    return VAE(784, Z, likelihood=likelihood, decoder=ConvDecoder(Z, channels=(64, 32), kernel_size=4))


def conv_encoder(out_features: int) -> ConvEncoder:
    return ConvEncoder(out_features, channels=(32, 64), kernel_size=4)


ae_likelihood = Gaussian(inverse_variance=2.0, link="sigmoid") if args.ae_likelihood == "gaussian" else "bernoulli"
setups = {  # the same model class; the guide is the one-line difference
    "AE": (conv_model(ae_likelihood), DeltaGuide(784, Z, encoder=conv_encoder(Z)),
           grey_train if args.ae_likelihood == "gaussian" else binary_train, 0.0),
    "VAE": (conv_model("bernoulli"), NormalGuide(784, Z, encoder=conv_encoder(2 * Z)), binary_train, args.beta),
}
# checkpoints and score parts resume an interrupted run; other settings are refused (but for the figures' own)
out = Path(args.out)
sweep = Sweep(out / "runs.json", settings=result_settings(args, exclude=("noise", "num_tsne")))
optim = pyro.optim.Adam({"lr": args.lr, "weight_decay": args.weight_decay})
common = dict(epochs=args.epochs, batch_size=args.batch_size, optim=optim, elbo="jit", device=device,
              seed=args.seed, progress=not args.no_progress)
runs = {}
for name, (model, guide, data, kl_weight) in setups.items():
    print(f"\n{name}: {type(guide).__name__}, {type(model.likelihood).__name__} likelihood, KL weight {kl_weight:g}")
    history = train(model, guide, data.to(device), kl_weight=kl_weight, checkpoint=sweep.checkpoint_path(name),
                    **common)
    # the epochs' seconds, those of an interrupted earlier run included
    runs[name] = {"model": model, "guide": guide, "history": history, "seconds": sum(history["seconds"])}

# the AE's point mass cannot propose: refit a Normal guide to the frozen AE model to measure its likelihood
ae_test = grey_test if args.ae_likelihood == "gaussian" else binary_test
ae = runs["AE"]
refitted = NormalGuide(784, Z, encoder=conv_encoder(2 * Z))
print("\nAE + refitted Normal guide (model frozen)")
refit, _ = refit_guide(ae["model"], refitted, setups["AE"][2].to(device), checkpoint=sweep.checkpoint_path("AE refit"),
                       **{**common, "epochs": args.refit_epochs})
ae["refit_seconds"] = sum(refit["seconds"])
scoring = {"AE": (ae["model"], refitted, ae_test), "VAE": (runs["VAE"]["model"], runs["VAE"]["guide"], binary_test)}

metrics = {"num_train": len(grey_train), "num_scored": len(scored), "runs": {}}
print(f"\n{'run':<6}{'test MSE':>10}{'log p(x)':>11}{'+/-':>7}{'k>0.7':>8}{'train s':>9}   data scored")
for name, run in runs.items():
    model, guide, test = scoring[name]
    ll = log_likelihood_in_parts(model, guide, test.subset(scored).to(device), out / "scores" / name, part_size=100,
                                 seed=args.seed, num_samples=args.num_samples, proposal=args.proposal,
                                 refine_steps=args.refine_steps)
    reconstruction = reconstruct(model, run["guide"], grey_test.x[:2000].to(device)).cpu()
    mse = reconstruction_scores(grey_test.x[:2000], reconstruction)["mse"]
    scored_on = "grey levels" if name == "AE" and args.ae_likelihood == "gaussian" else "binarised pixels"
    print(f"{name:<6}{mse:>10.4f}{ll.mean:>11.2f}{ll.stderr:>7.2f}{(ll.khat > 0.7).float().mean():>8.1%}"
          f"{run['seconds']:>9.1f}   {scored_on}")
    metrics["runs"][name] = {**ll.summary(), "scored_on": scored_on, "test_mse": mse, "train_seconds": run["seconds"],
                             "likelihood": type(model.likelihood).__name__, "history": run["history"].to_dict()}
metrics["runs"]["AE"]["refit_seconds"] = ae["refit_seconds"]
metrics["note"] = ("log p(x) of the AE (Gaussian density on grey levels) and of the VAE (probability of "
                   "binarised pixels) are on different data spaces and are not comparable with each other")

# ----------------------------------------------------------------------------------------------- figures
for run in runs.values():
    run["model"].cpu().eval()
    run["guide"].cpu().eval()


def reconstructions(name, x):
    return reconstruct(runs[name]["model"], runs[name]["guide"], x)


def decode(name, z):
    with torch.no_grad():
        return runs[name]["model"].decode(z).mean


generator = torch.Generator().manual_seed(args.seed)
images = grey_test.x[:50]
noisy = (images + args.noise * (torch.rand(images.shape, generator=generator) - 0.5)).clamp(0, 1)
fig, axes = plt.subplots(2, 3, figsize=(18, 7.5))
show_images(axes[0, 0], images, num_columns=10, title="test images")
show_images(axes[0, 1], reconstructions("AE", images), num_columns=10, title="AE reconstructions")
show_images(axes[0, 2], reconstructions("VAE", images), num_columns=10, title="VAE reconstructions (means)")
show_images(axes[1, 0], noisy, num_columns=10, title=f"noisy inputs (x + {args.noise:g} U(-1/2, 1/2), clamped)")
show_images(axes[1, 1], reconstructions("AE", noisy), num_columns=10, title="AE denoising")
show_images(axes[1, 2], reconstructions("VAE", noisy), num_columns=10, title="VAE denoising")
fig.tight_layout()
save(fig, f"{args.out}/reconstruction_denoising.png")

prior_draws = torch.randn(50, Z, generator=generator)
fig, axes = plt.subplots(1, 2, figsize=(14, 4))
show_images(axes[0], decode("VAE", prior_draws), num_columns=10, title="VAE: 50 generations, z ~ N(0, I)")
show_images(axes[1], decode("AE", prior_draws), num_columns=10,
            title="AE decoder at the same z ~ N(0, I) (no prior was trained)")
fig.tight_layout()
save(fig, f"{args.out}/generation.png")

fig, axes = plt.subplots(2, 1, figsize=(12, 3.4))
for ax, name in zip(axes, ("AE", "VAE")):
    _, decoded = interpolate(runs[name]["model"], runs[name]["guide"], grey_test.x[0], grey_test.x[1], steps=11)
    show_images(ax, decoded, num_columns=11,
                title=f"{name}: linear interpolation between the codes of two test images, 11 steps")
fig.tight_layout()
save(fig, f"{args.out}/interpolation.png")

embedded = torch.arange(min(args.num_tsne, len(grey_test)))
labels = grey_test.labels[embedded].numpy()
fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
for ax, name in zip(axes, ("AE", "VAE")):
    codes = locate(runs[name]["guide"], grey_test.x[embedded]).numpy()
    scores = clustering_scores(labels, kmeans_clusters(codes, 10, args.seed), codes)
    metrics["runs"][name].update({f"code_{k}_by_class": v for k, v in scores.items()})
    silhouette = scores["silhouette"]
    points = TSNE(n_components=2, random_state=args.seed, init="pca").fit_transform(codes)
    for label in range(10):
        ax.scatter(*points[labels == label].T, s=3, color=plt.cm.tab10(label), label=FASHION_CLASSES[label])
    ax.set_title(f"{name}: t-SNE of {len(codes)} test codes (silhouette by class in code space {silhouette:.3f})")
    ax.set_axis_off()
axes[1].legend(markerscale=4, fontsize="small", loc="center left", bbox_to_anchor=(1, 0.5))
fig.tight_layout()
save(fig, f"{args.out}/tsne.png")

write_metrics(args.out, metrics, args)
print(f"\nfigures and metrics.json in {args.out}")
