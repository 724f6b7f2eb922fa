"""Smoke runs of the single-cell experiment scripts with tiny settings: count models, DE, integration, the grid
search and reference mapping (the Tahoe-schema atlas scripts: tests/test_experiments_tahoe.py)."""

import importlib.util
import json

import pytest

from tests.conftest import require_dataset
from tests.experiment_runs import ROOT, assert_refused_otherwise, run_script, script_command
from tests.script_server import run_python


@pytest.mark.data
def test_smoke_scvae_counts(tmp_path):
    require_dataset("cellbench")
    options = ("--dataset", "cellbench_dropseq", "--epochs", "2", "--genes", "200", "--likelihoods", "nb", "zinb",
               "--num-samples", "8", "--hidden", "16", "--latent", "3", "--refine-steps", "3")
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
    tiny = ("--label-epochs", "1", "--genes", "300", "--num-samples", "50", "--latent", "3", "--hidden", "16")
    metrics = run_script("pbmc_de", tmp_path, "--epochs", "1", *tiny)["metrics"]
    assert set(metrics["marker_ranks"]) == {"B", "CD14+ Mono", "CD8 T", "DC", "FCGR3A+ Mono", "Memory CD4 T", "NK",
                                            "Naive CD4 T", "Platelet"}
    assert 0 <= metrics["label_transfer_accuracy"] <= 1 and metrics["hidden_cells"] > 0
    import anndata

    adata = anndata.read_h5ad(tmp_path / "pbmc_de" / "cells.h5ad")
    assert adata.obsm["X_pyrovae_vae"].shape == (metrics["cells"], 3)
    assert "pyrovae_transferred_label" in adata.obs and "B" in adata.uns["pyrovae_vae_de"]
    again = run_script("pbmc_de", tmp_path, "--epochs", "1", *tiny)["metrics"]  # both models read from checkpoints
    for key in ("marker_ranks", "label_transfer_accuracy", "logistic_regression_on_pcs_accuracy"):
        assert again.get(key) == metrics.get(key), key
    assert_refused_otherwise("pbmc_de", tmp_path, "--epochs", "2", *tiny)


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
    # resumable: a rerun keeps the models done (their scores equal) and trains only the new; other settings refused
    tiny = ("--epochs", "2", "--genes", "200", "--latent", "3", "--hidden", "16")
    again = run_script("integration", tmp_path, *tiny, "--models", "vae", "svae")["metrics"]
    assert again["results"]["vae"] == metrics["results"]["vae"] and set(again["results"]) == {"vae", "svae"}
    assert_refused_otherwise("integration", tmp_path, *tiny[2:], "--epochs", "3", "--models", "vae")
    # the plates hold a "batch" column of their own (the batch is registered as "part")
    plates = run_script("integration", tmp_path / "plates", "--dataset", "plates", "--epochs", "1", "--genes", "100",
                        "--models", "vae", "--latent", "3", "--hidden", "16")["metrics"]
    assert plates["batches"] == ["plate 1", "plate 2", "plate 3"]


@pytest.mark.data
def test_smoke_grid_search_resumes(tmp_path):
    require_dataset("cellbench")
    arguments = ["--dataset", "cellbench_dropseq", "--epochs", "2", "--genes", "100", "--hidden", "8", "8,16",
                 "--latent", "2", "3", "--num-samples", "8", "--refine-steps", "3"]
    first = run_script("grid_search", tmp_path, *arguments)["metrics"]
    assert len(first["grid"]) == 4 and first["best"] in first["grid"]
    out = tmp_path / "grid_search"
    final_changed = [*arguments[:3], "3", *arguments[4:13], "4", *arguments[14:]]  # --epochs 3, --num-samples 4
    command = script_command("grid_search", out, *final_changed)
    completed = run_python(command, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.count("done before") == 4  # nothing trained twice: the grid kept for the final run's
    again = json.loads((out / "metrics.json").read_text())["metrics"]
    assert again["best_epochs"] == 3 and again["best_log_likelihood"]["num_samples"] == 4
    others = [key for key in first["grid"] if key != first["best"]]  # a narrower grid whose best is another
    hidden, latent = others[0].split()[1], others[0].split()[3]
    narrower = run_script("grid_search", tmp_path, *arguments[:6], "--hidden", hidden, "--latent", latent,
                          "--num-samples", "8", "--refine-steps", "3")["metrics"]
    assert narrower["best"] == others[0]  # trained from its own checkpoint, not the first best's


def test_smoke_reference_mapping(tmp_path):
    tiny = ("--dataset", "synthetic", "--map-epochs", "2", "--genes", "60", "--latent", "3", "--hidden", "16")
    metrics = run_script("reference_mapping", tmp_path, *tiny, "--epochs", "2")["metrics"]
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
    # resumable: each kind kept as it finished (a rerun reads it), other settings refused
    again = run_script("reference_mapping", tmp_path, *tiny, "--epochs", "2", "--kinds", "vae")["metrics"]
    assert again["results"] == {"vae": metrics["results"]["vae"]}
    assert_refused_otherwise("reference_mapping", tmp_path, *tiny, "--epochs", "3")


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
