"""What single-cell researchers ask of a trained count model: normalised expression and differential expression.

Both read the decoder's library-free expression ``rho = softmax(h)`` (each gene's share of a cell's expected
counts; scVI's ``px_scale``, :meth:`~pyrovae.likelihoods.counts.CountLikelihood.proportions`) at latents drawn
from the guide's q(z | x), on any latent geometry (Gaussian, sphere, mixture). A model with covariates can decode
every cell *as if* it had been measured in another batch (``transform_batch``): batch-corrected expression.

:func:`differential_expression` follows the "change" mode of Boyeau et al. (2023, *PNAS* 120, e2209124120), which
scVI implements: draws of rho for random cells of each group, their log2 fold change per gene, and the posterior
probability that it exceeds ``delta`` in absolute value, with a Bayes factor and a posterior false discovery rate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pyrovae.data.checks import check_int, check_real, require_columns, selection_indices
from pyrovae.infer.analysis.encoding import encode_batch, encode_data
from pyrovae.infer.arguments import check_device
from pyrovae.infer.batches import as_args, module_device
from pyrovae.infer.evaluation import evaluation_mode
from pyrovae.optional import lazy_import

pd = lazy_import("pandas")

_DE_MODES = ("change", "vanilla")


def _check_pair(model, guide) -> None:
    """The model first, the guide second: a swapped pair is named rather than failing inside a decoder."""
    if callable(getattr(model, "encode", None)) and callable(getattr(guide, "decode", None)):
        raise TypeError(f"the model and the guide were passed in swapped order ({type(model).__name__}, "
                        f"{type(guide).__name__}); the model (with decode) comes first, the guide (with encode) second")


def _proportions(model) -> Callable:
    likelihood = getattr(model, "likelihood", None)
    if not callable(getattr(likelihood, "proportions", None)) or not callable(getattr(model, "decoder_outputs", None)):
        raise ValueError(
            "normalised and differential expression read the decoder's library-free expression, which needs a "
            f"pyrovae model with a count likelihood (poisson, nb, zip, zinb); got {type(model).__name__} with "
            f"{type(likelihood).__name__}"
        )
    return likelihood.proportions


def _count_data(data, what: str):
    from pyrovae.data import CountData

    if not isinstance(data, CountData):
        raise TypeError(f"{what} needs a pyrovae.data.CountData (cells with gene names), got {type(data).__name__}; "
                        "wrap an AnnData with pyrovae.data.from_anndata(adata, layer='counts', batch_key=...)")
    return data


def _batch_code(data, model, batch) -> int:
    """The code of ``batch`` (a code, or a level name of the data's first categorical covariate)."""
    categorical = getattr(getattr(model, "covariates", None), "categorical", ())
    if not categorical:
        raise ValueError("transform_batch needs a model built with a batch covariate (categorical=...)")
    if isinstance(batch, str):
        if not data.categorical_keys:
            raise ValueError(f"transform_batch={batch!r} names a batch, but the data have no batch covariate")
        return data.code(data.categorical_keys[0], batch)
    code = int(batch)
    if not 0 <= code < categorical[0]:
        raise ValueError(f"transform_batch={batch} is outside the model's batches 0..{categorical[0] - 1}")
    return code


def _decode_rho(model, z: torch.Tensor, cat, cont, batch: torch.Tensor | None) -> torch.Tensor:
    """rho at ``z`` ``(..., cells, latent)``, decoded with the batch column of ``cat`` replaced by ``batch``."""
    if cat is not None and batch is not None:
        cat = cat.clone()
        cat[:, 0] = batch
    return _proportions(model)(model.decoder_outputs(z, cat, cont))


def _draw(q, num_samples: int) -> torch.Tensor:
    return q.sample((num_samples,)) if num_samples > 1 else q.sample().unsqueeze(0)


@torch.no_grad()
def normalized_expression(
    model,
    guide,
    data,
    *,
    library_size: float = 1e4,
    transform_batch=None,
    num_samples: int = 1,
    groupby: str | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int | None = 0,
) -> pd.DataFrame:
    """The posterior mean of each cell's library-free expression, scaled to ``library_size`` counts per cell.

    ``E_q(z|x)[rho(z)] * library_size`` from ``num_samples`` draws per cell (scVI's ``get_normalized_expression``).

    :param data: a :class:`~pyrovae.data.CountData` (its covariates, if any, are the model's inputs).
    :param transform_batch: None (each cell decoded in its own batch), a batch (code or level name) to decode
        every cell as if measured there, or a list of batches to average over (batch-corrected expression).
    :param str groupby: an ``obs`` column: return the mean over the cells of each group instead of one row per cell.
    :returns: a DataFrame, cells (or groups) x genes.
    :raises ValueError: for a ``library_size`` that is not a finite number > 0, ``num_samples`` or ``batch_size``
        that are not integers >= 1, and a ``groupby`` that is not a column (naming the columns there are).
    """
    data = _count_data(data, "normalized_expression")
    _check_pair(model, guide)
    _proportions(model)
    check_real("library_size", library_size, 0.0, open_interval=True)
    check_int("num_samples", num_samples, 1)
    check_int("batch_size", batch_size, 1)
    if seed is not None:
        check_int("seed", seed, 0)
    if groupby is not None:
        _check_column(data, groupby)
    device = check_device(device) if device is not None else module_device(model, guide)
    batches = None
    if transform_batch is not None:
        listed = transform_batch if isinstance(transform_batch, (list, tuple)) else [transform_batch]
        batches = [_batch_code(data, model, b) for b in listed]
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    rows = []
    try:
        with evaluation_mode(model, guide):
            for start in range(0, len(data), batch_size):
                args = as_args(data.batch(np.arange(start, min(start + batch_size, len(data))), device))
                z = _draw(encode_batch(guide, *args), num_samples)
                cat, cont = (args[1], args[2]) if len(args) > 2 else (None, None)
                if batches is None:
                    rho = _decode_rho(model, z, cat, cont, None).mean(0)
                else:
                    rho = torch.stack([_decode_rho(model, z, cat, cont, torch.full_like(cat[:, 0], b)).mean(0)
                                       for b in batches]).mean(0)
                rows.append((rho * library_size).cpu().numpy())
    finally:
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    frame = pd.DataFrame(np.concatenate(rows), index=data.obs.index, columns=data.gene_names)
    if groupby is not None:
        frame = frame.groupby(data.obs[groupby].to_numpy()).mean()
    return frame


def _check_column(data, groupby) -> None:
    """``groupby`` is a column of the cell table; otherwise name it and the columns there are."""
    if not isinstance(groupby, str) or groupby not in data.obs.columns:
        raise ValueError(f"groupby={groupby!r} is not a column of the cell table of {data.name} (columns: "
                         f"{list(data.obs.columns)}); pass one of them")


def _mask(data, group, groupby: str | None, name: str) -> np.ndarray:
    """A boolean mask over cells from a label of ``obs[groupby]``, a list of labels, a boolean mask or indices."""
    n = len(data)
    if groupby is not None:
        _check_column(data, groupby)
    if isinstance(group, (list, tuple)) and group and all(isinstance(g, str) for g in group):
        groupby = groupby or data.label_key
    if groupby is not None or isinstance(group, str):
        key = groupby or data.label_key
        if key is None:
            raise ValueError(f"{name}={group!r} names a group: pass groupby= (an obs column; columns: "
                             f"{list(data.obs.columns)})")
        labels = data.obs[key].astype(str).to_numpy()
        wanted = [str(group)] if isinstance(group, str) or np.isscalar(group) else [str(g) for g in group]
        unknown = sorted(set(wanted) - set(labels))
        if unknown:
            raise ValueError(f"{name}: no cells with {key} in {unknown} (groups: {sorted(set(labels))[:20]})")
        mask = np.isin(labels, wanted)
    else:
        if np.isscalar(group):
            raise ValueError(f"{name}={group!r} is one number: a group named by it is a label, given as a string "
                             f"({str(group)!r}, with groupby= where it is not the labels' column); one cell is a "
                             f"list of its index ([{group!r}])")
        mask = np.zeros(n, bool)
        mask[selection_indices(group, n, name)] = True
    if not mask.any():
        raise ValueError(f"{name} selects no cells")
    return mask


def _group_rho(model, guide, data, cells: np.ndarray, batch: np.ndarray | None, device,
               batch_size: int) -> torch.Tensor:
    """One draw of rho for each of ``cells`` (with repeats), decoded in ``batch`` (per draw) or its own batch."""
    draws = []
    for start in range(0, len(cells), batch_size):
        chunk = cells[start:start + batch_size]
        args = as_args(data.batch(chunk, device))
        z = encode_batch(guide, *args).sample()
        cat, cont = (args[1], args[2]) if len(args) > 2 else (None, None)
        codes = None if batch is None else torch.as_tensor(batch[start:start + batch_size], device=device)
        draws.append(_decode_rho(model, z, cat, cont, codes).double().cpu())
    return torch.cat(draws)


def _raw_statistics(data, mask: np.ndarray) -> dict[str, np.ndarray]:
    counts = data.counts[np.flatnonzero(mask)]
    library = np.asarray(counts.sum(1)).ravel()
    normalised = counts.multiply(1e4 / np.maximum(library, 1)[:, None]).tocsr()
    return {"raw_mean": np.asarray(counts.mean(0)).ravel(),
            "non_zeros_proportion": np.asarray((counts > 0).mean(0)).ravel(),
            "raw_normalized_mean": np.asarray(normalised.mean(0)).ravel()}


@torch.no_grad()
def differential_expression(
    model,
    guide,
    data,
    group1,
    group2=None,
    *,
    groupby: str | None = None,
    mode: str = "change",
    delta: float = 0.25,
    num_samples: int = 5000,
    batch_correction: bool = True,
    fdr: float = 0.05,
    pseudocount: float = 0.0,
    seed: int = 0,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """Bayesian differential expression of ``group1`` against ``group2`` (default: all other cells), per gene.

    ``num_samples`` cells are drawn with replacement from each group and one z ~ q(z | x) for each; the pairs give
    draws of ``lfc = log2(rho1 + pseudocount) - log2(rho2 + pseudocount)``. With ``batch_correction`` (a model
    with a batch covariate) both cells of a pair are decoded in the same batch, drawn from those the two groups
    were observed in, so a batch effect cannot pass for a difference between the groups.

    * ``mode="change"`` (default): ``proba_de = P(|lfc| > delta)``, ``bayes_factor = log(proba_de / (1 -
      proba_de))``; ``is_de_fdr_<fdr>`` marks the largest set of genes, by decreasing ``proba_de``, whose
      posterior expected false discovery proportion is at most ``fdr``.
    * ``mode="vanilla"``: ``proba_m1 = P(rho1 > rho2)``, ``bayes_factor = log(proba_m1 / proba_m2)``.

    :param group1: a label of ``obs[groupby]`` (or of the data's labels), a list of labels, a boolean mask or
        indices of cells.
    :param group2: the same, or None for the rest of the cells.
    :param fdr: the target posterior false discovery rate, in (0, 1).
    :returns: a DataFrame, one row per gene, sorted by evidence (``proba_de``, then ``|lfc_mean|``; ``vanilla``:
        ``|bayes_factor|``), with the columns of scVI's tables: ``proba_de``, ``proba_not_de``, ``bayes_factor``,
        ``lfc_mean``, ``lfc_median``, ``lfc_std``, ``lfc_min``, ``lfc_max``, ``scale1``, ``scale2``, ``raw_mean1``,
        ``raw_mean2``, ``non_zeros_proportion1``, ``non_zeros_proportion2`` (detection rates),
        ``raw_normalized_mean1``, ``raw_normalized_mean2``, ``is_de_fdr_<fdr>``. ``lfc_median`` and ``lfc_std`` are
        numpy's median (the mean of the two middle draws for an even number) and the population standard
        deviation (ddof 0) of the ``num_samples`` draws, as scVI computes them.
    :raises ValueError: for settings out of range (``fdr`` outside (0, 1), ``delta`` <= 0, a negative
        ``pseudocount``, ``num_samples`` < 2), a ``groupby`` that is not a column, and groups that are empty or
        overlap.
    """
    data = _count_data(data, "differential_expression")
    _check_pair(model, guide)
    _proportions(model)
    if mode not in _DE_MODES:
        raise ValueError(f"mode must be one of {_DE_MODES}, got {mode!r}")
    if not (isinstance(delta, (int, float)) and np.isfinite(delta) and delta > 0):
        raise ValueError(f"delta is the smallest |log2 fold change| that counts as a change, > 0; got {delta}")
    check_int("num_samples", num_samples, 2)
    check_real("fdr", fdr, 0.0, 1.0, open_interval=True)
    check_real("pseudocount", pseudocount, 0.0)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    mask1 = _mask(data, group1, groupby, "group1")
    mask2 = ~mask1 if group2 is None else _mask(data, group2, groupby, "group2")
    if not mask2.any():
        raise ValueError("group2 (the rest of the cells) is empty: group1 holds every cell")
    if (mask1 & mask2).any():
        raise ValueError(f"group1 and group2 share {int((mask1 & mask2).sum())} cells; they must be disjoint")
    device = check_device(device) if device is not None else module_device(model, guide)
    rng = np.random.default_rng(seed)
    cells1 = rng.choice(np.flatnonzero(mask1), num_samples)
    cells2 = rng.choice(np.flatnonzero(mask2), num_samples)
    batch = None
    categorical = getattr(getattr(model, "covariates", None), "categorical", ())
    if batch_correction and categorical and data.categorical_keys:
        observed = np.unique(data.cat.numpy()[mask1 | mask2, 0])
        batch = rng.choice(observed, num_samples)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with evaluation_mode(model, guide):
            rho1 = _group_rho(model, guide, data, cells1, batch, device, batch_size)
            rho2 = _group_rho(model, guide, data, cells2, batch, device, batch_size)
    finally:
        torch.random.set_rng_state(generator_state)
    lfc = torch.log2(rho1 + pseudocount) - torch.log2(rho2 + pseudocount)
    eps = 1e-8
    columns: dict[str, np.ndarray] = {}
    if mode == "change":
        proba = (lfc.abs() > delta).double().mean(0).numpy()
        columns.update(proba_de=proba, proba_not_de=1.0 - proba,
                       bayes_factor=np.log(proba + eps) - np.log(1.0 - proba + eps))
    else:
        proba = (rho1 > rho2).double().mean(0).numpy()
        columns.update(proba_m1=proba, proba_m2=1.0 - proba,
                       bayes_factor=np.log(proba + eps) - np.log(1.0 - proba + eps))
    columns.update(
        # numpy's median (torch's takes the lower middle value) and ddof 0, as scVI reports them
        lfc_mean=lfc.mean(0).numpy(), lfc_median=np.median(lfc.numpy(), 0), lfc_std=lfc.numpy().std(0),
        lfc_min=lfc.min(0).values.numpy(), lfc_max=lfc.max(0).values.numpy(),
        scale1=rho1.mean(0).numpy(), scale2=rho2.mean(0).numpy(),
    )
    for suffix, mask in (("1", mask1), ("2", mask2)):
        for key, value in _raw_statistics(data, mask).items():
            columns[key + suffix] = value
    frame = pd.DataFrame(columns, index=pd.Index(data.gene_names, name="gene"))
    if mode == "change":
        order = np.lexsort((-np.abs(frame["lfc_mean"].to_numpy()), -frame["proba_de"].to_numpy()))
        frame = frame.iloc[order]
        expected_false = np.cumsum(frame["proba_not_de"].to_numpy()) / np.arange(1, len(frame) + 1)
        frame[f"is_de_fdr_{fdr:g}"] = expected_false <= fdr
    else:
        frame = frame.iloc[np.argsort(-np.abs(frame["bayes_factor"].to_numpy()), kind="stable")]
    frame.attrs.update(mode=mode, delta=delta, num_samples=num_samples, group1=int(mask1.sum()),
                       group2=int(mask2.sum()), batch_corrected=batch is not None)
    return frame


def markers(frame: pd.DataFrame, min_bayes_factor: float = 3.0, min_detection: float = 0.1,
            top: int | None = None) -> pd.DataFrame:
    """The genes of a :func:`differential_expression` table that are *up* in group 1: ``lfc_mean > 0``, the
    ``bayes_factor`` column (a natural-log Bayes factor, scVI's convention) at least ``min_bayes_factor`` (3: a
    Bayes factor of about 20), detected in at least ``min_detection`` of group 1's cells; sorted by ``lfc_mean``,
    the usual way scVI users read marker genes off a table.

    :raises ValueError: for a table without the columns of a differential expression table (naming them)."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"markers takes the DataFrame that differential_expression returns, got "
                        f"{type(frame).__name__}")
    require_columns(frame, ("lfc_mean", "bayes_factor", "non_zeros_proportion1"), "the table given to markers",
                    "markers takes the table that differential_expression returns")
    check_real("min_detection", min_detection, 0.0, 1.0)
    if top is not None:
        check_int("top", top, 1)
    keep = ((frame["lfc_mean"] > 0) & (frame["bayes_factor"] >= min_bayes_factor)
            & (frame["non_zeros_proportion1"] >= min_detection))
    chosen = frame[keep].sort_values("lfc_mean", ascending=False)
    return chosen if top is None else chosen.head(top)


@torch.no_grad()
def predict_labels(guide, data, batch_size: int = 512, device=None, *, label_names=None) -> pd.DataFrame:
    """Transferred labels of a semi-supervised GMVAE (:class:`~pyrovae.guides.GMVAEGuide` trained on
    :meth:`CountData.with_labels <pyrovae.data.CountData.with_labels>`): the most probable label of every cell
    (column ``label``), its probability (``probability``) and q(y | x) for each label (one column per label).

    :param label_names: the guide's components' labels in order: the ``label_names`` of the data it was trained
        on. By default ``data``'s own, which are those only when ``data`` has the training data's labels; a query
        whose labels column holds another set (other types, or the same number of other ones) needs
        ``label_names=training_data.label_names``, else its cells would be named by the query's labels.
    """
    data = _count_data(data, "predict_labels")
    if not callable(getattr(guide, "classify", None)):
        raise TypeError(f"predict_labels needs a guide with classify() (GMVAEGuide), got {type(guide).__name__}")
    names = data.label_names if label_names is None else [str(name) for name in label_names]
    if label_names is not None and len(names) != getattr(guide, "num_components", len(names)):
        raise ValueError(f"label_names has {len(names)} labels, but the guide has {guide.num_components} components")
    if isinstance(getattr(guide, "num_components", None), int) and label_names is None:
        data.check_components(guide.num_components)  # before any work
    probs = encode_data(guide, data, fn=guide.classify, batch_size=batch_size, device=device).double().numpy()
    if names and len(names) != probs.shape[1]:
        raise ValueError(f"the guide has {probs.shape[1]} components but the data {len(names)} labels ({names[:5]})"
                         "; build the GMVAE with num_components=len(data.label_names)")
    columns = names or [str(k) for k in range(probs.shape[1])]
    frame = pd.DataFrame(probs, index=data.obs.index, columns=columns)
    best = probs.argmax(1)
    frame.insert(0, "probability", probs[np.arange(len(best)), best])
    frame.insert(0, "label", pd.Categorical(np.asarray(columns)[best], categories=columns))
    return frame


__all__ = ["differential_expression", "markers", "normalized_expression", "predict_labels"]
