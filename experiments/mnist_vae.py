"""MNIST VAEs with a 2-D latent (notebook 003, MNIST parts): an MLP VAE and the notebook's conv VAE.

MLP VAE 784-100-20-2 (ReLU). The notebook trains it full-batch on the first 10,000 training images for 250
steps with "MSE summed over pixels + KL" as the loss: the negative ELBO of a Gaussian likelihood of variance
1/2 on grey levels (``--likelihood gaussian``, the default). ``--likelihood bernoulli`` models dynamically
binarised pixels instead.

Conv VAE of the notebook: two 3x3 convs (4 and 8 channels), 2x2 max-pool, dropout 0.25, linear 1152-256;
back through linear 2-256-1152 and three transposed convs to 28x28. The notebook's BCE on grey levels with
a sigmoid output is, in expectation, the Bernoulli log-likelihood of dynamically binarised pixels, which is
what is trained here (logits out, no sigmoid: the stable form), with the KL term weighted 2 as in the
notebook and mini-batches of 256.

Each model is scored by the importance-sampled log-likelihood of test images (with k-hat); figures: the
latent means of 10,000 test images coloured by digit, the decoding of a chosen latent point (``--point``),
and a 20x20 grid of decodings over the latent plane.

Nothing is lost to an interruption: each model is checkpointed after every epoch (every step of the full-batch MLP)
and its scores saved in parts (``OUT/checkpoints``, ``OUT/scores``); the same command resumes, and a rerun with
other settings is refused (``OUT/runs.json.settings.json``).
"""

from pathlib import Path

import matplotlib.pyplot as plt
import torch
from pyrovae.guides import NormalGuide
from pyrovae.models import VAE
from scipy.stats import norm
from torch import nn

from pyrovae.data import binarize_split, load_mnist
from pyrovae.experiment import (
    experiment_parser,
    non_negative_float,
    positive_float,
    positive_int,
    result_settings,
    setup,
    write_metrics,
)
from pyrovae.infer import log_likelihood_in_parts, train
from pyrovae.likelihoods import Gaussian
from pyrovae.plots import image_grid, latent_scatter, save, show_images
from pyrovae.sweep import Sweep

QUICK = {"mlp_steps": 20, "num_train": 2000, "num_test": 500, "num_ll": 100, "num_samples": 50}
parser = experiment_parser(__doc__, epochs=10, out="results/mnist_vae", quick=QUICK, resumable=True)
parser.add_argument("--likelihood", choices=["gaussian", "bernoulli"], default="gaussian",
                    help="MLP VAE: Gaussian (MSE) on grey levels, or Bernoulli on dynamically binarised pixels")
parser.add_argument("--mlp-steps", type=positive_int, default=250, help="full-batch steps of the MLP VAE")
parser.add_argument("--num-train", type=positive_int, default=10_000,
                    help="training images used (the notebook: 10,000)")
parser.add_argument("--batch-size", type=positive_int, default=256, help="mini-batch of the conv VAE")
parser.add_argument("--kl-weight", type=non_negative_float, default=2.0, help="weight of the conv VAE's KL term")
parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate of both VAEs")
parser.add_argument("--point", type=float, nargs=2, default=[-2.0, 3.0], metavar=("Z1", "Z2"),
                    help="latent point whose decoding is shown")
parser.add_argument("--num-test", type=positive_int, default=10_000, help="test images in the latent scatter")
parser.add_argument("--num-ll", type=positive_int, default=1000, help="test images scored by importance sampling")
parser.add_argument("--num-samples", type=positive_int, default=500, help="importance samples per scored image")
parser.add_argument("--skip-conv", action="store_true", help="train only the MLP VAE")
args = parser.parse_args()
device = setup(args)

try:
    grey_train, grey_test = load_mnist(args.data_dir)
    binary_train, binary_test = binarize_split(grey_train, grey_test, "dynamic", seed=args.seed)
    image_shape, dataset = (28, 28), "MNIST"
except FileNotFoundError as error:
    message = f"{error}\nthis experiment needs MNIST (28x28); the conv nets do not fit sklearn's 8x8 digits"
    raise SystemExit(message) from error
first = torch.arange(min(args.num_train, len(grey_train)))
grey_train, binary_train = grey_train.subset(first), binary_train.subset(first)
test_index = torch.arange(min(args.num_test, len(grey_test)))
ll_index = torch.arange(min(args.num_ll, len(grey_test)))
print(f"{dataset}: {len(grey_train)} training images, {len(test_index)} test images plotted, {len(ll_index)} scored")


class NotebookConvEncoder(nn.Module):
    """conv 1->4 and 4->8 (3x3), max-pool 2, dropout, linear 1152->256, dropout: (..., 784) -> (..., 2 z_dim)."""

    def __init__(self, z_dim: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Flatten(), nn.Linear(1152, 256), nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, 2 * z_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x.reshape(-1, 1, 28, 28))
        return out.reshape(*x.shape[:-1], out.shape[-1])


