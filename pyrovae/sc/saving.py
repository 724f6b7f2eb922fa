"""Saving a single-cell model to a folder and loading it with a colleague's AnnData.

The folder is :func:`~pyrovae.pairs.save_pair`'s (``pair.json`` with the architecture, the package version and
the training history; ``weights.pt``, a plain dict of tensors read with ``torch.load(weights_only=True)``), with a
``single_cell`` entry in ``pair.json``: the model's class, its data registration and its genes in order. Loading
checks the AnnData's genes by name and order, applies the saved registration to it, and never runs code from a
file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pyrovae.infer import History
from pyrovae.pairs.building import pair_config
from pyrovae.pairs.saving import CONFIG_FILE, WEIGHTS_FILE, load_pair, read_config, save_pair
from pyrovae.sc.registration import UNS_KEY, DataRegistration


def save_model(model, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save a :class:`~pyrovae.sc.model.SingleCellModel` in ``folder`` (made if needed); an existing saved model
    there is replaced only with ``overwrite``."""
    folder = Path(folder)
    if (folder / CONFIG_FILE).exists() and not overwrite:
        raise FileExistsError(f"{folder} already holds a saved model; pass overwrite=True to replace it, or choose "
                              "another folder")
    if pair_config(model.model, model.guide) is None:
        raise ValueError(f"this {type(model).__name__} holds code among its settings (an activation given as a module, "
                         "or custom networks), which a saved folder does not keep, so it could not be loaded: build "
                         "it with an activation by name (activation='elu') to save it")
    extra = {"single_cell": {"class": type(model).__name__, "registration": model.registration.to_dict(),
                             "genes": list(model.gene_names)}}
    return save_pair(folder, model.model, model.guide, model.history, extra=extra)


def saved_genes(folder: str | os.PathLike) -> list[str]:
    """The genes, in order, of the model saved in ``folder``: ``adata[:, saved_genes(folder)].copy()`` gives an
    AnnData the model loads with."""
    return list(_single_cell_entry(json.loads((Path(folder) / CONFIG_FILE).read_text()), folder)["genes"])


def _single_cell_entry(config: dict, folder) -> dict:
    entry = config.get("single_cell")
    if not isinstance(entry, dict):
        raise ValueError(f"{folder} holds a model/guide pair saved by save_pair, not a single-cell model: load it "
                         "with pyrovae.pairs.load_pair(folder)")
    return entry


def gene_mismatch(found: list[str], expected: list[str], purpose: str, genes: str = "model.gene_names") -> str:
    """What differs between the AnnData's genes ``found`` and the model's ``expected``, and the fix (``genes``: how
    the user gets the model's genes: the model's attribute, or the saved folder's list)."""
    fix = f"subset and order it as the model's genes: adata = adata[:, {genes}].copy()"
    missing = [g for g in expected if g not in set(found)]
    if missing:
        return (f"the AnnData lacks {len(missing)} of the model's {len(expected)} genes (first: {missing[:5]}), so "
                f"the model cannot {purpose}; {fix}")
    extra = [g for g in found if g not in set(expected)]
    if extra:
        return (f"the AnnData has {len(extra)} genes the model was not trained on (first: {extra[:5]}) beside its "
                f"{len(expected)}; {fix}")
    position = next(i for i, (a, b) in enumerate(zip(found, expected)) if a != b)
    return (f"the AnnData has the model's genes in another order (position {position}: {found[position]!r} here, "
            f"{expected[position]!r} in the model); {fix}")


def load_model(cls, folder: str | os.PathLike, adata, *, device=None):
    """The model of class ``cls`` (or a subclass named in the folder) saved in ``folder``, bound to ``adata``.

    :raises ValueError: when the AnnData's genes differ from the saved ones by name or order (naming the first
        differences), when it lacks the registered layer or columns, or when the folder holds another kind.
    :warns UserWarning: when another pyrovae version saved the folder.
    """
    from pyrovae.sc.model import SingleCellModel

    folder = Path(folder)
    config = read_config(folder)
    entry = _single_cell_entry(config, folder)
    chosen = _subclass(cls, entry["class"], folder)
    registration = DataRegistration.from_dict(entry["registration"])
    var_names = [str(g) for g in adata.var_names]
    if var_names != entry["genes"]:
        raise ValueError(gene_mismatch(var_names, entry["genes"], "be loaded with it",
                                       "pyrovae.sc.saved_genes(folder)") + f" (folder: {folder})")
    registration.check_columns(adata)
    model, guide, history = load_pair(folder)
    if device is not None:
        model.to(device)
        guide.to(device)
    loaded = SingleCellModel.__new__(chosen)
    loaded.registration, loaded.adata, loaded.gene_names = registration, adata, list(entry["genes"])
    loaded.model, loaded.guide = model, guide
    loaded.pair_kind = config["pair"]["kind"]
    loaded.history = history if history is not None else History()
    loaded.is_trained = len(loaded.history) > 0
    loaded._data()  # reads the counts as registered now: an unknown batch is named at once
    adata.uns[UNS_KEY] = json.dumps(registration.to_dict())  # only once the AnnData is known to fit
    return loaded


def _subclass(cls, name: str, folder):
    """The class called ``name`` among ``cls`` and its subclasses; a folder of another kind is refused."""
    seen, queue = {}, [cls]
    while queue:
        current = queue.pop()
        seen[current.__name__] = current
        queue.extend(current.__subclasses__())
    if name not in seen:
        raise ValueError(f"{folder} holds a {name}, not a {cls.__name__}: load it with pyrovae.sc.{name}.load "
                         "(or pyrovae.sc.SingleCellModel.load, which loads any kind)")
    return seen[name]


__all__ = ["WEIGHTS_FILE", "gene_mismatch", "load_model", "save_model", "saved_genes"]
