"""The 1-D VAE lab (notebook 002): what the decoder's fixed noise level does to a VAE.

Data come from a four-component Gaussian mixture on the real line; the VAE has a 1-D latent, tanh MLPs of
width 100, and a Gaussian likelihood whose inverse variance 1/sigma^2 is fixed by hand. The notebook asks
what happens when that inverse variance is near 0 or very large. This script answers with a sweep: one VAE
per inverse variance, each scored by the importance-sampled log-likelihood of held-out data (p_data itself
is known, so its own log density is the ceiling), with the notebook's three-panel figure (encoding,
decoding, generation) for the main setting and one generation panel per setting of the sweep.

Nothing is lost to an interruption: each VAE is checkpointed after every epoch and its scores saved in parts
(``OUT/checkpoints``, ``OUT/scores``); the same command resumes, and a rerun with other settings is refused
(``OUT/runs.json.settings.json``); ``--sweep`` may grow between runs.
"""

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from pyrovae.guides import NormalGuide
from pyrovae.models import VAE

from pyrovae.data import gaussian_mixture_1d, gaussian_mixture_1d_log_density
from pyrovae.experiment import experiment_parser, positive_float, positive_int, result_settings, setup, write_metrics
from pyrovae.infer import log_likelihood_in_parts, train
from pyrovae.likelihoods import Gaussian
from pyrovae.plots import save
from pyrovae.sweep import Sweep

QUICK = {"epochs": 0, "steps": 500, "num_data": 5000, "num_test": 1000, "num_samples": 50, "sweep": [5.0]}
parser = experiment_parser(__doc__, epochs=0, out="results/mixture_1d", quick=QUICK, resumable=True)
parser.add_argument("--steps", type=positive_int, default=40_000,
                    help="SGD steps per VAE (the notebook's); used when --epochs is 0")
parser.add_argument("--num-data", type=positive_int, default=200_000, help="training points drawn from p_data")
parser.add_argument("--num-test", type=positive_int, default=10_000, help="held-out points scored")
parser.add_argument("--num-samples", type=positive_int, default=500, help="importance samples per held-out point")
parser.add_argument("--hidden", type=positive_int, default=100,
                    help="width of the two tanh hidden layers of the encoder and of the decoder")
parser.add_argument("--batch-size", type=positive_int, default=256, help="points per SGD step")
parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
parser.add_argument("--inverse-variance", type=positive_float, default=500.0, help="1/sigma^2 of the main run")
parser.add_argument("--sweep", type=positive_float, nargs="*", default=[0.5, 5.0, 50.0, 500.0, 5000.0],
                    help="inverse variances compared (empty: only the main run)")
args = parser.parse_args()
device = setup(args)

train_data = gaussian_mixture_1d(args.num_data, seed=args.seed)
test_data = gaussian_mixture_1d(args.num_test, seed=args.seed + 1)
steps_per_epoch = math.ceil(args.num_data / args.batch_size)
epochs = args.epochs if args.epochs > 0 else max(1, round(args.steps / steps_per_epoch))
data_ceiling = gaussian_mixture_1d_log_density(test_data.x.squeeze(-1)).mean().item()
print(f"{args.num_data} training points, {epochs} epochs of {steps_per_epoch} steps; "
      f"held-out E[log p_data(x)] = {data_ceiling:.4f} nats (the best any model can do)")

inverse_variances = sorted(set(args.sweep) | {args.inverse_variance})


def label(inverse_variance: float) -> str:
    """A setting's name in metrics.json and in OUT's files: short where that names it exactly."""
    short = f"{inverse_variance:g}"
    return short if float(short) == inverse_variance else repr(inverse_variance)


runs = {}
# checkpoints and score parts resume an interrupted run; the sweep may grow, other settings are refused
out = Path(args.out)
sweep = Sweep(out / "runs.json", settings=result_settings(args, exclude=("sweep", "inverse_variance")))
for inverse_variance in inverse_variances:
    torch.manual_seed(args.seed)  # each setting's start its own: the same in a grown sweep as in a fresh one
    model = VAE(1, 1, (args.hidden, args.hidden), Gaussian(inverse_variance=inverse_variance), activation="tanh")
    guide = NormalGuide(1, 1, (args.hidden, args.hidden), activation="tanh")
    key = f"inverse_variance_{label(inverse_variance)}"
    history = train(model, guide, train_data.to(device), epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                    elbo="jit", val_data=test_data.to(device), restore_best=False, device=device, seed=args.seed,
                    progress=not args.no_progress, checkpoint=sweep.checkpoint_path(key))
    seconds = sum(history["seconds"])  # those of an interrupted earlier run included
    ll = log_likelihood_in_parts(model, guide, test_data.to(device), out / "scores" / key, part_size=2000,
                                 seed=args.seed, num_samples=args.num_samples, batch_size=1024, proposal=args.proposal,
                                 refine_steps=args.refine_steps)
    last = history.last
    runs[inverse_variance] = {"model": model, "guide": guide, "history": history, "ll": ll}
    print(f"1/sigma^2 = {inverse_variance:>7g}: log p(x) {ll.mean:8.4f} +/- {ll.stderr:.4f}  "
          f"ELBO {last['val_elbo']:8.4f}  KL {last['val_kl']:7.4f}  k>0.7 {(ll.khat > 0.7).float().mean():6.1%}  "
          f"{seconds:6.1f} s")


# ----------------------------------------------------------------------------------------------- figures
grid = torch.linspace(-6.0, 8.0, 1000)
p_data = gaussian_mixture_1d_log_density(grid).exp().numpy()
standard_normal = np.exp(-0.5 * grid.numpy() ** 2) / math.sqrt(2 * math.pi)


