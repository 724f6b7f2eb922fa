"""Smoke runs of every experiment script with tiny settings (examples never rot): the seed notebooks' image and
toy-data scripts, and every script's --help; the single-cell scripts are in test_experiments_single_cell.py."""

import json
import subprocess
import sys

import pytest

from tests.conftest import require_dataset
from tests.experiment_runs import ROOT, assert_refused_otherwise, run_script, script_command
from tests.script_server import run_python


def test_smoke_quickstart(tmp_path):
    tiny = ("--epochs", "1", "--max-train", "512", "--num-test", "64", "--num-samples", "32", "--hidden", "64",
            "--ais-chains", "16", "--flow-epochs", "1", "--refine-steps", "3")
    metrics = run_script("quickstart", tmp_path, *tiny, "--gap-images", "8")
    runs = metrics["metrics"]["runs"]
    gaps = metrics["metrics"]["gap_report"]
    assert gaps["num_images"] == 8 and set(gaps["gaps"]) >= {"inference", "amortisation", "approximation"}
    assert any(name.startswith("AIS") for name in gaps["rows"])
    assert set(runs) == {"VAE, ELBO", "VAE, IWAE k=5", "S-VAE, vMF", "S-VAE, Power Spherical", "AE (MAP) + refit guide"}
    for run in runs.values():
        assert run["log_likelihood"] < 0 and run["num_samples"] == 32 and run["proposal"] == "refined+defensive"
    # resumable: every model, refit guide and score read back (the gap report, made afresh, may change)
    again = run_script("quickstart", tmp_path, *tiny, "--gap-images", "0")["metrics"]
    assert again["runs"] == runs and "gap_report" not in again
    assert_refused_otherwise("quickstart", tmp_path, *tiny[:7], "16", *tiny[8:])  # other --num-samples


def test_smoke_mixture_1d(tmp_path):
    tiny = ("--num-data", "2048", "--num-test", "256", "--steps", "16", "--num-samples", "16", "--refine-steps", "3")
    metrics = run_script("mixture_1d", tmp_path, *tiny, "--sweep", "0.5", "5000")["metrics"]
    assert set(metrics["runs"]) == {"0.5", "500", "5000"}
    assert metrics["steps"] == 16 and metrics["data_log_density"] < 0
    for run in metrics["runs"].values():
        assert run["log_likelihood"] < metrics["data_log_density"] + 0.05  # no model beats p_data (up to noise)
    # resumable: a grown sweep trains only its new setting and keeps the others' results bit for bit
    again = run_script("mixture_1d", tmp_path, *tiny, "--sweep", "0.5", "50", "5000")["metrics"]
    assert set(again["runs"]) == {"0.5", "50", "500", "5000"}
    for key, run in metrics["runs"].items():
        assert again["runs"][key] == run  # its scores and training seconds read back
    # and the grown sweep is the one a fresh run makes (each setting starts from --seed, not from the one before it)
    fresh = run_script("mixture_1d", tmp_path / "fresh", *tiny, "--sweep", "0.5", "50", "5000")["metrics"]

    def results(run: dict) -> dict:
        return {key: value for key, value in run.items() if key != "train_seconds"}

    assert {k: results(r) for k, r in fresh["runs"].items()} == {k: results(r) for k, r in again["runs"].items()}
    assert_refused_otherwise("mixture_1d", tmp_path, *tiny[:5], "17", *tiny[6:])  # other --steps


def test_smoke_two_groups(tmp_path):
    tiny = ("--epochs", "20", "--num-test-per-group", "50", "--num-samples", "16", "--refine-steps", "3")
    metrics = run_script("two_groups", tmp_path, *tiny)["metrics"]
    assert metrics["num_data"] == 100 and metrics["log_likelihood"] < metrics["exact_log_likelihood"]
    assert set(metrics["pc_correlation"]) == {"group 0", "group 1"}
    assert (tmp_path / "two_groups" / "pc_reconstruction.png").exists()
    assert run_script("two_groups", tmp_path, *tiny)["metrics"] == metrics  # resumed: read back, bit for bit
    assert_refused_otherwise("two_groups", tmp_path, *tiny[:-1], "4")  # other --refine-steps


