"""Quickstart (`make run`): VAEs on MNIST, one model with swapped guides, scored by held-out log-likelihood.

Trains the same Bernoulli decoder model three ways -- with a Gaussian guide on the ELBO, with a Gaussian
guide on the IWAE bound, and as an auto-encoder (point-mass guide, MAP) -- and the hyperspherical VAE
(uniform prior on the sphere S^d in R^(d+1)) with its two guides, von Mises-Fisher and Power Spherical,
swapped in one line on the same model class. Each is then scored by the
importance-sampled log-likelihood of held-out images with Pareto k-hat diagnostics, twice: with the guide as the
proposal, and with the reliable one (each image's guide refined against the frozen decoder, mixed with a wider copy
of itself). For the VAE, a gap report on a subset splits its ELBO's distance to log p(x) into the amortisation and
approximation gaps, with a flow guide refitted to its decoder and annealed importance sampling as the reference.
The auto-encoder's
point-mass guide cannot serve as an importance distribution, so a Gaussian guide is refitted to its frozen
decoder first: swapping guides on a trained model. Falls back to scikit-learn's 8x8 digits when MNIST is
not found.

Nothing is lost to an interruption: each model (and each refit guide) is checkpointed after every epoch and its
scores saved in parts (``OUT/checkpoints``, ``OUT/scores``); the same command resumes, and a rerun with other
settings is refused (``OUT/runs.json.settings.json``). The gap report (a few minutes) is made afresh each time.
"""

import sys
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from pyrovae.guides import FlowGuide, NormalGuide

from pyrovae import make_pair
from pyrovae.data import load_digits, load_mnist
from pyrovae.experiment import (
    experiment_parser,
    non_negative_int,
    positive_int,
    result_settings,
    setup,
    write_metrics,
)
from pyrovae.infer import gap_report, locate, log_likelihood_in_parts, reconstruct, refit_guide, train
from pyrovae.infer.estimation import RefinedProposal
from pyrovae.plots import latent_scatter, save, show_images
from pyrovae.sweep import Sweep

QUICK = {"max_train": 2000, "num_test": 200, "num_samples": 100, "hidden": 200, "gap_images": 20, "ais_chains": 50,
         "flow_epochs": 1}
parser = experiment_parser(__doc__, epochs=4, out="results/quickstart", quick=QUICK, proposal=False,
                           resumable=True)
parser.add_argument("--z-dim", type=positive_int, default=20,
                    help="latent dimension d (the S-VAEs: the sphere S^d in R^(d+1))")
parser.add_argument("--hidden", type=positive_int, default=400,
                    help="width of the one hidden layer of every encoder and decoder")
parser.add_argument("--batch-size", type=positive_int, default=128, help="images per training batch")
parser.add_argument("--num-samples", type=positive_int, default=500, help="importance samples per test image")
parser.add_argument("--num-test", type=positive_int, default=1000, help="test images scored")
parser.add_argument("--refine-steps", type=positive_int, default=None,
                    help="optimisation steps of the refined proposal, in the table and the gap report (default: 100)")
parser.add_argument("--max-train", type=positive_int, default=None, help="use only this many training images")
parser.add_argument("--gap-images", type=non_negative_int, default=100,
                    help="test images in the VAE's gap report (0: none)")
parser.add_argument("--ais-chains", type=positive_int, default=500, help="AIS chains per image in the gap report")
parser.add_argument("--flow-epochs", type=positive_int, default=4,
                    help="epochs to refit the flow guide of the gap report")
args = parser.parse_args()
device = setup(args)

try:
    train_data, test_data = load_mnist(args.data_dir, binarize="dynamic")
    dataset, image_shape = "MNIST", (28, 28)
except FileNotFoundError as missing:
    print(f"MNIST not found ({missing}); falling back to scikit-learn's 8x8 digits, whose numbers are not MNIST's: "
          "give --data-dir the folder holding mnist/ for MNIST", file=sys.stderr, flush=True)
    train_data, test_data = load_digits(binarize="dynamic", seed=args.seed)
    dataset, image_shape = "sklearn digits 8x8", (8, 8)
if args.max_train:
    train_data = train_data.subset(torch.arange(min(args.max_train, len(train_data))))
test_data = test_data.subset(torch.arange(min(args.num_test, len(test_data))))
train_data, test_data = train_data.to(device), test_data.to(device)
x_dim, z_dim, hidden = train_data.num_features, args.z_dim, (args.hidden,)
print(f"{dataset}: {len(train_data)} training and {len(test_data)} test images on {device}")

# the test images are watched, never chosen on: each model is scored as its last epoch left it
common = dict(epochs=args.epochs, batch_size=args.batch_size, val_data=test_data, restore_best=False, device=device,
              seed=args.seed, progress=not args.no_progress)
runs = {}
# checkpoints and score parts resume an interrupted run; other settings are refused (the gap report's may change)
out = Path(args.out)
sweep = Sweep(out / "runs.json", settings=result_settings(args, exclude=("gap_images", "ais_chains", "flow_epochs")))


def fit(name, model, guide, **options):
    history = train(model, guide, train_data, checkpoint=sweep.checkpoint_path(name), **{**common, **options})
    # the seconds of an interrupted earlier run included
    runs[name] = {"model": model, "guide": guide, "history": history, "seconds": sum(history["seconds"])}


