"""A long log-likelihood scoring in parts, each saved as it finishes, so that an interrupted one resumes.

Scoring 10,000 images with ``proposal="auto"`` can take hours when many need AIS (the S-VAE at d = 20: about nine
on two CPU cores). :func:`log_likelihood_in_parts` scores the data ``part_size`` at a time with
:func:`~pyrovae.infer.log_likelihood`, writes each part's estimate into a folder atomically, and on a later call
reads the parts already there instead of scoring them again. Each part is drawn from its own seed, ``(seed,
part)``, so a resumed scoring is the scoring one uninterrupted call would have made, and two jobs that share the
folder write the same parts.

The folder records what it holds (``manifest.json``: the data's size, a digest of every datum (values and
covariates) and one of 256 of them spread over the set, the part size, the seed, the estimator's options and a
digest of the model's and the guide's parameters). A folder of another scoring, of the same scoring of other data
or of other weights, is refused, never mixed into the result; so is a part, when read, whose data are not those of
its place in the data (a file copied from another folder), by the hashes each estimate keeps of its data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from pyrovae._caller import warn_user
from pyrovae.data.source import IndexedSource
from pyrovae.infer.arguments import check_device, check_integer, floating_dtype
from pyrovae.infer.batches import BatchSource, module_device
from pyrovae.infer.estimation.ais import on_sphere
from pyrovae.infer.estimation.certify import auto_log_likelihood
from pyrovae.infer.estimation.importance import fingerprint
from pyrovae.infer.estimation.log_likelihood import REFINED, as_proposal, log_likelihood
from pyrovae.infer.estimation.result import LogLikelihood
from pyrovae.infer.evaluation import evaluation_mode
from pyrovae.infer.seeding import seeded
from pyrovae.infer.training.checkpoint import load_error
from pyrovae.infer.training.files import FileLock, atomic_write, damaged_record, save_with_checksums

MANIFEST = "manifest.json"
logger = logging.getLogger(__name__)  # one line per part scored: what a long job's log shows without a progress bar
_OPTIONS = inspect.signature(log_likelihood)
_AUTO_DEFAULTS = {name: inspect.signature(auto_log_likelihood).parameters[name].default
                  for name in ("ais_chains", "ais_steps")}


def parameters_digest(*modules) -> str:
    """A SHA-256 digest of the parameters and buffers of ``modules`` (``nn.Module``s; anything else, such as a
    plain Pyro function, contributes Pyro's parameter store), by name, dtype, shape and value."""
    digest = hashlib.sha256()
    for index, module in enumerate(modules):
        state = (module.state_dict() if isinstance(module, torch.nn.Module)
                 else {name: value for name, value in pyro.get_param_store().items()})
        for name, value in sorted(state.items()):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{index}/{name}/{tensor.dtype}/{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _is_arguments(data) -> bool:
    """Whether ``data`` is a tuple of tensors, ``(x, cat, cont)``: the model's arguments for every datum."""
    return isinstance(data, tuple) and bool(data) and all(isinstance(t, torch.Tensor) for t in data)


def _check_indexable(data) -> None:
    """Parts need the data by position: a tensor, a tuple ``(x, cat, cont)`` of tensors, pyrovae's data sets
    (``subset``) or a map-style Dataset."""
    if isinstance(data, torch.Tensor) or _is_arguments(data) or callable(getattr(data, "subset", None)):
        return
    if isinstance(data, tuple) and data and isinstance(data[0], torch.Tensor):
        kinds = ", ".join(type(t).__name__ for t in data)
        raise TypeError(f"log_likelihood_in_parts got a tuple of {kinds}: every entry of (x, cat, cont) must be a "
                        "tensor with a row per datum (no continuous covariates: x.new_zeros(len(x), 0))")
    if isinstance(data, (tuple, list, torch.utils.data.DataLoader, torch.utils.data.IterableDataset)) or not (
            hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        raise TypeError(f"log_likelihood_in_parts takes its parts by position, which a {type(data).__name__} does "
                        "not give: pass a tensor of data, a tuple (x, cat, cont) of tensors, a TensorData or "
                        "CountData (with covariates), or a map-style Dataset; a stream or DataLoader has no parts "
                        "to resume from")


def _num_data(data) -> int:
    return len(data[0]) if _is_arguments(data) else len(data)


def _subset(data, start: int, stop: int):
    """The data from ``start`` to ``stop``: a slice of a tensor (of each tensor of a tuple), ``data.subset`` of
    pyrovae's data sets, else a torch ``Subset``."""
    if isinstance(data, torch.Tensor):
        return data[start:stop]
    if _is_arguments(data):
        return tuple(t[start:stop] for t in data)
    if callable(getattr(data, "subset", None)):
        return data.subset(torch.arange(start, stop))
    return torch.utils.data.Subset(data, range(start, stop))


def _checked_options(options: dict) -> dict:
    """The options of :func:`~pyrovae.infer.log_likelihood` as the manifest records them (defaults left out), after
    the checks a wrong one would fail only in the first part (leaving a manifest behind)."""
    known = set(_OPTIONS.parameters) - {"model", "guide", "data", "progress"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"log_likelihood_in_parts got options {unknown} that log_likelihood does not take "
                        f"({sorted(known)})")
    check_integer("num_samples", options.get("num_samples", 1), 1)
    for name in ("batch_size", "max_samples_per_chunk", "ais_chains", "ais_steps", "refine_steps"):
        check_integer(name, options.get(name), 1, allow_none=True)
    if options.get("device") is not None:
        check_device(options["device"])
    proposal = options.get("proposal", "guide")
    if not isinstance(proposal, str):
        raise ValueError("log_likelihood_in_parts records the estimator in its folder: pass the proposal by name "
                         f"(e.g. 'auto'), not {type(proposal).__name__}")
    if proposal != "auto":
        as_proposal(proposal, options.get("refine_steps"))  # a wrong name is refused here, naming those there are
        if options.get("ais_chains") is not None or options.get("ais_steps") is not None:
            raise ValueError(f"ais_chains and ais_steps set the AIS stage of proposal='auto', and proposal is "
                             f"{proposal!r}")
    return _without_defaults({name: (str(value) if name == "device" and value is not None else value)
                              for name, value in options.items()})


def _without_defaults(options: dict) -> dict:
    """``options`` less those at log_likelihood's defaults: ``num_samples=500`` spelled out is the same scoring, and
    so are ``ais_chains=128`` and ``ais_steps=200`` (what ``proposal="auto"`` uses when they are left out)."""
    return {name: value for name, value in sorted(options.items())
            if value is not None and value != _OPTIONS.parameters[name].default
            and not (name in _AUTO_DEFAULTS and value == _AUTO_DEFAULTS[name])}


_WHAT = {"num_data": "the number of data", "data": "the data (a digest of 256 of them)",
         "all_data": "the data (a digest of every datum)", "part_size": "part_size",
         "seed": "the seed", "options": "the estimator's options",
         "digest": "the model's or guide's parameters (of plain functions: Pyro's whole parameter store)"}


def _difference(key: str, found, expected) -> str:
    if key in ("digest", "data", "all_data"):
        return f"{_WHAT[key]} differ"
    return f"{_WHAT.get(key, key)}: {found!r} there, {expected!r} now"


def _sees_parameters(model, guide) -> bool:
    """Whether the digest sees any parameter of the pair: modules' own, else Pyro's parameter store."""
    return any(isinstance(f, torch.nn.Module) and next(iter(f.state_dict()), None) is not None for f in (model, guide)
               ) or bool(list(pyro.get_param_store().keys()))


# 3: auto's stages certify by k-hat limits by the draws, AIS jitters its step (1, 2: not); 4: auto refines a latent
# on the sphere as a projected normal (3: in the guide's own family; its other parts are 4's); 5: every refinement
# first calibrates each start's spread (4: the steps started from the guide's; the proposals without one are 4's);
# 6: the calibration compares its factors on common draws and calibrates each latent site, then each coordinate of
# a Gaussian one, in turn (5: independent draws and a mean beyond three standard errors, one factor for all)
MANIFEST_VERSION = 6


def _latent_on_sphere(model, guide, data, device) -> bool:
    """Whether a latent site of ``guide`` lies on the sphere (the guide traced on the first datum)."""
    device = module_device(model, guide) if device is None else torch.device(device)
    source = BatchSource(_subset(data, 0, 1), 1, False, device, name="data", seed=0, dtype=floating_dtype(model, guide))
    with torch.no_grad(), poutine.block(), evaluation_mode(model, guide, frozen=True):
        trace = poutine.trace(guide).get_trace(*next(iter(source)))
    return any(site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
               and on_sphere(site["fn"]) for site in trace.nodes.values())


def _manifest(num_data: int, part_size: int, seed: int, options: dict, digest: str, data) -> dict:
    return {"version": MANIFEST_VERSION, "num_data": num_data, "part_size": part_size, "seed": seed,
            "digest": digest, "data": data_digest(data), "all_data": data_digest(data, None),
            "options": {name: options[name] for name in sorted(options)}}


def data_digest(data, size: int | None = 256) -> str | None:
    """A digest of ``size`` data spread evenly over ``data``, or of every datum (``size=None``): their values and
    covariates, as train's checkpoints take them, to tell one data set from another of the same size."""
    return BatchSource(data, None, shuffle=False, device=torch.device("cpu"), seed=0, name="data").fingerprint(size)


def log_likelihood_in_parts(
    model: Callable,
    guide: Callable,
    data,
    folder: str | os.PathLike,
    part_size: int = 500,
    seed: int = 0,
    progress: bool = False,
    **options,
) -> LogLikelihood:
    """:func:`~pyrovae.infer.log_likelihood` of ``data``, scored ``part_size`` data at a time, each part saved to
    ``folder`` as it finishes; parts already there are read, not scored again (see the module's documentation).

    :param folder: where the parts and their manifest live (created; one folder per scoring).
    :param int part_size: data per part: what an interruption can cost at most.
    :param int seed: the parts draw from seeds ``(seed, part)`` (the global random state is left as it was).
    :param options: of :func:`~pyrovae.infer.log_likelihood` (``num_samples``, ``proposal`` by name,
        ``ais_chains``, ``ais_steps``, ``batch_size``, ``max_samples_per_chunk``, ``device``).
    :raises ValueError: a folder holding another scoring (other data, part size, seed, options or weights) or
        parts without a manifest, a proposal passed as an object (a folder must be able to say what it holds: pass
        its name) or by a wrong name; all before anything is written.
    :raises TypeError: an option :func:`~pyrovae.infer.log_likelihood` does not take; data without positions to
        take parts by (a stream, a DataLoader: pass a tensor, a tuple ``(x, cat, cont)``, TensorData or CountData).

    With ``proposal="auto"`` each part that sends data to AIS checks the schedule by bidirectional Monte Carlo on
    simulated data of its own (16 data, 16 chains); the parts' gaps are averaged, and every AIS estimate is judged
    against that average (:meth:`LogLikelihood.concat`).

    Jobs that share the folder share the work: each claims a part before scoring it (a lock beside the part's
    file) and skips the parts other jobs hold, then waits for those and reads them (scoring a part itself when the
    job that held it stopped without saving it). Run the same call in two processes, on two GPUs or two cores, and
    the parts are scored once, about twice as fast.
    """
    check_integer("part_size", part_size, 1)
    check_integer("seed", seed, 0)
    recorded = _checked_options(options)
    _check_indexable(data)
    num_data = _num_data(data)
    if num_data == 0:
        raise ValueError("log_likelihood_in_parts got an empty data set")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; log_likelihood_in_parts keeps its parts in a folder: give a folder")
    folder.mkdir(parents=True, exist_ok=True)
    manifest = json.dumps(_manifest(num_data, part_size, seed, recorded, parameters_digest(model, guide), data),
                          indent=1)
    with FileLock(folder / MANIFEST):  # two jobs starting on one folder agree on its manifest
        path = folder / MANIFEST
        if not path.exists():
            strays = sorted(p.name for p in folder.glob("part-*.pt"))
            if strays:
                raise ValueError(f"{folder} holds parts ({strays[:3]}) but no {MANIFEST} to say what they are "
                                 "estimates of; score into another folder, or delete them")
            atomic_write(path, lambda stream: stream.write(manifest), binary=False)
        written = json.loads(path.read_text())
        found, expected = {**written, "options": _without_defaults(written.get("options", {}))}, json.loads(manifest)
        version = found.get("version", 1)
        if version > MANIFEST_VERSION:
            raise ValueError(f"{folder} holds the parts of a scoring by a newer pyrovae (manifest version {version}, "
                             f"this one reads {MANIFEST_VERSION}): upgrade pyrovae, or score into another folder")
        if version < 3 and found["options"].get("proposal") == "auto":
            raise ValueError(f"{folder} holds the parts of a proposal='auto' scoring by an earlier pyrovae (manifest "
                             f"version {version}: its stages certified at k-hat <= 0.7 whatever the draws, its AIS "
                             "took a fixed step size), which would mix two estimators: score into another folder, or "
                             "delete this one to start again")
        if version == 3 and found["options"].get("proposal") == "auto" and _latent_on_sphere(model, guide, data,
                                                                                          options.get("device")):
            raise ValueError(f"{folder} holds the parts of a proposal='auto' scoring by an earlier pyrovae (manifest "
                             "version 3: its refined stage kept a latent on the sphere in the guide's own family, "
                             "now refined as a projected normal), which would mix two estimators: score into another "
                             "folder, or delete this one to start again")
        if version < 6 and found["options"].get("proposal") in REFINED:
            why = ("its refinement started from the guide's spread, now calibrated first" if version < 5 else
                   "its calibration of the starts' spread compared the factors on independent draws and gave every "
                   "latent site and direction one factor, now on common draws and each site and coordinate in turn")
            raise ValueError(f"{folder} holds the parts of a proposal={found['options']['proposal']!r} scoring by an "
                             f"earlier pyrovae (manifest version {version}: {why}), which would mix two estimators: "
                             "score into another folder, or delete this one to start again")
        found["version"] = MANIFEST_VERSION  # the other proposals' parts hold what they held (certified when read)
        found.setdefault("all_data", expected["all_data"])  # a manifest before every datum was digested: recorded now
        if found != expected:
            differ = sorted(key for key in expected if found.get(key) != expected[key])
            if "all_data" in differ and "data" in differ:  # the digest of every datum says it
                differ.remove("data")
            raise ValueError(f"{folder} holds the parts of another scoring: "
                             + "; ".join(_difference(key, found.get(key), expected[key]) for key in differ)
                             + ". Score into another folder, or delete this one to start again")
        if written != found:  # an earlier version's manifest, in this version's terms
            atomic_write(path, lambda stream: stream.write(json.dumps(found, indent=1)), binary=False)
    if not _sees_parameters(model, guide):
        warn_user(f"{folder} cannot tell this pair from another: its model and guide are plain functions and "
                  "Pyro's parameter store is empty (tensors captured in a closure are not seen), so parts scored "
                  "with other weights would be read as this pair's; give each pair its own folder")
    starts = range(0, num_data, part_size)

    def read_or_score(part: int) -> LogLikelihood:
        stop = min(starts[part] + part_size, num_data)
        return _read_or_score(folder, part, seed, model, guide, _subset(data, starts[part], stop), options)

    parts, elsewhere = {}, []
    with tqdm(total=len(starts), desc="log-likelihood parts", disable=not progress) as bar:
        for part in range(len(starts)):
            claim = FileLock(_part_path(folder, part))
            if _part_path(folder, part).exists() or claim.acquire(blocking=False):  # saved, or claimed by this job
                try:
                    parts[part] = read_or_score(part)
                finally:
                    claim.release()
                bar.update()
            else:
                elsewhere.append(part)  # another job is scoring it: take the next part, read this one at the end
        for part in elsewhere:
            with FileLock(_part_path(folder, part)):  # waits for the other job; scores the part if it stopped
                parts[part] = read_or_score(part)
            bar.update()
    return LogLikelihood.concat([parts[part] for part in range(len(starts))])


def _part_path(folder: Path, part: int) -> Path:
    return folder / f"part-{part:05d}.pt"


def _read_or_score(folder: Path, part: int, seed: int, model, guide, data, options: dict) -> LogLikelihood:
    """Part ``part`` read from ``folder``, or scored from its own seed and saved there atomically."""
    path = _part_path(folder, part)
    if path.exists():
        damaged = damaged_record(path)
        if damaged is not None:
            raise ValueError(f"part {path.name} in {folder} is damaged (its record {damaged} no longer matches the "
                             "checksum written with it): delete it, and the next call scores that part again")
        try:
            saved = LogLikelihood(**torch.load(path, weights_only=True))
        except Exception as error:  # a truncated or foreign file: say which, never suggest weights_only=False
            raise ValueError(f"part {path.name} in {folder} cannot be read ({load_error(error)}); it is corrupt "
                             "or not a part: delete it, and the next call scores that part again") from None
        return _checked_part(saved, data, floating_dtype(model, guide), folder, path)
    started = time.perf_counter()
    with seeded(int(np.random.SeedSequence([seed, part]).generate_state(1)[0])):
        estimate = log_likelihood(model, guide, data, **options)
    atomic_write(path, lambda stream: save_with_checksums(dataclasses.asdict(estimate), stream))
    logger.info("%s: part %d scored (%d data, mean %.2f, %.0f%% certified) in %.1f min", folder, part,
                estimate.per_datum.numel(), estimate.mean, 100 * float(estimate.certified.float().mean()),
                (time.perf_counter() - started) / 60)
    return estimate


def _checked_part(saved: LogLikelihood, data, dtype: torch.dtype | None, folder: Path, path: Path) -> LogLikelihood:
    """A part read from ``path``, checked datum by datum against the data it stands for (as the estimators hash them:
    in the model's floating ``dtype``): the manifest vouches for the folder, not for each file in it (a part copied
    from another scoring's folder, or saved by a pyrovae whose hashes of the data differed, would otherwise surface
    only when two scorings are compared). A part saved before estimates kept the hashes gets this data's."""
    def as_scored(x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype) if dtype is not None and x.is_floating_point() else x

    source = BatchSource(data, None, shuffle=False, device=torch.device("cpu"), seed=0, name="data")
    if not isinstance(source.source, IndexedSource) or getattr(source.source.data, "transform", None) is not None:
        return saved  # data drawn afresh at each read (dynamic binarisation, augmentation): no fixed values to hash
    prints = torch.cat([fingerprint((as_scored(args[0]),)) for args in source])
    if saved.fingerprint is None:
        return dataclasses.replace(saved, fingerprint=prints)
    if not torch.equal(saved.fingerprint, prints):
        differ = int((saved.fingerprint != prints).sum()) if saved.fingerprint.shape == prints.shape else len(prints)
        raise ValueError(f"part {path.name} in {folder} holds the estimates of other data than its place in these "
                         f"data ({differ} of its {len(prints)} data differ): it was copied from another scoring's "
                         "folder or saved by a pyrovae that hashed the data otherwise; delete it, and the next call "
                         "scores that part again")
    return saved


__all__ = ["data_digest", "log_likelihood_in_parts", "parameters_digest"]
