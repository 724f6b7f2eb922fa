"""Smoke runs of every experiment script with tiny settings (examples never rot)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import require_dataset

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, tmp_path: Path, *arguments: str) -> dict:
    out = tmp_path / name
    command = [sys.executable, str(ROOT / "experiments" / f"{name}.py"), "--out", str(out), "--no-progress",
               "--device", "cpu", *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert list(out.glob("*.png")), "the script wrote no figure"
    return json.loads((out / "metrics.json").read_text())


def test_smoke_quickstart(tmp_path):
    metrics = run_script("quickstart", tmp_path, "--epochs", "1", "--max-train", "512", "--num-test", "64",
                         "--num-samples", "32", "--hidden", "64", "--gap-images", "8", "--ais-chains", "16",
                         "--flow-epochs", "1")
    runs = metrics["metrics"]["runs"]
    gaps = metrics["metrics"]["gap_report"]
    assert gaps["num_images"] == 8 and set(gaps["gaps"]) >= {"inference", "amortisation", "approximation"}
    assert any(name.startswith("AIS") for name in gaps["rows"])
    assert set(runs) == {"VAE, ELBO", "VAE, IWAE k=5", "S-VAE, vMF", "S-VAE, Power Spherical", "AE (MAP) + refit guide"}
    for run in runs.values():
        assert run["log_likelihood"] < 0 and run["num_samples"] == 32 and run["proposal"] == "refined+defensive"


def test_smoke_mixture_1d(tmp_path):
    metrics = run_script("mixture_1d", tmp_path, "--num-data", "2048", "--num-test", "256", "--steps", "16",
                         "--num-samples", "16", "--sweep", "0.5", "5000")["metrics"]
    assert set(metrics["runs"]) == {"0.5", "500", "5000"}
    assert metrics["steps"] == 16 and metrics["data_log_density"] < 0
    for run in metrics["runs"].values():
        assert run["log_likelihood"] < metrics["data_log_density"] + 0.05  # no model beats p_data (up to noise)
    # resumable: a grown sweep trains only its new setting and keeps the others' results bit for bit
    again = run_script("mixture_1d", tmp_path, "--num-data", "2048", "--num-test", "256", "--steps", "16",
                       "--num-samples", "16", "--sweep", "0.5", "50", "5000")["metrics"]
    assert set(again["runs"]) == {"0.5", "50", "500", "5000"}
    for key, run in metrics["runs"].items():
        assert again["runs"][key] == run  # its scores and training seconds read back
    # and the grown sweep is the one a fresh run makes (each setting starts from --seed, not from the one before it)
    fresh = run_script("mixture_1d", tmp_path / "fresh", "--num-data", "2048", "--num-test", "256", "--steps", "16",
                       "--num-samples", "16", "--sweep", "0.5", "50", "5000")["metrics"]

    def results(run: dict) -> dict:
        return {key: value for key, value in run.items() if key != "train_seconds"}

    assert {k: results(r) for k, r in fresh["runs"].items()} == {k: results(r) for k, r in again["runs"].items()}
    assert_refused_otherwise("mixture_1d", tmp_path, "--num-data", "2048", "--num-test", "256", "--steps", "17",
                             "--num-samples", "16")


def assert_refused_otherwise(name: str, tmp_path: Path, *arguments: str) -> None:
    """A resumable script run again on its --out with other settings stops and says what differs."""
    command = [sys.executable, str(ROOT / "experiments" / f"{name}.py"), "--out", str(tmp_path / name),
               "--no-progress", "--device", "cpu", *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert completed.returncode != 0 and "other settings" in completed.stderr, completed.stderr[-2000:]


def test_smoke_two_groups(tmp_path):
    metrics = run_script("two_groups", tmp_path, "--epochs", "20", "--num-test-per-group", "50",
                         "--num-samples", "16")["metrics"]
    assert metrics["num_data"] == 100 and metrics["log_likelihood"] < metrics["exact_log_likelihood"]
    assert set(metrics["pc_correlation"]) == {"group 0", "group 1"}
    assert (tmp_path / "two_groups" / "pc_reconstruction.png").exists()


def test_smoke_mnist_vae(tmp_path):
    require_dataset("mnist")
    metrics = run_script("mnist_vae", tmp_path, "--epochs", "1", "--mlp-steps", "3", "--num-train", "512",
                         "--num-test", "300", "--num-ll", "16", "--num-samples", "8", "--likelihood", "bernoulli")
    runs = metrics["metrics"]["runs"]
    assert set(runs) == {"MLP VAE (bernoulli)", "conv VAE (bernoulli)"}
    assert all(run["log_likelihood"] < 0 and run["num_samples"] == 8 for run in runs.values())
    assert {p.name for p in (tmp_path / "mnist_vae").glob("*.png")} == {"mlp_vae.png", "conv_vae.png"}
    (tmp_path / "mnist_vae" / "metrics.json").unlink()  # rerun: both models and their scores read back
    again = run_script("mnist_vae", tmp_path, "--epochs", "1", "--mlp-steps", "3", "--num-train", "512",
                       "--num-test", "300", "--num-ll", "16", "--num-samples", "8", "--likelihood", "bernoulli")
    assert again["metrics"]["runs"] == runs


def test_smoke_fashion_ae_vae(tmp_path):
    require_dataset("fashion-mnist")
    metrics = run_script("fashion_ae_vae", tmp_path, "--epochs", "1", "--num-train", "256", "--batch-size", "64",
                         "--num-ll", "16", "--num-samples", "8", "--refit-epochs", "1", "--num-tsne", "120")
    runs = metrics["metrics"]["runs"]
    assert set(runs) == {"AE", "VAE"} and runs["AE"]["likelihood"] == "Gaussian"
    assert all(run["num_samples"] == 8 and run["test_mse"] > 0 for run in runs.values())
    names = {p.name for p in (tmp_path / "fashion_ae_vae").glob("*.png")}
    assert names == {"reconstruction_denoising.png", "generation.png", "interpolation.png", "tsne.png"}
    again = run_script("fashion_ae_vae", tmp_path, "--epochs", "1", "--num-train", "256", "--batch-size", "64",
                       "--num-ll", "16", "--num-samples", "8", "--refit-epochs", "1", "--num-tsne", "120")
    assert again["metrics"]["runs"] == runs  # resumed: the checkpoints and score parts read back


def test_smoke_svae_circle(tmp_path):
    metrics = run_script("svae_circle", tmp_path, "--epochs", "2", "--num-data", "200", "--num-test", "100",
                         "--num-samples", "16", "--guides", "normal", "vmf", "power")["metrics"]
    assert len(metrics["runs"]) == 3 and metrics["num_test"] == 100
    for run in metrics["runs"].values():
        assert run["num_samples"] == 16 and 0 <= run["angle_circular_correlation"] <= 1
        assert run["log_likelihood"] >= run["test_elbo"] - 5  # importance sampling tightens the bound


def test_smoke_svae_mnist_resumes(tmp_path):
    require_dataset("mnist")
    options = ["--epochs", "1", "--num-train", "256", "--num-val", "500", "--num-test", "64", "--num-samples", "8",
               "--ais-chains", "8", "--ais-steps", "2", "--dims", "2", "5", "--models", "normal", "vmf"]
    runs = run_script("svae_mnist", tmp_path, *options)["metrics"]["runs"]
    assert set(runs) == {f"{k}_d{d}" for k in ("normal", "vmf") for d in (2, 5)}
    assert runs["vmf_d5"]["paper_log_likelihood"] == -108.43 and runs["normal_d2"]["paper_log_likelihood"] == -135.73
    assert all(run["epochs_trained"] == 1 and run["test_log_likelihood"] < 0 for run in runs.values())
    # a finished run is loaded, not trained again
    again = run_script("svae_mnist", tmp_path, *options)["metrics"]["runs"]
    assert again["vmf_d5"]["test_log_likelihood"] == runs["vmf_d5"]["test_log_likelihood"]
    # a run whose scoring was interrupted: trained (its checkpoint kept), its scores saved in parts, no result
    # stored; the next call reads the parts instead of scoring again, and gets the same estimate
    scores = tmp_path / "svae_mnist" / "scores" / "vmf_d5"
    assert {p.parent.name for p in scores.glob("*/part-00000.pt")} == {"auto", "guide"}
    (tmp_path / "svae_mnist" / "runs.json").unlink()
    resumed = run_script("svae_mnist", tmp_path, *options, "--dims", "5", "--models", "vmf")["metrics"]["runs"]
    for key in ("test_log_likelihood", "certified", "guide_log_likelihood", "epochs_trained"):
        assert resumed["vmf_d5"][key] == runs["vmf_d5"][key]
    # a finished cell scored otherwise is not passed off as scored with the --refine-steps asked for
    command = [sys.executable, str(ROOT / "experiments" / "svae_mnist.py"), "--out", str(tmp_path / "svae_mnist"),
               "--no-progress", "--device", "cpu", *options, "--dims", "5", "--models", "vmf", "--refine-steps", "7"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert completed.returncode != 0 and "vmf_d5 in" in completed.stderr and "other --refine-steps" in completed.stderr


def test_smoke_svae_mnist_cells_in_parallel(tmp_path):
    """--jobs: each cell trains in a process of its own; the results are gathered into one table, and a second call
    finds every cell finished."""
    require_dataset("mnist")
    options = ["--epochs", "1", "--num-train", "128", "--num-val", "200", "--num-test", "32", "--num-samples", "4",
               "--ais-chains", "8", "--ais-steps", "2", "--dims", "2", "--models", "vmf", "power", "--jobs", "2"]
    runs = run_script("svae_mnist", tmp_path, *options)["metrics"]["runs"]
    assert list(runs) == ["vmf_d2", "power_d2"] and runs["power_d2"]["paper_log_likelihood"] is None
    assert all(run["epochs_trained"] == 1 and run["test_log_likelihood"] < 0 for run in runs.values())
    assert (tmp_path / "svae_mnist" / "cells" / "power_d2" / "runs.json").exists()
    # checkpoints and scores where a run without --jobs keeps them: either resumes the other's cells
    assert list((tmp_path / "svae_mnist" / "checkpoints").glob("power_d2-*.pt"))
    assert list((tmp_path / "svae_mnist" / "scores" / "power_d2").glob("*/part-00000.pt"))
    again = run_script("svae_mnist", tmp_path, *options)["metrics"]["runs"]
    assert again == runs


def test_smoke_poisson_synthetic(tmp_path):
    metrics = run_script("poisson_synthetic", tmp_path, "--epochs", "3", "--num-cells", "200", "--num-test", "50",
                         "--num-samples", "16")["metrics"]
    assert metrics["log_likelihood"] < metrics["true_law_log_likelihood"] + 0.5
    assert metrics["test_elbo"] <= metrics["log_likelihood"] + 0.5 and metrics["train_seconds"] > 0
    assert len(metrics["reconstructed_rate_mean"]) == 10


@pytest.mark.data
def test_smoke_scvae_counts(tmp_path):
    require_dataset("cellbench")
    options = ("--dataset", "cellbench_dropseq", "--epochs", "2", "--genes", "200", "--likelihoods", "nb", "zinb",
               "--num-samples", "8", "--hidden", "16", "--latent", "3")
    metrics = run_script("scvae_counts", tmp_path, *options)
    runs = metrics["metrics"]["runs"]
    assert set(runs) == {"VAE, nb", "VAE, zinb", "GMVAE, nb", "GMVAE, zinb"}
    for run in runs.values():
        assert run["log_likelihood"] < 0 and -1 <= run["ari"] <= 1
    import anndata

    adata = anndata.read_h5ad(tmp_path / "scvae_counts" / "cells.h5ad")
    assert adata.obsm["X_GMVAE_nb"].shape == (metrics["metrics"]["num_cells"], 3)
    assert "VAE_zinb_cluster" in adata.obs
    # a rerun reads the checkpoints and the saved score parts: the same results, nothing trained or scored again
    (tmp_path / "scvae_counts" / "metrics.json").unlink()
    again = run_script("scvae_counts", tmp_path, *options)["metrics"]["runs"]
    assert again == runs


@pytest.mark.data
def test_smoke_pbmc_de(tmp_path):
    require_dataset("pbmc3k")
    metrics = run_script("pbmc_de", tmp_path, "--epochs", "1", "--label-epochs", "1", "--genes", "300",
                         "--num-samples", "50", "--latent", "3", "--hidden", "16")["metrics"]
    assert set(metrics["marker_ranks"]) == {"B", "CD14+ Mono", "CD8 T", "DC", "FCGR3A+ Mono", "Memory CD4 T", "NK",
                                            "Naive CD4 T", "Platelet"}
    assert 0 <= metrics["label_transfer_accuracy"] <= 1 and metrics["hidden_cells"] > 0
    import anndata

    adata = anndata.read_h5ad(tmp_path / "pbmc_de" / "cells.h5ad")
    assert adata.obsm["X_pyrovae_vae"].shape == (metrics["cells"], 3)
    assert "pyrovae_transferred_label" in adata.obs and "B" in adata.uns["pyrovae_vae_de"]


@pytest.mark.data
def test_smoke_integration(tmp_path):
    require_dataset("cellbench")
    metrics = run_script("integration", tmp_path, "--epochs", "2", "--genes", "200", "--models", "vae", "gmvae",
                         "vae-unintegrated", "--latent", "3", "--hidden", "16")["metrics"]
    assert metrics["batches"] == ["CEL-seq2", "Drop-seq"]
    for row in metrics["results"].values():
        assert -1 <= row["ari"] <= 1 and 0 <= row["batch_asw"] <= 1 and 0 <= row["ilisi"] <= 1
    import anndata

    adata = anndata.read_h5ad(tmp_path / "integration" / "cells.h5ad")
    assert adata.obsm["X_gmvae"].shape == (metrics["cells"], 3)
    # the plates hold a "batch" column of their own (the batch is registered as "part")
    plates = run_script("integration", tmp_path / "plates", "--dataset", "plates", "--epochs", "1", "--genes", "100",
                        "--models", "vae", "--latent", "3", "--hidden", "16")["metrics"]
    assert plates["batches"] == ["plate 1", "plate 2", "plate 3"]


@pytest.mark.data
def test_smoke_grid_search_resumes(tmp_path):
    require_dataset("cellbench")
    arguments = ["--dataset", "cellbench_dropseq", "--epochs", "2", "--genes", "100", "--hidden", "8", "8,16",
                 "--latent", "2", "3", "--num-samples", "8"]
    first = run_script("grid_search", tmp_path, *arguments)["metrics"]
    assert len(first["grid"]) == 4 and first["best"] in first["grid"]
    out = tmp_path / "grid_search"
    command = [sys.executable, str(ROOT / "experiments" / "grid_search.py"), "--out", str(out), "--no-progress",
               "--device", "cpu", *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.count("done before") == 4  # nothing trained twice
    others = [key for key in first["grid"] if key != first["best"]]  # a narrower grid whose best is another
    hidden, latent = others[0].split()[1], others[0].split()[3]
    narrower = run_script("grid_search", tmp_path, *arguments[:6], "--hidden", hidden, "--latent", latent,
                          "--num-samples", "8")["metrics"]
    assert narrower["best"] == others[0]  # trained from its own checkpoint, not the first best's


def test_smoke_reference_mapping(tmp_path):
    metrics = run_script("reference_mapping", tmp_path, "--dataset", "synthetic", "--epochs", "2", "--map-epochs", "2",
                         "--genes", "60", "--latent", "3", "--hidden", "16")["metrics"]
    assert metrics["queries"] == ["batch 2", "batch 3"] and metrics["genes"] == 60
    for kind in ("vae", "label_transfer"):
        row = metrics["results"][kind]
        assert row["mapped"]["epochs"] == 2 and row["everything"]["epochs"] == 2 and row["time_ratio"] > 0
        for run in (row["mapped"], row["everything"]):
            assert 0 <= run["query_accuracy"] <= 1 and 0 <= run["ilisi"] <= 1 and 0 <= run["batch_asw"] <= 1
    two = run_script("reference_mapping", tmp_path / "two", "--dataset", "synthetic", "--epochs", "2",
                     "--map-epochs", "2", "--genes", "60", "--latent", "3", "--hidden", "16", "--kinds", "vae",
                     "--reference", "batch 1", "batch 2")["metrics"]
    assert two["reference"] == "batch 1 + batch 2" and two["queries"] == ["batch 3"]
    assert two["reference_cells"] + 150 == two["cells"] == metrics["cells"]



def test_smoke_reference_mapping_against_scvi_tools(tmp_path):
    """--peer: scvi-tools' scArches on the same split, scored the same way (skipped where scvi-tools is absent)."""
    if importlib.util.find_spec("scvi") is None:  # the peer extra, not the test extra
        pytest.skip("scvi-tools is not installed (pip install -e '.[peer]')")
    metrics = run_script("reference_mapping", tmp_path, "--dataset", "synthetic", "--epochs", "2", "--map-epochs", "2",
                         "--genes", "60", "--latent", "3", "--hidden", "16", "--kinds", "vae", "--peer")["metrics"]
    peer = metrics["results"]["scvi_tools"]
    for run in (peer["mapped"], peer["everything"]):
        assert 0 <= run["query_accuracy"] <= 1 and 0 <= run["ilisi"] <= 1 and 0 <= run["batch_asw"] <= 1
    assert peer["time_ratio"] > 0 and set(metrics["results"]) == {"vae", "scvi_tools"}

