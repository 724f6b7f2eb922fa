"""pyrovae: variational auto-encoders in Pyro for research.

Models (``pyrovae.models``) are generative sides p(x, z); guides (``pyrovae.guides``) are inference
sides q(z | x). Both are plain :class:`torch.nn.Module` s whose parameters live in the module, never
in Pyro's global parameter store, so any number of model/guide pairs can live side by side in one
notebook and a guide can be swapped for another in one line. ``pyrovae.infer`` trains them with SVI
and scores them by importance-sampled held-out log-likelihood.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
