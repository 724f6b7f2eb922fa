"""Plates as covariates on the Tahoe-schema atlas: the S-VAE and the N-VAE, with and without the plate, and with a
whole plate held out.

Six runs of ``experiments/tahoe_svae.py`` on one generated atlas (``OUT/atlas``, made once and shared), each in
``OUT/<model>-<setting>`` (``OUT/<model>-held-out-<plate>``) with its own log, figures and ``metrics.json``:

- ``--models``: ``svae`` (uniform prior on S^9, vMF guide) and ``nvae`` (R^10, Normal guide);
- ``--settings``: ``covariate`` (the plate conditions encoder and decoder; 5% of the cells held out at random),
  ``none`` (no covariate, the same held-out cells) and ``held-out`` (no covariate; every cell of
  ``--held-out-plate`` is the test set: a covariate cannot be conditioned on for a plate never trained on).

Then one table (``OUT/table.md``, printed) and one figure (``OUT/plates.png``): held-out log p(x) per cell with the
certified share, KMeans ARI against cell line and drug, the plates' mixing in the latent space (iLISI, batch ASW
within cell lines), the KL and seconds per epoch; and the paired differences of log p(x) between runs scored on the
same cells (with the plate minus without, S-VAE minus N-VAE: the mean of per-cell differences and its standard
error, far smaller than the rows' own, which hold the spread of the cells).

Options this script does not know are passed to every run (``--workers 0``, ``--num-samples 500``,
``--scored-cells 1000``, ``--synthetic-cells 200000``, ``--source DIR`` for a real atlas, ...; see ``tahoe_svae.py
--help``; other atlas options need another ``--out``, or ``OUT/atlas`` deleted). A run whose ``metrics.json`` was
written by the same command line, forwarded options included, is kept; any other is run, resuming from its checkpoint
and its saved scores where they hold the same settings (a run refuses a checkpoint of other training settings:
delete its folder to redo it). ``--jobs N`` runs N at once (on the CPU each gets a share of the cores); when one
fails, the others stop.
"""

import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from pyrovae.experiment import experiment_parser, positive_int, run_jobs, setup, write_metrics
from pyrovae.infer import LogLikelihood
from pyrovae.plots import save

MODELS = {"svae": ("vmf", "S-VAE, vMF on S^9"), "nvae": ("normal", "N-VAE, R^10")}
SETTINGS = ("covariate", "none", "held-out")
COLOURS = {("svae", "covariate"): "tab:red", ("svae", "none"): "salmon", ("svae", "held-out"): "darkred",
           ("nvae", "covariate"): "tab:blue", ("nvae", "none"): "lightsteelblue", ("nvae", "held-out"): "navy"}
SET_HERE = {"--out", "--atlas-dir", "--guide", "--covariates", "--hold-out", "--device", "--seed", "--epochs",
            "--proposal", "--refine-steps", "--no-progress", "--quick", "--data-dir"}

parser = experiment_parser(__doc__, epochs=10, out="results/tahoe_plates",
                           quick={"proposal": "refined+defensive"}, resumable=True)  # no AIS in a smoke run
parser.set_defaults(proposal="auto")
parser.epilog = ("Options not listed here are passed to every tahoe_svae.py run (see its --help), e.g. --workers 0 "
                 "--num-samples 500 --source DIR.")
parser.allow_abbrev = False  # an option of tahoe_svae (--held-out) must not be read as an abbreviation of ours
parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="latent geometries")
parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS), help="plate settings")
parser.add_argument("--held-out-plate", default="plate4", help="the plate held out by the 'held-out' setting")
parser.add_argument("--jobs", type=positive_int, default=1, help="runs at once, each in its own process")
next(a for a in parser._actions if a.dest == "quick").help = (
    "each run with tahoe_svae.py's --quick (a 4,000-cell atlas), --epochs 1 and --proposal refined+defensive "
    f"unless given, into {parser.get_default('out')}-quick unless --out is given")
args, passed_on = parser.parse_known_args()
# tahoe_svae reads abbreviations (--ep for --epochs): a word is ours if it begins one of our options
clashing = sorted({word for word in (w.split("=", 1)[0] for w in passed_on if w.startswith("--"))
                   if any(option.startswith(word) for option in SET_HERE)})
