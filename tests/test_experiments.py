"""Smoke runs of every experiment script with tiny settings (examples never rot)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
                         "--num-samples", "32", "--hidden", "64")
    runs = metrics["metrics"]["runs"]
    assert set(runs) == {"VAE, ELBO", "VAE, IWAE k=5", "AE (MAP) + refit guide"}
    for run in runs.values():
        assert run["log_likelihood"] < 0 and run["num_samples"] == 32


@pytest.mark.parametrize("script", ["quickstart"])
def test_scripts_have_help(script):
    completed = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{script}.py"), "--help"],
                               capture_output=True, text=True, cwd=ROOT)
    assert completed.returncode == 0
    for option in ("--device", "--seed", "--epochs", "--data-dir", "--out"):
        assert option in completed.stdout