fit("VAE, ELBO", *make_pair("vae", x_dim, z_dim, hidden), elbo="jit")
fit("VAE, IWAE k=5", *make_pair("vae", x_dim, z_dim, hidden), elbo="iwae", num_particles=5)
# the S-VAE: latents on the sphere S^z_dim in R^(z_dim + 1), with either guide; both trace (elbo="jit")
fit("S-VAE, vMF", *make_pair("svae-vmf", x_dim, z_dim, hidden), elbo="jit")
fit("S-VAE, Power Spherical", *make_pair("svae-power", x_dim, z_dim, hidden), elbo="jit")
fit("AE (MAP)", *make_pair("ae", x_dim, z_dim, hidden), elbo="jit")
# swap guides: a Gaussian guide refitted to the auto-encoder's frozen decoder makes its likelihood measurable
autoencoder, refitted = runs["AE (MAP)"]["model"], NormalGuide(x_dim, z_dim, hidden)
history, _ = refit_guide(autoencoder, refitted, train_data, checkpoint=sweep.checkpoint_path("AE (MAP) + refit guide"),
                         **{**common, "elbo": "jit"})
runs["AE (MAP) + refit guide"] = {"model": autoencoder, "guide": refitted, "history": history,
                                  "seconds": runs["AE (MAP)"]["seconds"] + sum(history["seconds"])}

metrics = {"dataset": dataset, "num_train": len(train_data), "num_test": len(test_data), "runs": {}}
print(f"\nheld-out log-likelihood, {args.num_samples} importance samples per image (nats, higher is better),")
print("with the guide as proposal and with the refined+defensive proposal; k>0.7: share of images whose Pareto")
print("k-hat is above 0.7, unreliable at any number of draws (at 500 the limit is 0.63: LogLikelihood.khat_limits)")
header = ("model / guide", "test ELBO", "guide", "k>0.7", "refined", "+/-", "k>0.7", "train s")
print("".join(f"{text:>{width}}" if i else f"{text:<{width}}"
              for i, (text, width) in enumerate(zip(header, (26, 10, 9, 7, 9, 6, 7, 8), strict=True))))
for name, run in runs.items():
    if name == "AE (MAP)":
        continue  # a point mass is no importance distribution: scored through its refitted guide
    scores = out / "scores" / sweep.checkpoint_path(name).stem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the guide's k-hat warning: the refined row is the answer to it
        plain = log_likelihood_in_parts(run["model"], run["guide"], test_data, scores / "guide", seed=args.seed,
                                        num_samples=args.num_samples, proposal="guide")
    ll = log_likelihood_in_parts(run["model"], run["guide"], test_data, scores / "refined", seed=args.seed,
                                 num_samples=args.num_samples, proposal="refined+defensive",
                                 refine_steps=args.refine_steps, progress=not args.no_progress)
    elbo = run["history"].last["val_elbo"]
    print(f"{name:<26}{elbo:>10.2f}{plain.mean:>9.2f}{(plain.khat > 0.7).float().mean():>7.1%}{ll.mean:>9.2f}"
          f"{ll.stderr:>6.2f}{(ll.khat > 0.7).float().mean():>7.1%}{run['seconds']:>8.1f}")
    metrics["runs"][name] = {"test_elbo": elbo, "test_kl": run["history"].last["val_kl"], **ll.summary(),
                             "guide_proposal": plain.summary(), "train_seconds": run["seconds"],
                             "history": run["history"].to_dict()}

if args.gap_images:
    # the gap report: how far the VAE's ELBO is from log p(x), and how much of it the encoder (amortisation) and
    # the Gaussian family (approximation) explain; a flow guide refitted to the frozen decoder is the richer family
    vae = runs["VAE, ELBO"]
    flow = FlowGuide(x_dim, z_dim, hidden)
    refit_guide(vae["model"], flow, train_data, **{**common, "epochs": args.flow_epochs, "val_data": None})
    subset = test_data.subset(torch.arange(min(args.gap_images, len(test_data))))
    report = gap_report(vae["model"], vae["guide"], subset, num_samples=args.num_samples, flow_guide=flow,
                        refine=RefinedProposal(steps=args.refine_steps), ais_chains=args.ais_chains,
                        progress=not args.no_progress)
    print(f"\ngap report, VAE (ELBO), {len(subset)} test images:\n{report}")
    metrics["gap_report"] = {"num_images": len(subset), **report.to_dict()}

vae = runs["VAE, ELBO"]
codes, reconstructions = locate(vae["guide"], test_data.x), reconstruct(vae["model"], vae["guide"], test_data.x)
samples = vae["model"].sample(40, mean=True)
fig, axes = plt.subplots(1, 3, figsize=(16, 5))
pairs = torch.cat([test_data.x[:20], reconstructions[:20]])
show_images(axes[0], pairs, image_shape, title="test images (top) / reconstructions (bottom)")
show_images(axes[1], samples, image_shape, title="samples from the prior (decoder means)")
latent_scatter(axes[2], codes, test_data.labels, title="latent means of test images")
save(fig, f"{args.out}/vae.png")
write_metrics(args.out, metrics, args)
print(f"\nfigures and metrics.json in {args.out}")