if clashing:
    parser.error(f"{', '.join(clashing)} cannot be passed to the runs: this script sets them for each run")
device = setup(args)
out = Path(args.out)
sys.stdout.reconfigure(line_buffering=True)  # each run's start and end as it happens, also into a log file


def name(model: str, setting: str) -> str:
    return f"{model}-{setting}" + (f"-{args.held_out_plate}" if setting == "held-out" else "")


def command(model: str, setting: str) -> list[str]:
    words = [sys.executable, str(Path(__file__).with_name("tahoe_svae.py")), "--out", str(out / name(model, setting)),
             "--atlas-dir", str(out / "atlas"), "--device", str(device), "--seed", str(args.seed), "--epochs",
             str(args.epochs), "--proposal", args.proposal, "--guide", MODELS[model][0], "--no-progress",
             "--covariates", *(["plate"] if setting == "covariate" else []),
             "--hold-out", *([f"plate={args.held_out_plate}"] if setting == "held-out" else [])]
    words += ["--quick"] if args.quick else []  # tahoe_svae's tiny atlas and settings
    words += ["--data-dir", args.data_dir] if args.data_dir is not None else []
    words += ["--refine-steps", str(args.refine_steps)] if args.refine_steps is not None else []
    return words + passed_on


def finished(model: str, setting: str) -> dict | None:
    """The run's metrics.json when that run was made by this very command line (every option, forwarded ones too),
    else None."""
    path = out / name(model, setting) / "metrics.json"
    record = json.loads(path.read_text()) if path.exists() else None
    if not (out / name(model, setting) / "held_out_scores.pt").exists():  # a run of before the per-cell scores
        return None  # (run again: it resumes from its checkpoint and saved parts)
    return record if record is not None and record.get("command", [])[1:] == command(model, setting)[2:] else None


runs = [(m, s) for m in args.models for s in args.settings]
waiting = [r for r in runs if finished(*r) is None]
for run in runs:
    if run not in waiting:
        print(f"kept {name(*run)} (its metrics.json was made by the same command)")
run_jobs({run: (command(*run), out / f"{name(*run)}.log", name(*run)) for run in waiting}, args.jobs, device)

# --- the table and the figure -----------------------------------------------------------------------------------
rows = []
for model, setting in runs:
    record = finished(model, setting)
    if record is None:  # a run exits 0 only after writing its metrics.json
        raise SystemExit(f"{name(model, setting)} finished without a metrics.json of this command: see its log")
    m = record["metrics"]
    plate = {"covariate": "covariate", "none": "none", "held-out": f"{args.held_out_plate} held out"}[setting]
    mixing = m["plate_mixing"] if setting != "held-out" else {"ilisi": None, "batch_asw": None}
    rows.append({"run": name(model, setting), "model": MODELS[model][1], "plate": plate,
                 "log_likelihood": m["held_out_log_likelihood"], "stderr": m["held_out_log_likelihood_stderr"],
                 "certified": m["certified"], "ari_cell_line": m["kmeans_vs_cell_line"]["ari"],
                 "ari_drug": m["kmeans_vs_drug"]["ari"], "ilisi": mixing["ilisi"], "batch_asw": mixing["batch_asw"],
                 "kl": m["history"][-1]["val_kl"], "seconds_per_epoch": m["seconds_per_epoch"],
                 "held_out_cells": m["held_out_cells"], "scored_cells": m.get("scored_cells", m["held_out_cells"]),
                 "epochs": m["epochs"], "colour": COLOURS[model, setting]})


def shown(value, form="{:.3f}") -> str:
    return "-" if value is None else form.format(value)


table = ["| model | plate | held-out log p(x) per cell | certified | cells scored / analysed | "
         "KMeans vs cell line (ARI) | vs drug (ARI) | iLISI (plates) | batch ASW | KL | s/epoch |", "|---" * 11 + "|"]
