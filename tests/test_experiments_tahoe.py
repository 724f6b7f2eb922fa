"""Smoke runs of the Tahoe-schema atlas scripts with tiny settings, on an atlas they generate: tahoe_svae (resumed,
the PCA input and the N-VAE) and tahoe_plates (one atlas shared by its runs)."""

import json
import sys

import pytest
import torch

from tests.experiment_runs import ROOT, refusal, run_script
from tests.script_server import run_python

TAHOE_TINY = ("--synthetic-cells", "2400", "--synthetic-shards", "4", "--vocabulary", "1500", "--genes-per-cell",
              "150", "--genes", "120", "--hvg-cells", "800", "--held-out", "100", "--num-samples", "8", "--hidden",
              "32", "--batch-size", "128", "--refine-steps", "3")


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
    assert scores == [f"epoch{n}-refined+defensive-8-refine3" for n in (1, 2)]  # resumable, one per weights
    said = refusal("tahoe_svae", tmp_path, *TAHOE_TINY, *no_data(tmp_path), "--epochs", "2", "--genes", "100")
    assert "chosen otherwise (genes 120 there, 100 now)" in said


def test_smoke_tahoe_svae_pca_normal(tmp_path):
    (tmp_path / "tahoe_svae" / "atlas" / "data").mkdir(parents=True)  # an atlas whose generation was interrupted
    (tmp_path / "tahoe_svae" / "atlas" / "data" / "train-00000-of-00009.parquet").write_bytes(b"cut short")
    metrics = run_script("tahoe_svae", tmp_path, *TAHOE_TINY, *no_data(tmp_path), "--epochs", "1", "--pca",
                         "--pca-components", "20", "--guide", "normal", "--covariates", "--hold-out",
                         "plate=plate2", "--scored-cells", "30")["metrics"]
    assert metrics["features"] == 20 and metrics["held_out_log_likelihood"] < 0 and metrics["scored_cells"] == 30
    assert [p.parent.name for p in (tmp_path / "tahoe_svae" / "scores").glob("*/manifest.json")] == [
        "epoch1-refined+defensive-8-refine3-cells30"]
    assert metrics["covariates"] == [] and metrics["held_out_groups"] == {"plate": ["plate2"]}
    assert metrics["cells"] == 2400  # generated again, not read from the interrupted one
    other = (*TAHOE_TINY[2:], *no_data(tmp_path))
    said = refusal("tahoe_svae", tmp_path, *other, "--synthetic-cells", "3000")
    assert "other settings (cells 2400 there, 3000 now)" in said
    marker = tmp_path / "tahoe_svae" / "atlas" / "generated.json"
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "generator"}))
    said = refusal("tahoe_svae", tmp_path, *other, "--synthetic-cells", "2400")  # an atlas of the first simulator
    assert "an atlas of an earlier simulator (version 1, now 2" in said  # (no version recorded): not reused


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
    assert list((tmp_path / "tahoe_plates" / "nvae-none" / "scores").glob("*-refine3"))  # --refine-steps passed on
    assert (tmp_path / "tahoe_plates" / "atlas" / "generated.json").exists()  # one atlas, shared by the runs
    assert not list((tmp_path / "tahoe_plates").glob("*/atlas"))
    assert (tmp_path / "tahoe_plates" / "table.md").read_text().count("N-VAE") == 3
    again = run_python([sys.executable, str(ROOT / "experiments" / "tahoe_plates.py"), "--out",
                        str(tmp_path / "tahoe_plates"), "--device", "cpu", *options], cwd=ROOT)
    assert again.returncode == 0 and again.stdout.count("kept nvae-") == 3 and "started" not in again.stdout
    other = run_python([*again.args, "--settings", "covariate", "--num-samples", "4"],
                       cwd=ROOT)  # a forwarded option changed: run again (resumed)
    assert other.returncode == 0 and "started nvae-covariate" in other.stdout, other.stdout + other.stderr
    rescored = json.loads((tmp_path / "tahoe_plates" / "nvae-covariate" / "metrics.json").read_text())
    assert rescored["arguments"]["num_samples"] == 4 and rescored["metrics"]["epochs"] == 1  # trained once
    for words in (["--covariates", "plate"], ["--cov", "plate"], ["--ep=3"]):  # tahoe_svae reads abbreviations
        clash = run_python([sys.executable, str(ROOT / "experiments" / "tahoe_plates.py"), "--out", str(tmp_path),
                            *words], cwd=ROOT, timeout=60)
        assert clash.returncode != 0 and f"{words[0].split('=')[0]} cannot be passed to the runs" in clash.stderr
