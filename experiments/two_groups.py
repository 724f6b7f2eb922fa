"""Two groups of rank-2 Gaussians in R^15 through a 2-D VAE (notebook 003, first part).

Each group is N(m_g, A_g A_g^T + 0.1^2 I) with its own mean and 15 x 2 loading matrix. A small MLP VAE
(15-10-5-2 encoder, 2-5-10-15 decoder, ReLU) is trained full-batch, as in the notebook. The notebook's
loss, MSE summed over features plus the KL, is the negative ELBO of a Gaussian likelihood with variance 1/2
(inverse variance 2), the default here; ``--learn-scale`` learns one noise scale per feature instead. The
law of the data is known exactly, so the held-out log-likelihood has a ceiling: E[log p_true(x)].

Nothing is lost to an interruption: the VAE is checkpointed after every epoch and its scores saved in parts
(``OUT/checkpoints``, ``OUT/scores``); the same command resumes, and a rerun with other settings is refused.
"""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from pyrovae.guides import NormalGuide
from pyrovae.models import VAE

from pyrovae.data import two_groups
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
from pyrovae.infer import locate, log_likelihood_in_parts, reconstruct, train
from pyrovae.likelihoods import Gaussian
from pyrovae.plots import latent_scatter, principal_axes, save
from pyrovae.sweep import Sweep

QUICK = {"epochs": 200, "num_test_per_group": 100, "num_samples": 100}
parser = experiment_parser(__doc__, epochs=1000, out="results/two_groups", quick=QUICK, resumable=True)
parser.add_argument("--num-per-group", type=positive_int, default=200, help="training points per group")
parser.add_argument("--num-test-per-group", type=positive_int, default=500, help="held-out points per group")
parser.add_argument("--noise", type=non_negative_float, default=0.1, help="noise standard deviation of the data")
parser.add_argument("--data-seed", type=non_negative_int, default=42,
                    help="seed of the data (42, as the notebook's set.seed(42); the draws are torch's, not R's, so "
                         "the data are of the same law but not the notebook's points)")
parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
parser.add_argument("--inverse-variance", type=positive_float, default=2.0,
                    help="1/sigma^2 of the likelihood (2: MSE sum)")
parser.add_argument("--learn-scale", action="store_true", help="learn a noise scale per feature instead")
parser.add_argument("--num-samples", type=positive_int, default=1000, help="importance samples per held-out point")
args = parser.parse_args()
device = setup(args)

train_data, test_data, truth = two_groups(args.num_per_group, noise=args.noise, seed=args.data_seed,
                                          num_test_per_group=args.num_test_per_group)
x_dim, z_dim = train_data.num_features, 2
likelihood = Gaussian() if args.learn_scale else Gaussian(inverse_variance=args.inverse_variance)
model = VAE(x_dim, z_dim, hidden=(10, 5), likelihood=likelihood, activation="relu")
guide = NormalGuide(x_dim, z_dim, hidden=(10, 5), activation="relu")

# the checkpoint and score parts resume an interrupted run; other settings are refused
out = Path(args.out)
sweep = Sweep(out / "runs.json", settings=result_settings(args))
# full batch, as in the notebook: one step per epoch over all 400 points
history = train(model, guide, train_data.to(device), epochs=args.epochs, batch_size=len(train_data), lr=args.lr,
                elbo="jit", val_data=test_data.to(device), restore_best=False, device=device, seed=args.seed,
                progress=not args.no_progress, checkpoint=sweep.checkpoint_path("vae"))
seconds = sum(history["seconds"])  # those of an interrupted earlier run included
ll = log_likelihood_in_parts(model, guide, test_data.to(device), out / "scores", part_size=500, seed=args.seed,
                             num_samples=args.num_samples, proposal=args.proposal, refine_steps=args.refine_steps)
ceiling = truth.log_density(test_data.x).mean().item()
last = history.last
print(f"{args.epochs} full-batch steps in {seconds:.1f} s; held-out log p(x) {ll.mean:.3f} +/- {ll.stderr:.3f} "
      f"(exact law: {ceiling:.3f}); ELBO {last['val_elbo']:.3f}, KL {last['val_kl']:.3f}, "
      f"k-hat > 0.7 for {(ll.khat > 0.7).float().mean():.1%}")