def test_smoke_mnist_vae(tmp_path):
    require_dataset("mnist")
    tiny = ("--epochs", "1", "--mlp-steps", "3", "--num-train", "512", "--num-test", "300", "--num-ll", "16",
            "--num-samples", "8", "--likelihood", "bernoulli", "--refine-steps", "3")
    metrics = run_script("mnist_vae", tmp_path, *tiny)
    runs = metrics["metrics"]["runs"]
    assert set(runs) == {"MLP VAE (bernoulli)", "conv VAE (bernoulli)"}
    assert all(run["log_likelihood"] < 0 and run["num_samples"] == 8 for run in runs.values())
    assert {p.name for p in (tmp_path / "mnist_vae").glob("*.png")} == {"mlp_vae.png", "conv_vae.png"}
    (tmp_path / "mnist_vae" / "metrics.json").unlink()  # rerun: both models and their scores read back
    again = run_script("mnist_vae", tmp_path, *tiny)
    assert again["metrics"]["runs"] == runs


def test_smoke_fashion_ae_vae(tmp_path):
    require_dataset("fashion-mnist")
    tiny = ("--epochs", "1", "--num-train", "256", "--batch-size", "64", "--num-ll", "16", "--num-samples", "8",
            "--refit-epochs", "1", "--num-tsne", "120", "--refine-steps", "3")
    metrics = run_script("fashion_ae_vae", tmp_path, *tiny)
    runs = metrics["metrics"]["runs"]
    assert set(runs) == {"AE", "VAE"} and runs["AE"]["likelihood"] == "Gaussian"
    assert all(run["num_samples"] == 8 and run["test_mse"] > 0 for run in runs.values())
    names = {p.name for p in (tmp_path / "fashion_ae_vae").glob("*.png")}
    assert names == {"reconstruction_denoising.png", "generation.png", "interpolation.png", "tsne.png"}
    again = run_script("fashion_ae_vae", tmp_path, *tiny)
    assert again["metrics"]["runs"] == runs  # resumed: the checkpoints and score parts read back


def test_smoke_svae_circle(tmp_path):
    tiny = ("--epochs", "2", "--num-data", "200", "--num-test", "100", "--num-samples", "16", "--refine-steps", "3")
    first = run_script("svae_circle", tmp_path, *tiny, "--guides", "normal", "vmf")["metrics"]
    # resumable: a grown --guides trains only the new model and reads the others' results back bit for bit
    metrics = run_script("svae_circle", tmp_path, *tiny, "--guides", "normal", "vmf", "power")["metrics"]
    assert len(metrics["runs"]) == 3 and metrics["num_test"] == 100
    assert all(metrics["runs"][name] == run for name, run in first["runs"].items())
    for run in metrics["runs"].values():
        assert run["num_samples"] == 16 and 0 <= run["angle_circular_correlation"] <= 1
        assert run["log_likelihood"] >= run["test_elbo"] - 5  # importance sampling tightens the bound
    assert_refused_otherwise("svae_circle", tmp_path, *tiny[:-1], "4")  # other --refine-steps


def test_smoke_svae_mnist_cells_in_parallel_grow_and_resume(tmp_path):
    """--jobs: each cell trains in a process of its own, the results gathered into one table; a call without --jobs
    trains a new cell itself and finds the others finished, and resumes their checkpoints and scores."""
    require_dataset("mnist")
    options = ["--epochs", "1", "--num-train", "256", "--num-val", "500", "--num-test", "64", "--num-samples", "8",
               "--ais-chains", "8", "--ais-steps", "2", "--refine-steps", "3", "--dims", "5"]  # S^5: the vMF's
    runs = run_script("svae_mnist", tmp_path, *options, "--models", "vmf", "power", "--jobs", "2")["metrics"]["runs"]
    assert list(runs) == ["vmf_d5", "power_d5"]  # rejection sampler (m = 6), not S^2's inverse CDF
    assert runs["vmf_d5"]["paper_log_likelihood"] == -108.43 and runs["power_d5"]["paper_log_likelihood"] is None
    assert (tmp_path / "svae_mnist" / "cells" / "power_d5" / "runs.json").exists()
    # grown without --jobs: the N-VAE trained here, the finished cells loaded, not trained again
    grown = run_script("svae_mnist", tmp_path, *options, "--models", "normal", "vmf", "power")["metrics"]["runs"]
    assert list(grown) == ["normal_d5", "vmf_d5", "power_d5"] and grown["power_d5"] == runs["power_d5"]
    assert grown["normal_d5"]["paper_log_likelihood"] == -110.21
    assert all(run["epochs_trained"] == 1 and run["test_log_likelihood"] < 0 for run in grown.values())
    # a run whose scoring was interrupted: trained (its checkpoint kept), its scores saved in parts, no result
    # stored; the next call reads the parts instead of scoring again: the same estimate
    assert list((tmp_path / "svae_mnist" / "checkpoints").glob("vmf_d5-*.pt"))
    scores = tmp_path / "svae_mnist" / "scores" / "vmf_d5"
    assert {p.parent.name for p in scores.glob("*/part-00000.pt")} == {"auto", "guide"}
    (tmp_path / "svae_mnist" / "runs.json").unlink()
    resumed = run_script("svae_mnist", tmp_path, *options, "--models", "vmf")["metrics"]["runs"]
    for key in ("test_log_likelihood", "certified", "guide_log_likelihood", "epochs_trained"):
        assert resumed["vmf_d5"][key] == runs["vmf_d5"][key]
    # a finished cell scored otherwise is not passed off as scored with the --refine-steps asked for
    command = script_command("svae_mnist", tmp_path / "svae_mnist", *options, "--models", "vmf",
                             "--refine-steps", "7")
    completed = run_python(command, cwd=ROOT)
    assert completed.returncode != 0 and "vmf_d5 in" in completed.stderr and "other --refine-steps" in completed.stderr


