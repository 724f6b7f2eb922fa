"""Running an experiment script as a user does, for the smoke tests (tests/test_experiments*.py): each run is a
process of its own, forked from tests.script_server's (the imports paid once)."""

import json
import sys
from pathlib import Path

from tests.script_server import run_python

ROOT = Path(__file__).resolve().parents[1]


def script_command(name: str, out: Path, *arguments: str) -> list[str]:
    """The command line of ``experiments/<name>.py`` writing to ``out``, on the CPU, without progress bars."""
    return [sys.executable, str(ROOT / "experiments" / f"{name}.py"), "--out", str(out), "--no-progress",
            "--device", "cpu", *arguments]


def run_script(name: str, tmp_path: Path, *arguments: str) -> dict:
    """Run the script into ``tmp_path / name``; check that it succeeded and drew a figure; its metrics.json."""
    out = tmp_path / name
    completed = run_python(script_command(name, out, *arguments), cwd=ROOT)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert list(out.glob("*.png")), "the script wrote no figure"
    return json.loads((out / "metrics.json").read_text())


def refusal(name: str, tmp_path: Path, *arguments: str) -> str:
    """Run the script into ``tmp_path / name``, check that it stopped with an error, and return what it said."""
    completed = run_python(script_command(name, tmp_path / name, *arguments), cwd=ROOT)
    assert completed.returncode != 0, completed.stdout[-2000:]
    return completed.stderr


def assert_refused_otherwise(name: str, tmp_path: Path, *arguments: str) -> None:
    """A resumable script run again on its --out with other settings stops and says what differs."""
    said = refusal(name, tmp_path, *arguments)
    assert "other settings" in said, said[-2000:]
