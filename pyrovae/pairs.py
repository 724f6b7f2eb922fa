"""Model/guide pairs by name, for scripts and sweeps that compare latent geometries.

``make_pair("svae-vmf", 784, 10, hidden=(256, 128))`` builds the S-VAE on S^10 with its vMF guide. The
conventions are applied once, here:

* ``latent_dim`` is the dimension d of the latent manifold: R^d for the Gaussian kinds, the sphere S^d in
  R^(d+1) for the spherical ones (Davidson et al. 2018 compare N-VAE and S-VAE at equal d), so an S-VAE's
  ``z_dim`` is ``latent_dim + 1``;
* ``hidden`` lists widths from the data side for both networks: the decoder mirrors the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyrovae.guides import DeltaGuide, GMVAEGuide, NormalGuide, PowerSphericalGuide, VMFGuide
from pyrovae.models import GMVAE, SVAE, VAE
from pyrovae.nn.checks import check_int, check_name

PAIR_KINDS = ("vae", "ae", "svae-vmf", "svae-power", "gmvae")


def latent_size(kind: str, latent_dim: int) -> int:
    """The length of a latent vector of ``kind``: ``latent_dim``, or ``latent_dim + 1`` on the sphere."""
    _check_kind(kind)
    return latent_dim + 1 if kind.startswith("svae") else latent_dim


def _check_kind(kind: str) -> None:
    if kind not in PAIR_KINDS:
        raise ValueError(f"unknown pair {kind!r}; expected one of {PAIR_KINDS}")


def make_pair(
    kind: str,
    x_dim: int,
    latent_dim: int,
    hidden: Sequence[int] = (400,),
    likelihood="bernoulli",
    *,
    num_components: int | None = None,
    activation: str = "relu",
    input_transform: str | None = None,
    latent_library: bool = False,
    batch_norm: bool = False,
    dropout: float = 0.0,
    encoder=None,
    decoder=None,
    name: str | None = None,
    categorical=(),
    continuous: int = 0,
):
    """A fresh ``(model, guide)`` of ``kind``:

    * ``"vae"``: :class:`~pyrovae.models.VAE` + :class:`~pyrovae.guides.NormalGuide`;
    * ``"ae"``: the same model + :class:`~pyrovae.guides.DeltaGuide` (train with ``kl_weight=0`` for a plain AE);
    * ``"svae-vmf"`` / ``"svae-power"``: :class:`~pyrovae.models.SVAE` + :class:`~pyrovae.guides.VMFGuide` /
      :class:`~pyrovae.guides.PowerSphericalGuide`;
    * ``"gmvae"``: :class:`~pyrovae.models.GMVAE` + :class:`~pyrovae.guides.GMVAEGuide` (``num_components``).

    :param int latent_dim: the latent manifold's dimension d (S^d in R^(d+1) for the spherical kinds).
    :param hidden: widths from the data side, shared by the encoder and (mirrored) the decoder.
    :param likelihood: a likelihood name or instance (count likelihoods: pass ``input_transform="log1p"``).
    :param encoder, decoder: custom networks instead of the MLPs (sizes: see the guide's and model's docs).
    :param categorical: the number of levels of each categorical covariate (batch first), for data
        ``(x, cat, cont)``: both the encoder and the decoder are conditioned on them (e.g. a
        ``CellStream``'s or ``CountData``'s ``categorical_sizes``); ``continuous``: the number of continuous ones.
    :param str name: the pair's name in Pyro's param store: the model is ``name + "/model"`` and the guide
        ``name + "/guide"`` (default: their class names; see :mod:`pyrovae.nn.registration`).
    """
    _check_kind(kind)
    latent_dim = check_int("make_pair", "latent_dim", latent_dim)
    z_dim = latent_size(kind, latent_dim)
    name = check_name("make_pair", name)
    covariates = dict(categorical=tuple(categorical), continuous=continuous)
    model_options = dict(batch_norm=batch_norm, dropout=dropout, name=None if name is None else f"{name}/model",
                         **covariates)
    guide_options = dict(input_transform=input_transform, latent_library=latent_library, batch_norm=batch_norm,
                         dropout=dropout, name=None if name is None else f"{name}/guide", **covariates)
    if kind == "gmvae":
        if num_components is None:
            raise ValueError("make_pair('gmvae', ...) needs num_components")
        model = GMVAE(x_dim, z_dim, num_components, hidden, likelihood, activation, decoder, **model_options)
        guide = GMVAEGuide(x_dim, z_dim, num_components, hidden, activation, encoder=encoder, **guide_options)
        return model, guide
    if num_components is not None:
        raise ValueError(f"num_components is for 'gmvae', not {kind!r}")
    model_class = SVAE if kind.startswith("svae") else VAE
    guide_class = {"vae": NormalGuide, "ae": DeltaGuide, "svae-vmf": VMFGuide, "svae-power": PowerSphericalGuide}[kind]
    model = model_class(x_dim, z_dim, hidden, likelihood, activation, decoder, **model_options)
    return model, guide_class(x_dim, z_dim, hidden, activation, encoder, **guide_options)


__all__ = ["PAIR_KINDS", "latent_size", "make_pair"]
