"""Saving a single-cell model and loading it with an AnnData: bit-identical results for every kind, the
registration travels with the model, genes are checked by name and order, another version warns, another kind
is named, and a crafted weights file is refused without running it."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch

import pyrovae.sc as sc
from tests.sc.conftest import make_adata

KINDS = {
    "vae": (sc.SingleCellVAE, {}),
    "svae-vmf": (sc.SingleCellSVAE, {"distribution": "vmf"}),
    "svae-power": (sc.SingleCellSVAE, {"distribution": "power"}),
    "gmvae": (sc.SingleCellGMVAE, {"num_components": 3}),
    "label-transfer": (sc.LabelTransferGMVAE, {}),
}


def _trained(cls, options, adata):
    adata.obs["partial"] = adata.obs["cell_type"].where(np.arange(adata.n_obs) % 2 == 0, "Unknown")
    sc.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="partial",
                     continuous_covariate_keys=["percent_mt"])
    model = cls(adata, latent_dim=3, hidden=(16,), likelihood="nb", **options)
    model.train(epochs=2, batch_size=32, progress=False, seed=0)
    return model


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_reloads_with_identical_results(tmp_path, adata, kind):
    cls, options = KINDS[kind]
    model = _trained(cls, options, adata)
    model.save(tmp_path / "model")
    colleague = make_adata()  # the same cells in a fresh AnnData, never set up
    colleague.obs["partial"] = adata.obs["partial"]
    loaded = sc.SingleCellModel.load(tmp_path / "model", colleague)  # the base class loads any kind
    assert type(loaded) is cls and loaded.registration == model.registration
    assert loaded.history.to_dict() == model.history.to_dict()
    assert sc.registration_of(colleague) == model.registration  # the registration is applied to the AnnData
    latent = model.get_latent_representation()
    assert np.array_equal(loaded.get_latent_representation(), latent)  # bit-identical
    assert np.array_equal(colleague.obsm["X_pyrovae"], latent)
    data = model._data()
    z = torch.from_numpy(latent)
    library = torch.from_numpy(data.library_sizes)
    with torch.no_grad():
        model.model.eval(), loaded.model.eval()
        decoded = model.model.decode(z, library, data.cat, data.cont).mean
        assert torch.equal(loaded.model.decode(z, library, data.cat, data.cont).mean, decoded)
    assert model.get_normalized_expression(seed=2).equals(loaded.get_normalized_expression(seed=2))
    if kind == "label-transfer":
        assert model.predict().equals(loaded.predict())


def test_genes_are_checked_by_name_and_order(tmp_path, adata):
    model = _trained(sc.SingleCellVAE, {}, adata)
    model.save(tmp_path)
    genes = list(adata.var_names)
    with pytest.raises(ValueError, match=r"another order \(position 0: 'gene1' here, 'gene0' in the model\)"):
        sc.SingleCellVAE.load(tmp_path, adata[:, genes[1::-1] + genes[2:]].copy())
    with pytest.raises(ValueError, match=r"lacks 1 of the model's 24 genes \(first: \['gene23'\]\)"):
        sc.SingleCellVAE.load(tmp_path, adata[:, genes[:-1]].copy())
    bigger = make_adata()
    bigger.var_names = [f"other{j}" if j == 0 else g for j, g in enumerate(genes)]
    with pytest.raises(ValueError, match=r"lacks 1 of the model's 24 genes \(first: \['gene0'\]\).*saved_genes"):
        sc.SingleCellVAE.load(tmp_path, bigger)
    assert sc.saved_genes(tmp_path) == genes
    reordered = adata[:, genes[::-1]].copy()
    assert sc.SingleCellVAE.load(tmp_path, reordered[:, sc.saved_genes(tmp_path)].copy()).gene_names == genes


@pytest.mark.filterwarnings("ignore:.*saved by pyrovae 0.0.1")
def test_version_kind_overwrite_and_columns(tmp_path, adata):
    model = _trained(sc.SingleCellGMVAE, {"num_components": 3}, adata)
    model.save(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path)
    model.save(tmp_path, overwrite=True)
    with pytest.raises(ValueError, match="holds a SingleCellGMVAE, not a SingleCellVAE"):
        sc.SingleCellVAE.load(tmp_path, adata)
    config = json.loads((tmp_path / "pair.json").read_text())
    config["pyrovae_version"] = "0.0.1"
    (tmp_path / "pair.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="saved by pyrovae 0.0.1"):
        sc.SingleCellGMVAE.load(tmp_path, adata)
    without_batch = adata.copy()
    del without_batch.obs["batch"]
    with pytest.raises(ValueError, match=r"lacks the obs columns \['batch'\]"):
        sc.SingleCellGMVAE.load(tmp_path, without_batch)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_crafted_weights_file_is_refused_without_running_it(tmp_path, adata):
    model = _trained(sc.SingleCellVAE, {}, adata)
    model.save(tmp_path)
    marker = tmp_path / "code_ran"
    torch.save({"model": _RunsCode(marker), "guide": {}}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="is not the weights file"):  # the configuration's digest tells it apart
        sc.SingleCellVAE.load(tmp_path, adata)
    config = json.loads((tmp_path / "pair.json").read_text())  # whoever crafts the file writes its digest too
    config["weights_sha256"] = hashlib.sha256((tmp_path / "weights.pt").read_bytes()).hexdigest()
    (tmp_path / "pair.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="refused.*was not executed"):
        sc.SingleCellVAE.load(tmp_path, adata)
    assert not marker.exists()
