"""Release hygiene: one version, a light core with extras that name themselves, every import of the
test suite declared, the package folders and py.typed shipped, and library messages through logging
or warnings."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pyrovae
from pyrovae.optional import EXTRAS
from pyrovae.sweep import Sweep

ROOT = Path(__file__).resolve().parents[1]
CORE_MODULES = ("pyrovae", "pyrovae.models", "pyrovae.guides", "pyrovae.infer",
                "pyrovae.distributions", "pyrovae.likelihoods", "pyrovae.nn")
NOT_CORE = (*EXTRAS, "arviz", "scvi")  # arviz: one test's reference; scvi: the peer experiments
# import names whose distribution is named otherwise
DISTRIBUTIONS = {"sklearn": "scikit-learn", "pyro": "pyro-ppl", "scvi": "scvi-tools",
                 "yaml": "pyyaml", "PIL": "pillow"}


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def _names(requirements: str) -> list[str]:
    return [line.strip() for line in requirements.splitlines() if line.strip()]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(extra: str | None) -> set[str]:
    """The distributions the core (``extra=None``) or the core and ``extra`` bring, with the
    extras it names (``pyrovae[sc,plot]``) resolved."""
    config = _setup_cfg()
    extras = config["options.extras_require"]
    pending = _names(config["options"]["install_requires"])
    pending += _names(extras[extra]) if extra else []
    declared, seen = set(), set()
    while pending:
        requirement = pending.pop()
        self_reference = re.fullmatch(r"pyrovae\[([\w,\s-]+)\]", requirement)
        if self_reference:
            for name in self_reference.group(1).split(","):
                if name.strip() not in seen:
                    seen.add(name.strip())
                    pending += _names(extras[name.strip()])
            continue
        declared.add(_normal(re.match(r"[A-Za-z0-9._-]+", requirement).group(0)))
    return declared


def test_the_version_has_one_source():
    assert re.fullmatch(r"\d+\.\d+\.\d+", pyrovae.__version__)
    assert _setup_cfg()["metadata"]["version"] == "attr: pyrovae.__version__"
    distribution = importlib.metadata.distribution("pyrovae")
    installed = distribution.version
    if installed != pyrovae.__version__:
        metadata = next((Path(str(distribution.locate_file(f))) for f in distribution.files or ()
                         if f.name == "METADATA"), None)
        source = ROOT / "pyrovae" / "__init__.py"
        stale = metadata is not None and metadata.exists() and \
            metadata.stat().st_mtime < source.stat().st_mtime
        if stale:
            pytest.skip(f"the installed metadata ({installed}) predates pyrovae/__init__.py "
                        f"({pyrovae.__version__}): reinstall with `pip install -e .` "
                        "(make setup does)")
    assert installed == pyrovae.__version__


def test_the_core_imports_without_any_extra_and_a_call_that_needs_one_names_it():
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in NOT_CORE)
    script = f"""
import sys, tempfile
{blocked}
import {", ".join(CORE_MODULES)}
import pyrovae.data, pyrovae.metrics, pyrovae.pairs, pyrovae.plots, pyrovae.sweep
import torch
for call in (lambda: pyrovae.data.CountData(torch.ones(3, 4)),
             lambda: pyrovae.metrics.kmeans_clusters(torch.zeros(6, 2), 2),
             lambda: pyrovae.data.write_tahoe_shards(tempfile.mkdtemp(), num_cells=4, num_shards=1),
             lambda: pyrovae.plots.plt.figure()):
    try:
        call()
    except ImportError as error:
        print(error)
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               timeout=120, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    messages = completed.stdout.splitlines()
    assert len(messages) == 4, completed.stdout
    for message, extra in zip(messages, ("sc", "sc", "atlas", "plot")):
        assert f"pip install 'pyrovae[{extra}]'" in message


def test_the_core_requires_no_optional_package():
    core = _declared(None)
    assert {"torch", "pyro-ppl", "numpy", "scipy", "tqdm"} <= core
    for name in NOT_CORE:
        assert _normal(DISTRIBUTIONS.get(name, name)) not in core, name
    extras = _setup_cfg()["options.extras_require"]
    for name, extra in EXTRAS.items():  # the extra that an ImportError names installs the package
        assert _normal(DISTRIBUTIONS.get(name, name)) in _declared(extra), (name, extra)
    assert {"sc", "atlas", "hub", "plot", "docs", "test", "peer", "all"} <= set(extras)


def _third_party_imports(path: Path, source: str | None = None,
                         top_level_only: bool = False) -> set[str]:
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value.split(".")[0])
    local = {"pyrovae", "tests", "experiments", "benchmarks", "ddp_train", "guides_and_models"}
    return {name for name in names if name not in sys.stdlib_module_names and name not in local}


def _tutorial_code(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    cells = re.findall(r"^```\{code-cell\}[^\n]*\n(.*?)^```\s*$", text, re.S | re.M)
    lines = [line for cell in cells for line in cell.splitlines()
             if not line.startswith((":", "---"))]
    return "\n".join(line for line in lines if re.match(r"\s*(import|from)\s", line))


def test_everything_the_test_suite_imports_is_declared_in_the_test_extra():
    """tests/, the experiments' top-level imports (the suite smoke-runs them) and the tutorials'
    code cells (the suite runs them too)."""
    used: dict[str, str] = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        used.update(dict.fromkeys(_third_party_imports(path), str(path.relative_to(ROOT))))
    for path in sorted((ROOT / "experiments").glob("*.py")):
        imports = _third_party_imports(path, top_level_only=True)
        used.update(dict.fromkeys(imports, str(path.relative_to(ROOT))))
    for path in sorted((ROOT / "docs" / "tutorials").glob("*.md")):
        imports = _third_party_imports(path, _tutorial_code(path))
        used.update(dict.fromkeys(imports, str(path.relative_to(ROOT))))
    declared = _declared("test")
    missing = {name: where for name, where in used.items()
               if _normal(DISTRIBUTIONS.get(name, name)) not in declared}
    assert not missing, f"imported but not in setup.cfg's core or test extra: {missing}"
    assert {"pytest", "mpmath", "arviz"} <= declared


def test_every_package_folder_is_installed_with_py_typed():
    config = _setup_cfg()
    listed = set(_names(config["options"]["packages"]))
    folders = {"pyrovae": ROOT / "pyrovae", "pyrovae.models": ROOT / "models",
               "pyrovae.guides": ROOT / "guides"}
    found = set()
    for package, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            if "__pycache__" not in parts:
                found.add(".".join((package, *parts)))
    assert found <= listed, f"folders missing from setup.cfg's packages: {sorted(found - listed)}"
    assert (Path(pyrovae.__file__).parent / "py.typed").is_file()
    assert "py.typed" in config["options.package_data"]["pyrovae"]


def test_the_library_never_prints():
    printing = []
    for folder in ("pyrovae", "models", "guides"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                    printing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not printing, f"library messages go through logging or warnings: {printing}"


def test_a_sweep_says_what_it_keeps_on_its_logger(tmp_path, caplog, capsys):
    sweep = Sweep(tmp_path / "runs.json")
    sweep.run("a", lambda: 1)
    with caplog.at_level(logging.INFO, logger="pyrovae.sweep"):
        assert sweep.run("a", lambda: 2) == 1
        assert sweep.run("b", lambda: 3, verbose=False) == 3
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("pyrovae.sweep", "INFO", "a: done before, result kept")]
    assert capsys.readouterr().out == ""
