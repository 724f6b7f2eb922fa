"""Sphinx configuration of the pyrovae documentation (``make docs``: warnings are errors)."""

from __future__ import annotations

import os

import pyrovae

project = "pyrovae"
author = "the pyrovae authors"
copyright = "the pyrovae authors"
release = pyrovae.__version__
version = ".".join(release.split(".")[:2])

# No extension fetches anything (no intersphinx): the build runs offline.
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
root_doc = "index"

# MyST: $...$ maths, ::: fences, heading anchors so that pages can link to sections.
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

# The tutorials are MyST text notebooks, executed at build time (small settings, a few seconds each). The cache
# (docs/_build/.jupyter_cache) re-runs only the tutorials whose code changed; an error in a cell fails the build.
# PYROVAE_DOCS_EXECUTE=force runs them all again (after a change to the library), =off not at all.
nb_execution_mode = os.environ.get("PYROVAE_DOCS_EXECUTE", "cache")
nb_execution_cache_path = os.path.join(os.path.dirname(__file__), "_build", ".jupyter_cache")
nb_execution_timeout = 300
nb_execution_in_temp = True  # a tutorial's files never land in the source tree
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
# tqdm.auto warns in a kernel without ipywidgets (its bars fall back to text); that warning is tqdm's, not the
# tutorial's, and names a page outside the repository. The kernels inherit this environment.
os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                                      "ignore:IProgress not found:Warning"]))

# API reference: each public namespace documents the names of its ``__all__``, from their docstrings.
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "member-order": "bysource",
}
autodoc_typehints = "signature"
autodoc_preserve_defaults = False  # True misreads the guides' forwarded signatures (__signature__)
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False
add_module_names = False

html_theme = "alabaster"
html_title = f"pyrovae {release}"
html_static_path: list[str] = []
html_theme_options = {"description": "Variational auto-encoders in Pyro for research", "fixed_sidebar": True,
                      "show_powered_by": False}  # no link leaves the site: no theme or Sphinx credits
html_show_sphinx = False