class NotebookConvDecoder(nn.Module):
    """linear z->256->1152, transposed convs 8->4 (stride 2), 4->2, 2->1: (..., z_dim) -> (..., 784) logits."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(z_dim, 256), nn.ReLU(), nn.Linear(256, 1152), nn.ReLU(), nn.Unflatten(1, (8, 12, 12)),
            nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(4, 2, 3), nn.ReLU(), nn.ConvTranspose2d(2, 1, 3),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.body(z.reshape(-1, z.shape[-1]))
        return out.reshape(*z.shape[:-1], 784)


z_dim, runs = 2, {}
if args.likelihood == "gaussian":  # MSE summed over pixels = Gaussian log-likelihood with variance 1/2
    mlp_data, mlp_test, likelihood = grey_train, grey_test, Gaussian(inverse_variance=2.0)
else:
    mlp_data, mlp_test, likelihood = binary_train, binary_test, "bernoulli"
models = {
    f"MLP VAE ({args.likelihood})": (
        VAE(784, z_dim, hidden=(100, 20), likelihood=likelihood), NormalGuide(784, z_dim, hidden=(100, 20)),
        mlp_data, mlp_test, dict(epochs=args.mlp_steps, batch_size=len(mlp_data)),
    ),
}
if not args.skip_conv:
    models["conv VAE (bernoulli)"] = (
        VAE(784, z_dim, likelihood="bernoulli", decoder=NotebookConvDecoder(z_dim)),
        NormalGuide(784, z_dim, encoder=NotebookConvEncoder(z_dim)),
        binary_train, binary_test, dict(epochs=args.epochs, batch_size=args.batch_size, kl_weight=args.kl_weight),
    )

# checkpoints and score parts resume an interrupted run; other settings are refused (those of the figures alone
# may change, and the conv VAE may be added)
out = Path(args.out)
sweep = Sweep(out / "runs.json", settings=result_settings(args, exclude=("skip_conv", "point", "num_test")))
for name, (model, guide, data, test, options) in models.items():
    print(f"\n{name}")
    history = train(model, guide, data.to(device), lr=args.lr, elbo="jit", val_data=test.subset(ll_index).to(device),
                    restore_best=False, device=device, seed=args.seed, progress=not args.no_progress,
                    checkpoint=sweep.checkpoint_path(name), **options)
    seconds = sum(history["seconds"])  # those of an interrupted earlier run included
    ll = log_likelihood_in_parts(model, guide, test.subset(ll_index).to(device),
                                 out / "scores" / name.replace(" (", "_").replace(" ", "_").rstrip(")"),
                                 part_size=100, seed=args.seed, num_samples=args.num_samples, proposal=args.proposal,
                                 refine_steps=args.refine_steps)
    last = history.last
    print(f"test log p(x) {ll.mean:.2f} +/- {ll.stderr:.2f}, ELBO {last['val_elbo']:.2f} "
          f"(reconstruction {last['val_reconstruction']:.2f}, KL {last['val_kl']:.2f}), "
          f"k-hat > 0.7 for {(ll.khat > 0.7).float().mean():.1%}; trained in {seconds:.1f} s")
    runs[name] = {"model": model.cpu().eval(), "guide": guide.cpu().eval(), "test": test, "history": history,
                  "metrics": {**ll.summary(), "test_elbo": last["val_elbo"], "test_kl": last["val_kl"],
                              "test_reconstruction": last["val_reconstruction"], "train_seconds": seconds,
                              "likelihood": type(model.likelihood).__name__, "history": history.to_dict()}}

# ----------------------------------------------------------------------------------------------- figures
quantiles = torch.as_tensor(norm.ppf(torch.linspace(0.05, 0.95, 20).numpy()), dtype=torch.float32)
point = torch.tensor([args.point])
for name, run in runs.items():
    model, guide, slug = run["model"], run["guide"], name.split(" (")[0].replace(" ", "_").lower()
    with torch.no_grad():
        codes = guide.encode(run["test"].x[test_index]).mean
        z1, z2 = torch.meshgrid(quantiles, quantiles.flip(0), indexing="xy")
        plane = model.decode(torch.stack([z1, z2], dim=-1).reshape(-1, 2)).mean
        decoded_point = model.decode(point).mean
    fig = plt.figure(figsize=(19, 6.2))
    ax = fig.add_axes([0.03, 0.08, 0.3, 0.82])
    latent_scatter(ax, codes, grey_test.labels[test_index], title=f"{name}: latent means of {len(codes)} test images")
    ax.scatter(*args.point, marker="*", s=250, color="k", label=f"z = ({args.point[0]:g}, {args.point[1]:g})")
    ax.add_patch(plt.Rectangle((quantiles[0], quantiles[0]), quantiles[-1] - quantiles[0],
                               quantiles[-1] - quantiles[0], fill=False, ls="--", color="0.4"))
    ax = fig.add_axes([0.36, 0.08, 0.14, 0.82])
    show_images(ax, decoded_point, image_shape, num_columns=1,
                title=f"decoding of z = ({args.point[0]:g}, {args.point[1]:g})")
    ax = fig.add_axes([0.53, 0.04, 0.44, 0.9])
    ax.imshow(image_grid(plane, image_shape, num_columns=20, padding=0), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title("decoder means over the latent plane (normal quantiles 0.05-0.95; dashed box, left)")
    ax.set_axis_off()
    save(fig, f"{args.out}/{slug}.png")

metrics = {"dataset": dataset, "num_train": len(grey_train), "num_scored": len(ll_index),
           "runs": {name: run["metrics"] for name, run in runs.items()}}
write_metrics(args.out, metrics, args)
print(f"\nfigures and metrics.json in {args.out}")
