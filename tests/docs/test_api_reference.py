"""The API reference documents every public namespace, and the top-level page every name of ``pyrovae``.

Each page of ``docs/api`` documents one namespace with ``automodule`` (its ``__all__``, from the docstrings);
``make docs`` fails on a name that does not import. This test, without Sphinx, keeps the list of pages complete.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pyrovae

API = Path(__file__).resolve().parents[2] / "docs" / "api"
NOT_DOCUMENTED = {"pyrovae.optional"}  # the library's own plumbing for optional imports


def documented_modules() -> set[str]:
    return {name for page in API.glob("*.md")
            for name in re.findall(r"^\.\. (?:automodule|py:module):: (\S+)", page.read_text(encoding="utf-8"), re.M)}


def test_every_public_namespace_has_a_page():
    public = {f"pyrovae.{info.name}" for info in pkgutil.iter_modules(pyrovae.__path__)
              if not info.name.startswith("_")} | {"pyrovae", "pyrovae.models", "pyrovae.guides"}
    missing = public - NOT_DOCUMENTED - documented_modules()
    assert not missing, f"no page in docs/api documents {sorted(missing)}"


def test_every_documented_namespace_imports_and_every_page_is_in_the_index():
    index = (API / "index.md").read_text(encoding="utf-8")
    for name in documented_modules():
        importlib.import_module(name)
    pages = {page.stem for page in API.glob("*.md")} - {"index"}
    assert all(re.search(rf"^{page}$", index, re.M) for page in pages), "every page of docs/api is in its index"


def test_the_top_level_page_lists_every_name_of_pyrovae():
    page = (API / "pyrovae.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"\{py:\w+\}`~pyrovae\.[\w.]*\.(\w+)`", page))
    missing = set(pyrovae.__all__) - {"__version__"} - listed
    assert not missing, f"docs/api/pyrovae.md does not list {sorted(missing)}"