@torch.no_grad()
def draws(model, guide, x, num_generated=20_000):
    """q(z|x) draws for x, the decoder mean at those z, and (z, x) pairs generated from the prior."""
    model, guide = model.cpu().eval(), guide.cpu().eval()
    z = guide.encode(x).sample()
    decoded = model.decode(z).mean
    generated, z_new = model.sample(num_generated, return_latents=True)
    return z.squeeze(-1), decoded.squeeze(-1), z_new.squeeze(-1), generated.squeeze(-1)


def joint_panel(fig, rect, x, z, title, colour, line=False, x_label="x", x_colour="r", z_colour="g"):
    """A scatter of (x, z) with the marginal histograms: x against p_data below, z against N(0, 1) left."""
    left, bottom, width, height = rect
    margin = 0.06
    ax = fig.add_axes([left + margin, bottom + margin, width - margin, height - margin])
    below = fig.add_axes([left + margin, bottom, width - margin, margin], sharex=ax)
    side = fig.add_axes([left, bottom + margin, margin, height - margin], sharey=ax)
    x, z = x.numpy(), z.numpy()
    if line:
        order = np.argsort(z)
        ax.plot(x[order], z[order], color=colour, lw=1.5, label="decoder mean E[x | z]")
    else:
        ax.scatter(x[::10], z[::10], s=0.2, color=colour, alpha=0.5)
    ax.set_xlim(-6, 8)
    ax.set_ylim(-4, 4)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.tick_params(labelbottom=False, labelleft=False)
    below.hist(np.clip(x, -6, 8), 150, range=(-6, 8), density=True, color=x_colour, alpha=0.6)
    below.plot(grid, p_data, "k", lw=1)
    below.invert_yaxis()
    below.set_yticks([])
    below.set_xlabel(x_label)
    side.hist(np.clip(z, -4, 4), 100, range=(-4, 4), density=True, color=z_colour, alpha=0.6, orientation="horizontal")
    side.plot(standard_normal, grid, "k", lw=1)
    side.invert_xaxis()
    side.set_xticks([])
    side.set_ylabel("z")
    if line:
        ax.legend(loc="upper left", fontsize="small")


main = runs[args.inverse_variance]
x_train = train_data.x[:50_000]
z, decoded, z_new, generated = draws(main["model"], main["guide"], x_train)
fig = plt.figure(figsize=(15, 5))
fig.suptitle(f"1-D VAE, 1/sigma^2 = {args.inverse_variance:g}: held-out log p(x) {main['ll'].mean:.3f} "
             f"(p_data: {data_ceiling:.3f})")
joint_panel(fig, (0.03, 0.08, 0.29, 0.8), x_train.squeeze(-1), z, "encoding training data: z ~ q(z | x)", "C0")
joint_panel(fig, (0.36, 0.08, 0.29, 0.8), decoded, z, "decoding: E[x | z] at those z", "C1", line=True,
            x_label="E[x | z]")
joint_panel(fig, (0.69, 0.08, 0.29, 0.8), generated, z_new, "generation: z ~ N(0, 1), x ~ p(x | z)", "C2",
            x_colour="b", z_colour="c")
save(fig, f"{args.out}/mixture_1d.png")

fig, axes = plt.subplots(2, len(inverse_variances), figsize=(3.6 * len(inverse_variances), 6.4), squeeze=False,
                         sharex=True)
for column, (inverse_variance, run) in enumerate(runs.items()):
    z, decoded, z_new, generated = draws(run["model"], run["guide"], test_data.x)
    ax = axes[0, column]
    ax.hist(generated.clamp(-6, 8).numpy(), 150, range=(-6, 8), density=True, color="C0", alpha=0.6,
            label="generated")
    ax.plot(grid, p_data, "k", lw=1, label="p_data")
    ax.set_title(f"1/sigma^2 = {inverse_variance:g}\nlog p(x) = {run['ll'].mean:.3f}, "
                 f"KL = {run['history'].last['val_kl']:.2f}", fontsize="medium")
    ax.set_yticks([])
    ax = axes[1, column]
    with torch.no_grad():
        curve = run["model"].decode(torch.linspace(-3, 3, 400).unsqueeze(-1)).mean.squeeze(-1)
    ax.scatter(test_data.x[::5].squeeze(-1), z[::5], s=0.3, alpha=0.4, color="C1", label="z ~ q(z | x)")
    ax.plot(curve, torch.linspace(-3, 3, 400), "k", lw=1.2, label="E[x | z]")
    ax.set_ylim(-3.5, 3.5)
    ax.set_xlabel("x")
    if column == 0:
        axes[0, 0].legend(fontsize="small")
        ax.legend(fontsize="small", loc="lower right")
        ax.set_ylabel("z")
fig.suptitle(f"generation (top) and encoder/decoder (bottom) per decoder inverse variance; "
             f"p_data: {data_ceiling:.3f} nats")
fig.tight_layout()
save(fig, f"{args.out}/sweep.png")

metrics = {
    "num_train": args.num_data, "num_test": args.num_test, "epochs": epochs, "steps": epochs * steps_per_epoch,
    "data_log_density": data_ceiling,
    "runs": {label(iv): {**run["ll"].summary(), "test_elbo": run["history"].last["val_elbo"],
                         "test_kl": run["history"].last["val_kl"],
                         "test_reconstruction": run["history"].last["val_reconstruction"],
                         "train_seconds": sum(run["history"]["seconds"])}
             for iv, run in runs.items()},
}
write_metrics(args.out, metrics, args)
print(f"figures and metrics.json in {args.out}")