table += [f"| {r['model']} | {r['plate']} | {r['log_likelihood']:.2f} ± {r['stderr']:.2f} | {r['certified']:.1%} | "
          f"{r['scored_cells']:,} / {r['held_out_cells']:,} | "
          f"{r['ari_cell_line']:.3f} | {r['ari_drug']:.3f} | {shown(r['ilisi'])} | {shown(r['batch_asw'])} | "
          f"{r['kl']:.2f} | {r['seconds_per_epoch']:.1f} |" for r in rows]


def scores(model: str, setting: str) -> tuple[torch.Tensor, LogLikelihood]:
    """A run's held-out cells' atlas ids and their log p(x) estimates (``held_out_scores.pt``)."""
    record = torch.load(out / name(model, setting) / "held_out_scores.pt", weights_only=True)
    return record.pop("cell_ids"), LogLikelihood(**record)


# the paired differences: two runs scored on the same cells differ by far less than their means' standard errors say
pairs = [((m, "covariate"), (m, "none")) for m in args.models]
pairs += [(("svae", s), ("nvae", s)) for s in args.settings]
differences = []
for first, second in (pair for pair in pairs if all(run in runs for run in pair)):
    (ids, estimate), (other_ids, other) = scores(*first), scores(*second)
    if not torch.equal(ids, other_ids):
        raise SystemExit(f"{name(*first)} and {name(*second)} scored different cells; run both with the same "
                         "--seed, --held-out and --scored-cells")
    differences.append({"first": name(*first), "second": name(*second), **estimate.compare(other)})
if differences:
    table += ["", "| runs (first - second) | cells | log p(x) difference per cell | both certified |", "|---" * 4 + "|"]
    table += [f"| {d['first']} - {d['second']} | {d['num_data']:,} | {d['difference']:+.2f} ± {d['stderr']:.2f} "
              f"(Monte Carlo ± {d['mc_stderr']:.2f}) | {d['certified_both']:,} |" for d in differences]
(out / "table.md").write_text("\n".join(table) + "\n")
print("\n" + "\n".join(table))

random_split = [r for r in rows if "held-out" not in r["run"]]
panels = [("held-out log p(x), random 5%", "log_likelihood", random_split),
          ("plate mixing: iLISI (1 = mixed)", "ilisi", [r for r in random_split if r["ilisi"] is not None]),
          ("plate mixing: batch ASW within cell lines", "batch_asw",
           [r for r in random_split if r["batch_asw"] is not None]),  # None: one plate among the held-out cells
          (f"log p(x) of {args.held_out_plate}'s cells, held out", "log_likelihood",
           [r for r in rows if "held-out" in r["run"]])]
panels = [panel for panel in panels if panel[2]]
fig, axes = plt.subplots(1, len(panels) + bool(differences), figsize=(4.6 * (len(panels) + bool(differences)), 4.2),
                         squeeze=False)
if differences:
    ax = axes[0, -1]
    ax.barh([f"{d['first']}\n- {d['second']}" for d in differences], [d["difference"] for d in differences],
            xerr=[d["stderr"] for d in differences], color="0.6")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("nats per cell (paired, ± standard error)")
    ax.set_title("log p(x) differences on the same cells", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    ax.invert_yaxis()
for ax, (title, key, shown_rows) in zip(axes[0], panels):
    labels = [f"{r['model'].split(',')[0]}\n{r['plate']}" for r in shown_rows]
    values = [r[key] for r in shown_rows]
    if key == "log_likelihood":
        errors = [r["stderr"] for r in shown_rows]
        ax.bar(labels, values, yerr=errors, color=[r["colour"] for r in shown_rows])
        low, high = min(v - e for v, e in zip(values, errors)), max(v + e for v, e in zip(values, errors))
        ax.set_ylim(low - 0.3 * (high - low) - 1, high + 0.3 * (high - low) + 1)
        ax.set_ylabel("nats per cell")
    else:
        ax.bar(labels, values, color=[r["colour"] for r in shown_rows])
        ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
fig.tight_layout()
save(fig, out / "plates.png")
write_metrics(out, {"rows": rows, "differences": differences}, args)
print(f"table.md, plates.png and metrics.json in {out}")
