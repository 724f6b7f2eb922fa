"""pyrovae: variational auto-encoders in Pyro for research.

Models (``pyrovae.models``) are generative sides p(x, z); guides (``pyrovae.guides``) are inference sides
q(z | x). Both are :class:`torch.nn.Module` s and ordinary Pyro programs: ``pyro.infer.SVI`` with any ELBO
(JIT forms included), ``Predictive`` and ``poutine`` handlers work on them, and each instance registers its
parameters under a name of its own, so any number of pairs can live side by side in one notebook and a guide
can be swapped for another in one line. ``pyrovae.infer`` adds training with warm-up, early stopping,
checkpoints and DDP, and scores pairs by importance-sampled held-out log-likelihood.

The everyday API is importable from here (loaded on first use, so ``import pyrovae`` stays light)::

    from pyrovae import VAE, NormalGuide, train, log_likelihood, load_mnist
"""

from __future__ import annotations

import importlib

__version__ = "0.7.0"

_EXPORTS = {
    "pyrovae.models": ("VAE", "SVAE", "GMVAE"),
    "pyrovae.guides": ("NormalGuide", "DeltaGuide", "VMFGuide", "PowerSphericalGuide", "GMVAEGuide", "FlowGuide"),
    "pyrovae.pairs": ("make_pair", "save_pair", "load_pair"),
    "pyrovae.infer": (
        "train", "log_likelihood", "ais_log_likelihood", "gap_report", "evaluate", "encode_data", "make_objective",
        "TrainingDiverged", "SettingsMismatch", "normalized_expression", "differential_expression",
    ),
    "pyrovae.data": (
        "TensorData", "CountData", "CellStream", "load_mnist", "load_fashion_mnist", "load_digits",
        "load_count_dataset", "from_anndata", "read_h5ad",
    ),
    "pyrovae.distributions": ("VonMisesFisher", "PowerSpherical", "HypersphericalUniform"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'pyrovae' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_HOME))


__all__ = ["__version__", *_HOME]
