"""Every tutorial of the documentation runs: its code cells, in order, as one script in a fresh process.

The tutorials are MyST text notebooks (``docs/tutorials/*.md``) whose ``{code-cell}`` blocks ``make docs`` executes
with a Jupyter kernel. Here they are extracted and run with this Python alone, so no kernel is needed and a
tutorial that stops working fails the test suite.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from tests.script_server import run_python

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "docs" / "tutorials"
CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```\s*$", re.S | re.M)
OPTION = re.compile(r"^:[\w-]+:.*$")  # a cell's `:tags: [...]` line
TIMEOUT_S = 300  # each tutorial takes seconds on one core; the bound only stops a hung one


def tutorial_paths() -> list[Path]:
    return sorted(path for path in TUTORIALS.glob("*.md") if path.name != "index.md")


def code_of(path: Path) -> str:
    """The code cells of a MyST notebook, joined into one script (cell options and YAML headers dropped)."""
    cells = []
    for cell in CODE_CELL.findall(path.read_text(encoding="utf-8")):
        lines = cell.splitlines()
        if lines and lines[0].strip() == "---":  # a YAML block of cell options
            end = lines.index("---", 1)
            lines = lines[end + 1:]
        while lines and OPTION.match(lines[0]):
            lines = lines[1:]
        cells.append("\n".join(lines))
    return "\n\n".join(cells) + "\n"


def test_there_are_the_five_tutorials_and_each_is_in_the_index():
    names = {path.stem for path in tutorial_paths()}
    assert {"svi_and_swapping_guides", "hyperspherical_vae", "scoring_by_log_likelihood",
            "single_cells_with_anndata", "streaming_and_torchrun"} <= names
    index = (TUTORIALS / "index.md").read_text(encoding="utf-8")
    assert all(name in index for name in names), "every tutorial is listed in docs/tutorials/index.md"


def test_code_cells_are_extracted_in_order(tmp_path: Path):
    path = tmp_path / "notebook.md"
    path.write_text("---\nkernelspec: {}\n---\n# T\n\n"
                    "```{code-cell} ipython3\n:tags: [hide-output]\na = 1\n```\n\n"
                    "prose\n\n```python\nnot = run\n```\n\n"
                    "```{code-cell} ipython3\n---\ntags: [x]\n---\nb = a + 1\n```\n")
    assert code_of(path) == "a = 1\n\nb = a + 1\n"


def run_script(code: str, name: str, folder: Path) -> None:
    """Run ``code`` with this Python in a fresh process in ``folder``; fail with its error output."""
    script = folder / f"{name}.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = run_python([sys.executable, str(script)], cwd=folder, env=env, timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("path", tutorial_paths(), ids=lambda path: path.stem)
def test_tutorial_runs(path: Path, tmp_path: Path):
    code = code_of(path)
    assert code.strip(), f"{path.name} has no code cells"
    run_script(code, path.stem, tmp_path)


def test_the_readme_example_runs(tmp_path: Path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    examples = re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M)
    assert examples, "the README shows one example"
    run_script(examples[0], "readme_example", tmp_path)


@pytest.mark.parametrize("path", tutorial_paths(), ids=lambda path: path.stem)
def test_tutorial_uses_only_public_namespaces(path: Path):
    """Tutorials import from the public namespaces (``pyrovae.infer``), never from the modules behind them."""
    public = {"pyrovae", "pyrovae.models", "pyrovae.guides", "pyrovae.data", "pyrovae.distributions",
              "pyrovae.likelihoods", "pyrovae.nn", "pyrovae.ops", "pyrovae.infer", "pyrovae.infer.distributed",
              "pyrovae.metrics", "pyrovae.plots", "pyrovae.sweep", "pyrovae.pairs", "pyrovae.experiment",
              "pyrovae.process_group", "pyrovae.sc"}
    imported = set(re.findall(r"^\s*(?:from|import)\s+(pyrovae[\w.]*)", path.read_text(encoding="utf-8"), re.M))
    assert imported <= public, f"{path.name} imports internal modules: {sorted(imported - public)}"
