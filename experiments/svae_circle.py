"""S-VAE vs N-VAE on circle data (notebook 000, first part): three clusters on S^1 embedded in R^100.

The data: angles around three centres (0, 2 pi/3, 4 pi/3, angular sd 0.3) mapped to R^100 by a random
linear map, plus noise of sd 0.1 (``pyrovae.data.circle_clusters``). The same decoder family (MLP 2-64-128-100,
Gaussian likelihood with a learned per-feature scale, where the notebook used a fixed-variance MSE) is
trained with a 2-D latent two ways: the N-VAE (standard normal prior on R^2, Gaussian guide) and the S-VAE
(uniform prior on the circle S^1, von Mises-Fisher guide; ``--guides`` adds Power Spherical). As in the
notebook: encoder 100-128-64, batch 32, Adam 1e-3; 200 epochs (the notebook's 50 stop while the learned
noise scale, and so the likelihood, is still improving). Reported: the latent means side by side
coloured by cluster, the held-out ELBO curves, the held-out log-likelihood of each by importance sampling, and how
well the latent angle keeps the true angle (absolute circular correlation).

Differs from the notebook: both models maximise the ELBO (KL weight 1). The notebook weighted the KL by 0.1 for
the S-VAE and by 0.001 for the N-VAE against a mean MSE: a different objective per model, the N-VAE's close to an
auto-encoder's, whose latent it then drew. Here the two latents come from the same objective, and their held-out
log-likelihoods can be compared.

Nothing is lost to an interruption: each model is checkpointed after every epoch and its scores saved in parts
(``OUT/checkpoints``, ``OUT/scores``); the same command resumes, ``--guides`` may grow, and a rerun with other
settings is refused.
"""

import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from pyrovae import make_pair
from pyrovae.data import circle_clusters
from pyrovae.experiment import (
    experiment_parser,
    positive_float,
    positive_int,
    result_settings,
    setup,
    write_metrics,
)
from pyrovae.infer import locate, log_likelihood_in_parts, train
from pyrovae.metrics import circular_correlation
from pyrovae.plots import save, training_curves
from pyrovae.sweep import Sweep

QUICK = {"epochs": 10, "num_data": 300, "num_test": 200, "num_samples": 100}

parser = experiment_parser(__doc__, epochs=200, out="results/svae_circle", quick=QUICK, resumable=True)
parser.add_argument("--num-data", type=positive_int, default=1000, help="training points")
parser.add_argument("--num-test", type=positive_int, default=1000, help="held-out points")
parser.add_argument("--num-features", type=positive_int, default=100,
                    help="data dimension (the circle is mapped into it by a random linear map)")
parser.add_argument("--hidden", type=positive_int, nargs="+", default=[128, 64],
                    help="encoder widths (decoder mirrors)")
parser.add_argument("--batch-size", type=positive_int, default=32, help="points per training batch")
parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
parser.add_argument("--num-samples", type=positive_int, default=1000, help="importance samples per held-out point")
parser.add_argument("--guides", nargs="+", default=["normal", "vmf"], choices=["normal", "vmf", "power"],
                    help="models: N-VAE (normal), S-VAE with the vMF (vmf) or Power Spherical (power) guide")
args = parser.parse_args()
device = setup(args)

# one draw of the generator, split: train and test share the embedding
data, angles = circle_clusters(args.num_data + args.num_test, args.num_features, seed=args.seed)
train_data = data.subset(torch.arange(args.num_data)).to(device)
test_data = data.subset(torch.arange(args.num_data, len(data))).to(device)
test_angles = angles[args.num_data:]
NAMES = {"normal": "N-VAE (Gaussian, R^2)", "vmf": "S-VAE (vMF, S^1)", "power": "S-VAE (Power Spherical, S^1)"}


def build(kind):
    """R^2 for the N-VAE, the circle S^1 in R^2 for the S-VAE; the decoder mirrors the encoder."""
    kinds = {"normal": ("vae", 2), "vmf": ("svae-vmf", 1), "power": ("svae-power", 1)}
    return make_pair(kinds[kind][0], args.num_features, kinds[kind][1], args.hidden, likelihood="gaussian")


