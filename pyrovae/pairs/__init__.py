"""Model/guide pairs by name, for scripts and sweeps that compare latent geometries, and saved pairs.

``make_pair("svae-vmf", 784, 10, hidden=(256, 128))`` builds the S-VAE on S^10 with its vMF guide. The
conventions are applied once, here:

* ``latent_dim`` is the dimension d of the latent manifold: R^d for the Gaussian kinds, the sphere S^d in
  R^(d+1) for the spherical ones (Davidson et al. 2018 compare N-VAE and S-VAE at equal d), so an S-VAE's
  ``z_dim`` is ``latent_dim + 1``;
* ``hidden`` lists widths from the data side for both networks: the decoder mirrors the encoder.

A pair that :func:`make_pair` builds records its arguments (``model.pair_arguments``), so that
:func:`save_pair` writes a folder from which :func:`load_pair` rebuilds it: the arguments as JSON, the weights as a
plain dict of tensors read back with ``torch.load(weights_only=True)`` (loading never runs code from a file), the
package version and the training history. A pair built otherwise is saved too, and its weights load into objects
the user builds as before (``load_pair(folder, model=..., guide=...)``).
"""

from pyrovae.pairs.building import PAIR_KINDS, latent_size, likelihood_spec, make_pair, pair_config
from pyrovae.pairs.building import build_pair as build_pair  # the names of the one module before, importable here
from pyrovae.pairs.saving import CONFIG_FILE as CONFIG_FILE
from pyrovae.pairs.saving import FORMAT_VERSION as FORMAT_VERSION
from pyrovae.pairs.saving import WEIGHTS_FILE as WEIGHTS_FILE
from pyrovae.pairs.saving import OtherSave as OtherSave
from pyrovae.pairs.saving import load_pair, read_config, save_pair
from pyrovae.pairs.saving import load_weights as load_weights
from pyrovae.pairs.saving import read_weights as read_weights

__all__ = ["PAIR_KINDS", "latent_size", "likelihood_spec", "load_pair", "make_pair", "pair_config", "read_config",
           "save_pair"]