@pytest.mark.data
def test_smoke_reference_mapping_null_control(tmp_path):
    """--dataset halves: the plates pooled and split at random, half A the reference, half B the query."""
    require_dataset("cellbench")
    metrics = run_script("reference_mapping", tmp_path, "--dataset", "halves", "--quick", "--kinds", "vae",
                         "--latent", "3", "--hidden", "16")["metrics"]
    assert metrics["reference"] == "half A" and metrics["queries"] == ["half B"]
    assert abs(metrics["reference_cells"] - metrics["cells"] / 2) <= 1


TAHOE_TINY = ("--synthetic-cells", "2400", "--synthetic-shards", "4", "--vocabulary", "1500", "--genes-per-cell",
              "150", "--genes", "120", "--hvg-cells", "800", "--held-out", "100", "--num-samples", "8", "--hidden",
              "32", "--batch-size", "128")


def no_data(tmp_path) -> tuple[str, str]:
    """``--data-dir`` an empty folder: the script finds no real atlas there and generates one."""
    (tmp_path / "no_data").mkdir(exist_ok=True)
    return "--data-dir", str(tmp_path / "no_data")


def test_smoke_tahoe_svae_resumes(tmp_path):
    metrics = run_script("tahoe_svae", tmp_path, *TAHOE_TINY, *no_data(tmp_path), "--epochs", "1")["metrics"]
    assert metrics["cells"] == 2400 and metrics["panel_genes"] == 120 and metrics["held_out_cells"] == 100
    assert set(metrics["silhouette_by_k"]) == {str(k) for k in range(2, 11)}
    assert -1 <= metrics["reconstruction_correlation"] <= 1 and metrics["held_out_log_likelihood"] < 0
    assert metrics["covariates"] == ["plate"] and 0 <= metrics["plate_mixing"]["ilisi"] <= 1
    for figure in ("tsne", "posterior_reconstruction_clusters", "generation", "interpolation", "training"):
        assert (tmp_path / "tahoe_svae" / f"{figure}.png").exists()
    resumed = run_script("tahoe_svae", tmp_path, *TAHOE_TINY, *no_data(tmp_path), "--epochs", "2")["metrics"]
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]  # the first epoch came from the checkpoint
    assert resumed["history"][0] == metrics["history"][0]
    scores = sorted(p.parent.name for p in (tmp_path / "tahoe_svae" / "scores").glob("*/part-00000.pt"))
    assert scores == ["epoch1-refined+defensive-8", "epoch2-refined+defensive-8"]  # resumable, one per weights
    other = [sys.executable, str(ROOT / "experiments" / "tahoe_svae.py"), "--out", str(tmp_path / "tahoe_svae"),
             *TAHOE_TINY, *no_data(tmp_path), "--device", "cpu", "--epochs", "2", "--genes", "100"]
    completed = subprocess.run(other, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert completed.returncode != 0 and "chosen otherwise (genes 120 there, 100 now)" in completed.stderr


def test_smoke_tahoe_svae_pca_normal(tmp_path):
    (tmp_path / "tahoe_svae" / "atlas" / "data").mkdir(parents=True)  # an atlas whose generation was interrupted
    (tmp_path / "tahoe_svae" / "atlas" / "data" / "train-00000-of-00009.parquet").write_bytes(b"cut short")
    metrics = run_script("tahoe_svae", tmp_path, *TAHOE_TINY, *no_data(tmp_path), "--epochs", "1", "--pca",
                         "--pca-components", "20", "--guide", "normal", "--covariates", "--hold-out",
                         "plate=plate2", "--scored-cells", "30")["metrics"]
    assert metrics["features"] == 20 and metrics["held_out_log_likelihood"] < 0 and metrics["scored_cells"] == 30
    assert [p.parent.name for p in (tmp_path / "tahoe_svae" / "scores").glob("*/manifest.json")] == [
        "epoch1-refined+defensive-8-cells30"]
    assert metrics["covariates"] == [] and metrics["held_out_groups"] == {"plate": ["plate2"]}
    assert metrics["cells"] == 2400  # generated again, not read from the interrupted one
    other = [sys.executable, str(ROOT / "experiments" / "tahoe_svae.py"), "--out", str(tmp_path / "tahoe_svae"),
             *TAHOE_TINY[2:], "--synthetic-cells", "3000", *no_data(tmp_path), "--device", "cpu"]
    completed = subprocess.run(other, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert completed.returncode != 0 and "other settings (cells 2400 there, 3000 now)" in completed.stderr
    marker = tmp_path / "tahoe_svae" / "atlas" / "generated.json"
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "generator"}))
    completed = subprocess.run([*other, "--synthetic-cells", "2400"], capture_output=True, text=True, timeout=600,
                               cwd=ROOT)  # an atlas of the first simulator (no version recorded): not reused
    assert completed.returncode != 0 and "an atlas of an earlier simulator (version 1, now 2" in completed.stderr