runs, metrics = {}, {"num_train": len(train_data), "num_test": len(test_data), "runs": {}}
# checkpoints and score parts resume an interrupted run; --guides may grow, other settings are refused
out = Path(args.out)
sweep = Sweep(out / "runs.json", settings=result_settings(args, exclude=("guides",)))
for kind in args.guides:
    torch.manual_seed(args.seed)  # each model's start its own: the same in a grown --guides as in a fresh run
    model, guide = build(kind)
    history = train(model, guide, train_data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    elbo="trace", val_data=test_data, device=device, seed=args.seed, restore_best=False,
                    progress=not args.no_progress, checkpoint=sweep.checkpoint_path(kind))
    seconds = sum(history["seconds"])  # those of an interrupted earlier run included
    ll = log_likelihood_in_parts(model, guide, test_data, out / "scores" / kind, part_size=500, seed=args.seed,
                                 num_samples=args.num_samples, proposal=args.proposal, refine_steps=args.refine_steps)
    codes = locate(guide, test_data.x).cpu()  # latent means; mean directions on the circle
    latent_angle = torch.atan2(codes[:, 1], codes[:, 0])
    runs[kind] = {"codes": codes, "history": history}
    metrics["runs"][NAMES[kind]] = {
        **ll.summary(), "test_elbo": history.last["val_elbo"], "test_kl": history.last["val_kl"],
        "train_seconds": seconds,
        "angle_circular_correlation": circular_correlation(latent_angle, test_angles),
        "history": history.to_dict(),
    }

print(f"\nheld-out log-likelihood of {len(test_data)} points, {args.num_samples} importance samples (nats)")
print(f"{'model':<32}{'log p(x)':>10}{'+/-':>7}{'ELBO':>10}{'k>0.7':>8}{'angle corr':>12}{'train s':>9}")
for name, run in metrics["runs"].items():
    print(f"{name:<32}{run['log_likelihood']:>10.2f}{run['stderr']:>7.2f}{run['test_elbo']:>10.2f}"
          f"{run['frac_khat_gt_0.7']:>8.1%}{run['angle_circular_correlation']:>12.3f}{run['train_seconds']:>9.1f}")

columns = len(args.guides) + 2
fig, axes = plt.subplots(1, columns, figsize=(4.2 * columns, 4.2))
truth = torch.stack([torch.cos(test_angles), torch.sin(test_angles)], -1)
colour = dict(c=test_data.labels.cpu(), cmap="viridis", s=6, alpha=0.6)
points = axes[0].scatter(truth[:, 0], truth[:, 1], **colour)
axes[0].legend(*points.legend_elements(), title="cluster", fontsize=7, loc="center")
axes[0].set(title="true positions on S^1", aspect="equal")
for ax, kind in zip(axes[1:], args.guides):
    codes = runs[kind]["codes"]
    ax.scatter(codes[:, 0], codes[:, 1], **colour)
    if kind != "normal":
        circle = torch.linspace(0, 2 * math.pi, 200)
        ax.plot(torch.cos(circle), torch.sin(circle), color="grey", lw=0.5)
    run = metrics["runs"][NAMES[kind]]
    ax.set(title=f"{NAMES[kind]}\nLL {run['log_likelihood']:.1f}, angle corr {run['angle_circular_correlation']:.2f}",
           aspect="equal")
training_curves(axes[-1], {NAMES[k]: runs[k]["history"] for k in args.guides}, key="val_elbo",
                ylabel="held-out ELBO per point")
late = [v for k in args.guides for v in runs[k]["history"]["val_elbo"][len(runs[k]["history"]) // 5:]]
if late:
    axes[-1].set_ylim(bottom=min(late) - 0.05 * (max(late) - min(late) + 1e-9))  # the first epochs would dwarf the rest
axes[-1].set(title="held-out ELBO (higher is better)")
fig.tight_layout()
save(fig, f"{args.out}/latent_means.png")
write_metrics(args.out, metrics, args)
print(f"\nfigure and metrics.json in {args.out}")