# ----------------------------------------------------------------------------------------------- figures
model.cpu().eval()
guide.cpu().eval()
x, groups = train_data.x, train_data.labels.numpy()
codes, reconstructions = locate(guide, x), reconstruct(model, guide, x)
centre, axes_pc = principal_axes(x, x.shape[1])
pcs_true, pcs_reconstructed = (x.numpy() - centre) @ axes_pc.T, (reconstructions.numpy() - centre) @ axes_pc.T

fig, axes = plt.subplots(1, 3, figsize=(17, 5))
latent_scatter(axes[0], codes, groups, title="latent means E[z | x], coloured by group")
ax = axes[1]
for group, marker in ((0, "o"), (1, "^")):
    rows = groups == group
    ax.plot(np.stack([pcs_true[rows, 0], pcs_reconstructed[rows, 0]]),
            np.stack([pcs_true[rows, 1], pcs_reconstructed[rows, 1]]), color="0.8", lw=0.5, zorder=0)
    ax.scatter(pcs_true[rows, 0], pcs_true[rows, 1], s=10, marker=marker, color="C0",
               label=f"original, group {group}")
    ax.scatter(pcs_reconstructed[rows, 0], pcs_reconstructed[rows, 1], s=10, marker=marker, color="C3",
               label=f"reconstruction, group {group}")
ax.set_xlabel("PC 1")
ax.set_ylabel("PC 2")
ax.set_title("originals and reconstructions on the first two PCs")
ax.legend(fontsize="small")
axes[2].plot(history["epoch"], history["train_elbo"], label="training", alpha=0.7)
axes[2].plot(history["epoch"], history["val_elbo"], label="held-out", alpha=0.7)
axes[2].axhline(ceiling, color="k", ls="--", lw=1, label="E[log p_true(x)], held-out")
settled = history["val_elbo"][len(history) // 5 :] + history["train_elbo"][len(history) // 5 :]
axes[2].set_ylim(min(settled) - 2, max(ceiling, max(settled)) + 2)
axes[2].legend()
axes[2].set_title("ELBO during training")
axes[2].set_xlabel("full-batch step")
axes[2].set_ylabel("ELBO per point")
save(fig, f"{args.out}/two_groups.png")

fig, axes = plt.subplots(2, 4, figsize=(15, 7), sharex="col", sharey="col")
for group in range(2):
    rows = groups == group
    for pc in range(4):
        ax = axes[group, pc]
        ax.scatter(pcs_true[rows, pc], pcs_reconstructed[rows, pc], s=6, alpha=0.7, color=f"C{group}")
        low, high = pcs_true[:, pc].min(), pcs_true[:, pc].max()
        ax.plot([low, high], [low, high], "k--", lw=0.8)
        correlation = np.corrcoef(pcs_true[rows, pc], pcs_reconstructed[rows, pc])[0, 1]
        ax.set_title(f"group {group}, PC {pc + 1}: r = {correlation:.2f}", fontsize="medium")
        if group == 1:
            ax.set_xlabel("true value")
        if pc == 0:
            ax.set_ylabel("reconstructed value")
fig.suptitle("true vs reconstructed coordinates on PC 1-4, per group")
fig.tight_layout()
save(fig, f"{args.out}/pc_reconstruction.png")

correlations = {f"group {g}": [float(np.corrcoef(pcs_true[groups == g, pc], pcs_reconstructed[groups == g, pc])[0, 1])
                               for pc in range(4)] for g in range(2)}
metrics = {
    **ll.summary(), "exact_log_likelihood": ceiling, "test_elbo": last["val_elbo"], "test_kl": last["val_kl"],
    "test_reconstruction": last["val_reconstruction"], "train_seconds": seconds,
    "reconstruction_mse": float(((reconstructions - x) ** 2).mean()),
    "pc_correlation": correlations, "history": history.to_dict(),
}
write_metrics(args.out, metrics, args)
print(f"figures and metrics.json in {args.out}")
