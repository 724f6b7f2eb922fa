"""The AnnData-first layer, in scverse's conventions, over pyrovae's functional API.

Register the data once, build a model of any latent geometry from it, train, and read the results from the
AnnData (or from the return values)::

    import pyrovae.sc as sc

    sc.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="cell_type")
    model = sc.SingleCellSVAE(adata, latent_dim=10, likelihood="nb", distribution="vmf")
    model.train(epochs=200, early_stopping=True, train_size=0.9)
    latent = model.get_latent_representation()         # adata.obsm["X_pyrovae"]
    expression = model.get_normalized_expression()     # adata.layers["pyrovae_normalized"]
    table = model.differential_expression("B", "NK")   # adata.uns["pyrovae_de"]["B vs NK"]
    model.save("svae/")
    model = sc.SingleCellSVAE.load("svae/", adata)     # genes checked by name and order

Models: :class:`SingleCellVAE` (Gaussian), :class:`SingleCellSVAE` (vMF or Power Spherical on the sphere),
:class:`SingleCellGMVAE` (mixture; clusters) and :class:`LabelTransferGMVAE` (semi-supervised; ``predict``).
Each holds its pair as ``model.model`` and ``model.guide`` for the rest of the library. A trained model maps a
query with new batches onto itself, frozen (:func:`map_query`, scArches' architecture surgery), and
:func:`transfer_labels` gives the query its labels.
"""

from pyrovae.sc.kinds import LabelTransferGMVAE, SingleCellGMVAE, SingleCellSVAE, SingleCellVAE
from pyrovae.sc.mapping import map_query, nearest_neighbor_labels, transfer_labels
from pyrovae.sc.model import RESULTS_KEY, SingleCellModel
from pyrovae.sc.registration import DataRegistration, registration_of, setup_anndata
from pyrovae.sc.saving import saved_genes

__all__ = [
    "RESULTS_KEY",
    "DataRegistration",
    "LabelTransferGMVAE",
    "SingleCellGMVAE",
    "SingleCellModel",
    "SingleCellSVAE",
    "SingleCellVAE",
    "map_query",
    "nearest_neighbor_labels",
    "registration_of",
    "saved_genes",
    "setup_anndata",
    "transfer_labels",
]