def test_smoke_tahoe_plates_shares_one_atlas_and_keeps_runs(tmp_path):
    options = ("--models", "nvae", "--settings", "covariate", "none", "held-out", "--jobs", "2", "--epochs", "1",
               "--proposal", "refined+defensive", *no_data(tmp_path), *TAHOE_TINY, "--workers", "0")
    record = run_script("tahoe_plates", tmp_path, *options)
    rows = record["metrics"]["rows"]
    assert [r["run"] for r in rows] == ["nvae-covariate", "nvae-none", "nvae-held-out-plate4"]
    assert record["command"][0] == "tahoe_plates.py" and "--jobs" in record["command"]
    covariate, _, held_out = rows
    [difference] = record["metrics"]["differences"]  # the one pair of runs on the same cells
    with_plate, without = (torch.load(tmp_path / "tahoe_plates" / run / "held_out_scores.pt", weights_only=True)
                           for run in ("nvae-covariate", "nvae-none"))
    torch.testing.assert_close(with_plate["cell_ids"], without["cell_ids"])
    paired = (with_plate["per_datum"].double() - without["per_datum"].double())
    assert (difference["first"], difference["second"], difference["num_data"]) == ("nvae-covariate", "nvae-none", 100)
    assert difference["difference"] == pytest.approx(float(paired.mean()))
    assert difference["stderr"] == pytest.approx(float(paired.std() / 10))
    assert covariate["log_likelihood"] < 0 and 0 <= covariate["ilisi"] <= 1 and held_out["ilisi"] is None
    assert held_out["plate"] == "plate4 held out" and covariate["held_out_cells"] == 100
    runs = {r["run"]: json.loads((tmp_path / "tahoe_plates" / r["run"] / "metrics.json").read_text()) for r in rows}
    assert runs["nvae-covariate"]["metrics"]["covariates"] == ["plate"]
    assert runs["nvae-held-out-plate4"]["metrics"]["held_out_groups"] == {"plate": ["plate4"]}
    assert (tmp_path / "tahoe_plates" / "atlas" / "generated.json").exists()  # one atlas, shared by the runs
    assert not list((tmp_path / "tahoe_plates").glob("*/atlas"))
    assert (tmp_path / "tahoe_plates" / "table.md").read_text().count("N-VAE") == 3
    again = subprocess.run([sys.executable, str(ROOT / "experiments" / "tahoe_plates.py"), "--out",
                            str(tmp_path / "tahoe_plates"), "--device", "cpu", *options],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0 and again.stdout.count("kept nvae-") == 3 and "started" not in again.stdout
    other = subprocess.run([*again.args, "--settings", "covariate", "--num-samples", "4"], capture_output=True,
                           text=True, timeout=600, cwd=ROOT)  # a forwarded option changed: run again (resumed)
    assert other.returncode == 0 and "started nvae-covariate" in other.stdout, other.stdout + other.stderr
    rescored = json.loads((tmp_path / "tahoe_plates" / "nvae-covariate" / "metrics.json").read_text())
    assert rescored["arguments"]["num_samples"] == 4 and rescored["metrics"]["epochs"] == 1  # trained once
    for words in (["--covariates", "plate"], ["--cov", "plate"], ["--ep=3"]):  # tahoe_svae reads abbreviations
        clash = subprocess.run([sys.executable, str(ROOT / "experiments" / "tahoe_plates.py"), "--out",
                                str(tmp_path), *words], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert clash.returncode != 0 and f"{words[0].split('=')[0]} cannot be passed to the runs" in clash.stderr


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
