"""Optional dependencies, imported where they are first used.

``pip install pyrovae`` installs the core: torch, Pyro, NumPy, SciPy and tqdm, all that
``pyrovae.models``, ``pyrovae.guides``, ``pyrovae.distributions``, ``pyrovae.likelihoods``,
``pyrovae.nn`` and ``pyrovae.infer`` need. The rest comes with an extra: ``pyrovae[sc]`` for
single-cell data (pandas, AnnData, h5py, scikit-learn), ``pyrovae[atlas]`` for parquet atlases
(pyarrow), ``pyrovae[hub]`` to stream them from the Hugging Face hub, ``pyrovae[plot]`` for figures
(matplotlib).

A module that needs one imports it with :func:`require` inside the function, or keeps a
:func:`lazy_import` at the top, so that calling it without the extra raises an ImportError that
names the command to run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: the extra that installs each optional package, by import name
EXTRAS = {
    "anndata": "sc",
    "h5py": "sc",
    "pandas": "sc",
    "sklearn": "sc",
    "zarr": "sc",
    "pyarrow": "atlas",
    "huggingface_hub": "hub",
    "matplotlib": "plot",
    "scvi": "peer",
}


def require(module: str) -> ModuleType:
    """``module`` (``"pandas"``, ``"sklearn.metrics"``, ...), imported; if it is not installed, an
    ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        extra = EXTRAS.get(package)
        if extra is None:
            raise
        raise ImportError(f"{package} is needed here and is not installed: "
                          f"pip install 'pyrovae[{extra}]' "
                          f"(or pip install {_DISTRIBUTIONS.get(package, package)})") from error


class LazyModule(ModuleType):
    """A stand-in for ``module`` that imports it (:func:`require`) when an attribute is first read.
    It is a module object itself, so tools that list a module's members (autodoc, ``inspect``) pass
    over it."""

    def __init__(self, module: str) -> None:
        super().__init__(module)
        self.__dict__["_module"] = None

    def __getattr__(self, attribute: str):
        if attribute.startswith("__") and attribute.endswith("__"):
            raise AttributeError(attribute)  # probes (hasattr, inspect) import nothing
        module = self.__dict__["_module"]
        if module is None:
            module = self.__dict__["_module"] = require(self.__name__)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        return f"<lazily imported module {self.__name__!r}>"


def lazy_import(module: str) -> LazyModule:
    """A module-level import that waits for the first use: ``pd = lazy_import("pandas")``."""
    return LazyModule(module)


_DISTRIBUTIONS = {"sklearn": "scikit-learn", "huggingface_hub": "huggingface-hub", "scvi": "scvi-tools"}

__all__ = ["EXTRAS", "LazyModule", "lazy_import", "require"]
