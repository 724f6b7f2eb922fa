"""Smoke run of experiments/pbmc_quickstart.py (the scvi-tools quick start through pyrovae.sc) on PBMC 3k."""

import json
import sys
from pathlib import Path

from tests.conftest import require_dataset
from tests.script_server import run_python

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_pbmc_quickstart(tmp_path):
    require_dataset("pbmc3k")
    out = tmp_path / "pbmc_quickstart"
    command = [sys.executable, str(ROOT / "experiments" / "pbmc_quickstart.py"), "--quick", "--out", str(out),
               "--no-progress", "--device", "cpu", "--epochs", "1", "--genes", "200", "--latent", "4"]
    completed = run_python(command, cwd=ROOT)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    runs = json.loads((out / "metrics.json").read_text())["metrics"]["runs"]
    assert set(runs) == {"vae", "svae", "gmvae", "label_transfer"}
    assert all(run["same_latent_after_loading"] for run in runs.values())
    assert runs["label_transfer"]["same_labels_after_loading"]
    assert 0.0 <= runs["label_transfer"]["accuracy_on_hidden"] <= 1.0
    assert (out / "latents.png").exists() and (out / "cells.h5ad").exists()