def test_smoke_poisson_synthetic(tmp_path):
    tiny = ("--epochs", "3", "--num-cells", "200", "--num-test", "50", "--num-samples", "16")
    metrics = run_script("poisson_synthetic", tmp_path, *tiny)["metrics"]
    assert run_script("poisson_synthetic", tmp_path, *tiny)["metrics"] == metrics  # resumed: read back, bit for bit
    assert_refused_otherwise("poisson_synthetic", tmp_path, *tiny[:-1], "17")  # other --num-samples
    assert metrics["log_likelihood"] < metrics["true_law_log_likelihood"] + 0.5
    assert metrics["test_elbo"] <= metrics["log_likelihood"] + 0.5 and metrics["train_seconds"] > 0
    assert len(metrics["reconstructed_rate_mean"]) == 10



SCRIPTS = ["quickstart", "mixture_1d", "two_groups", "mnist_vae", "fashion_ae_vae", "svae_circle", "svae_mnist",
           "poisson_synthetic", "scvae_counts", "grid_search", "tahoe_svae", "tahoe_plates", "pbmc_de",
           "integration", "pbmc_quickstart", "reference_mapping"]


def test_every_option_says_what_it_is():
    """An option without help shows neither its meaning nor its default in --help (ArgumentDefaultsHelpFormatter)."""
    import ast

    silent = []
    for script in SCRIPTS:
        tree = ast.parse((ROOT / "experiments" / f"{script}.py").read_text())
        for call in ast.walk(tree):
            if (isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "add_argument"
                    and not any(k.arg == "help" for k in call.keywords)):
                silent.append(f"{script}.py:{call.lineno}")
    assert not silent, f"options without help: {silent}"


def test_every_experiment_is_listed():
    assert sorted(p.stem for p in (ROOT / "experiments").glob("*.py")) == sorted(SCRIPTS)


_HELP_RUNNER = """
import contextlib, io, json, runpy, sys
texts = {}
for path in sys.argv[1:]:
    stdout, stderr, code = io.StringIO(), io.StringIO(), "did not exit on --help"
    sys.argv = [path, "--help"]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as exit:
        code = exit.code or 0
    except Exception as error:
        code, stderr = repr(error), io.StringIO(repr(error))
    texts[path] = {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
print(json.dumps(texts))
"""


@pytest.fixture(scope="module")
def help_texts():
    """Every script's ``--help``, run as ``__main__`` one after the other in one process (each script would spend
    seconds importing torch and Pyro on its own)."""
    paths = [str(ROOT / "experiments" / f"{script}.py") for script in SCRIPTS]
    completed = subprocess.run([sys.executable, "-c", _HELP_RUNNER, *paths], capture_output=True, text=True,
                               cwd=ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    texts = json.loads(completed.stdout.strip().splitlines()[-1])
    return {script: texts[path] for script, path in zip(SCRIPTS, paths)}


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_have_help(script, help_texts):
    text = help_texts[script]
    assert text["code"] == 0, (text["code"], text["stderr"])
    for option in ("--device", "--seed", "--epochs", "--data-dir", "--out"):
        assert option in text["stdout"]
