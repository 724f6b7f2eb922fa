"""The SVI training loop, composed of parts a research script can also use on their own.

* the objective: :func:`~pyrovae.infer.training.objectives.make_objective` (Pyro's ELBOs, their traced forms, IWAE);
* the parameters, optimiser and guarded step: :mod:`pyrovae.infer.training.step`, found as ``pyro.infer.SVI``
  finds them;
* the KL weight over steps: :class:`~pyrovae.infer.training.schedule.KLSchedule`;
* evaluation at the end of an epoch: :func:`~pyrovae.infer.evaluation.evaluate`;
* best epoch and patience: :class:`~pyrovae.infer.training.early_stopping.EarlyStopping`;
* checkpoint and exact resume: :class:`~pyrovae.infer.training.checkpoint.TrainingCheckpoint`;
* torchrun and DDP: :mod:`pyrovae.infer.distributed`.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from tqdm.auto import tqdm

from pyrovae.data import as_source
from pyrovae.infer.arguments import check_device, check_integer, check_number, check_seed, floating_dtype, learning_rate
from pyrovae.infer.batches import (
    BatchSource,
    check_batch_norm_batches,
    check_stream_ranks,
    check_training_source,
    model_check,
    module_device,
    no_batch,
)
from pyrovae.infer.contract import check_model_guide
from pyrovae.infer.distributed import (
    all_reduce_sum,
    barrier,
    data_parallel,
    gather_objects,
    init_distributed,
    is_main_process,
    local_device,
    rank,
    world_size,
)
from pyrovae.infer.evaluation import evaluate, evaluation_mode
from pyrovae.infer.training.checkpoint import CheckpointInUse, TrainingCheckpoint, rng_state
from pyrovae.infer.training.divergence import (
    TrainingDiverged,
    exploded,
    exploded_message,
    non_finite_metrics,
    non_finite_step,
)
from pyrovae.infer.training.early_stopping import EarlyStopping
from pyrovae.infer.training.files import FileLock
from pyrovae.infer.training.history import History
from pyrovae.infer.training.objectives import make_objective
from pyrovae.infer.training.schedule import KLSchedule
from pyrovae.infer.training.step import SVIStep, svi_step, trainable_parameters


def _lock_checkpoint(path) -> FileLock:
    """The lock this run holds on its checkpoint, or :class:`CheckpointInUse` naming the other run's process."""
    TrainingCheckpoint.check_path(path)
    lock = FileLock(path)
    if not lock.acquire(blocking=False):
        raise CheckpointInUse(
            f"checkpoint {path} is in use by another training run ({lock.holder()}, holding {lock.path}); two runs "
            "on one checkpoint would overwrite each other's epochs. Wait for that run to finish (it then resumes "
            "here), or give this run its own checkpoint path (an experiment script's run: another --out)"
        )
    return lock


_EVAL_BATCH_SIZE = 1024  # data per batch of the end-of-epoch scores, unless eval_batch_size says otherwise


def train(
    model: Callable,
    guide: Callable,
    data,
    *,
    epochs: int = 10,
    batch_size: int | None = None,
    elbo="auto",
    num_particles: int = 1,
    optim=None,
    lr: float | None = None,
    kl_weight: float = 1.0,
    kl_warmup_epochs: float = 0.0,
    val_data=None,
    patience: int | None = None,
    restore_best: bool = True,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    device: str | torch.device | None = None,
    seed: int | None = None,
    freeze: str | None = None,
    drop_last: bool | None = None,
    eval_size: int = 2048,
    eval_batch_size: int | None = None,
    max_plate_nesting: int = 1,
    compile: bool = False,
    progress: bool = True,
) -> History:
    """Fit ``model`` and ``guide`` to ``data`` by stochastic variational inference.

    :param model: the generative side (a pyrovae model or any Pyro model following the contract).
    :param guide: the inference side; its ``"z"`` must live on the support of the model's prior.
    :param data: a tensor ``(N, x_dim)``, :class:`~pyrovae.data.TensorData`, :class:`~pyrovae.data.CountData`,
        Dataset, DataLoader, or a :class:`~pyrovae.data.CellStream` (see :func:`pyrovae.data.as_source`). The
        ``"data"`` plate is scaled by N / batch size, so the loss estimates the ELBO of the whole data set.
    :param int batch_size: data per step (default 128; a DataLoader's or CellStream's own, which batch by
        themselves: another value for those is an error that says where to set it).
    :param int epochs: total epochs (a resumed run continues up to this number).
    :param elbo: ``"auto"`` (``"enum"`` for a guide that enumerates, such as the GMVAE's, else ``"trace"``),
        ``"trace"``, ``"jit"``, ``"enum"``, ``"jit_enum"``, ``"meanfield"``, ``"iwae"`` or a
        pyro.infer ELBO instance (see :func:`~pyrovae.infer.training.objectives.make_objective`).
    :param int num_particles: samples per datum of the ELBO (vectorised), or of the IWAE bound.
    :param optim: ``None`` (Adam with ``lr``), a pyro.optim optimiser (``pyro.optim.Adam``, ``ClippedAdam``,
        ...), a torch optimiser class, or a function from parameters to a torch optimiser.
    :param float lr: the learning rate of the default Adam or of a torch optimiser class (default 1e-3). A
        pyro.optim optimiser or a function sets its own: an ``lr`` that differs from it is an error, not ignored.
    :param float kl_weight: weight of the latent sites' terms (beta-VAE; 0 trains a plain auto-encoder).
    :param float kl_warmup_epochs: ramp the KL weight linearly from 0 over this many epochs.
    :param val_data: data for validation every epoch (metrics ``val_elbo``, ``val_reconstruction``, ``val_kl``).
    :param int patience: stop when the validation ELBO (training ELBO without validation data) has not
        improved for this many epochs.
    :param bool restore_best: with ``patience`` or ``val_data``, end with the parameters of the best epoch.
    :param checkpoint: a file written atomically after every epoch; with ``resume`` an existing one is
        loaded and training continues where it stopped, exactly as if it had not been interrupted. A file written
        with other settings (learning rate or other optimiser arguments, batch size, other data, objective, KL
        weight, seed) is refused, naming what differs. The run holds a lock on the file (``checkpoint + ".lock"``):
        a second live run on the same file is refused with :class:`~pyrovae.infer.training.checkpoint.CheckpointInUse`
        before it touches anything.
    :param device: where to train (default: the device of tensor data, else of the model; under ``torchrun``,
        ``cuda:LOCAL_RANK`` or the CPU).
    :param int seed: seeds Pyro's, torch's, numpy's and Python's generators and the batch order (an integer in
        0..2**32 - 1; another type is a TypeError). The model's and guide's initial weights were drawn when they were
        built, from a state a fresh process draws at random: seed before building them too (``pyro.set_rng_seed``)
        for a run that repeats in another process.
    :param str freeze: ``"model"`` or ``"guide"``: keep that side's parameters fixed.
    :param bool drop_last: drop an incomplete last batch (default: only for traced or compiled objectives, which
        are traced once per batch shape).
    :param int eval_size: training data scored at each epoch's end (``train_*``; a stream's are cells it takes; none
        for a DataLoader).
    :param int eval_batch_size: data per batch of those scores and of ``val_data`` (default 1024; a validation
        DataLoader's or CellStream's own).
    :param bool compile: capture each step's loss and gradients as one graph and compile it with inductor
        (:mod:`~pyrovae.infer.training.compiled`): the same draws and, to float rounding, the same steps as
        without; seconds of compiling per batch shape (2-17 s on 2 CPU cores), repaid within a few epochs.

    Under ``torchrun --nproc_per_node=N`` (see :mod:`pyrovae.infer.distributed`) the model and guide train as
    one DistributedDataParallel module: rank 0's parameters are broadcast at the start, gradients are averaged,
    each rank reads its own part of the data (global batch: N x its batch size): its shards of a
    :class:`~pyrovae.data.CellStream`, or every N-th datum of each epoch's order of data held in memory or a
    Dataset (the ranks' batches together are the batch one process reads with the global batch size:
    :func:`~pyrovae.data.source.rank_share`); losses and the epoch's scores (``train_*``, ``val_*``) are averaged
    over the ranks, so that all stop early together, and rank 0 alone writes the checkpoint (which every rank
    resumes from; a checkpoint of another number of ranks is refused). Random draws use ``seed + rank``.

    :raises TrainingDiverged: when the loss or a gradient stops being finite (the step is not applied, so the
        modules keep their last finite parameters), or when an epoch's loss per datum rises more than a million
        times the size of the first step's (a learning rate far too large, named in the error); the checkpoint
        keeps the last finished epoch before it.
    """
    check_integer("epochs", epochs, 0)
    check_integer("num_particles", num_particles, 1)
    check_integer("patience", patience, 1, allow_none=True)
    check_integer("eval_size", eval_size, 0)
    check_integer("max_plate_nesting", max_plate_nesting, 1)
    check_number("kl_weight", kl_weight)
    check_number("kl_warmup_epochs", kl_warmup_epochs)
    learning_rate(optim, lr)  # an lr that optim would ignore is an error
    check_seed(seed)
    if freeze not in (None, "model", "guide"):
        raise ValueError(f"freeze must be None, 'model' or 'guide', got {freeze!r}")
    distributed = init_distributed()
    if distributed:
        check_stream_ranks(data)
    source = as_source(data, batch_size, "data")
    if device is not None:
        device = check_device(device)
    else:
        device = local_device() if distributed else (source.device or module_device(model, guide))
    modules = {name: m for name, m in (("model", model), ("guide", guide)) if isinstance(m, torch.nn.Module)}
    for module in modules.values():
        module.to(device)
    if seed is not None:
        pyro.set_rng_seed(seed + rank())
    for flag, value in (("compile", compile), ("resume", resume), ("restore_best", restore_best),
                        ("progress", progress)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False, got {value!r}")
    if drop_last is not None and not isinstance(drop_last, bool):
        raise TypeError(f"drop_last must be True, False or None (the objective's default), got {drop_last!r}")
    objective, elbo_name = make_objective(elbo, model, guide, num_particles, max_plate_nesting, compile=compile)
    chosen_drop_last = drop_last
    if drop_last is None:
        drop_last = compile or elbo_name.lower().startswith("jit")
    check, dtype = model_check(model), floating_dtype(model, guide)
    order_seed = seed
    if distributed:  # each rank reads its share of every epoch, in an order every rank draws alike
        source = source.for_ranks(rank(), world_size())
        if seed is None:
            order_seed = gather_objects(int(torch.randint(2**62, ())))[0]
    batches = BatchSource(source, None, shuffle=True, device=device, drop_last=drop_last, seed=order_seed,
                          check=check, dtype=dtype)
    check_training_source(batches, chosen_drop_last, distributed)
    trained = [module for name, module in modules.items() if name != freeze]  # set to training mode each epoch
    drop_last = check_batch_norm_batches(batches, trained, chosen_drop_last)
    validation = (
        BatchSource(val_data, eval_batch_size, shuffle=False, device=device, seed=0, check=check, name="val_data",
                    default_batch_size=_EVAL_BATCH_SIZE, argument="eval_batch_size", dtype=dtype, per_datum=False)
        if val_data is not None
        else None
    )
    train_eval = batches.head(eval_size, eval_batch_size or _EVAL_BATCH_SIZE)
    if len(batches) == 0:
        raise no_batch(batches)
    first_batch = next(iter(train_eval or validation or batches))

    requires_grad = {p: p.requires_grad for m in modules.values() for p in m.parameters()}
    lock = None
    if freeze:
        modules[freeze].requires_grad_(False)
    try:
        labelled = getattr(data, "y", None) is not None and hasattr(data, "check_components")
        if labelled and hasattr(model, "num_components"):  # label transfer: one component per label
            data.check_components(model.num_components)
        with evaluation_mode(model, guide):  # the dry runs leave batch-norm statistics alone
            check_model_guide(model, guide, first_batch)
            params, store_params = trainable_parameters(model, guide, first_batch)
        if distributed and store_params:
            raise ValueError(
                "distributed training needs the parameters inside the model and guide modules, but this pair uses "
                f"pyro.param sites {sorted(store_params)}; make them nn.Parameters of a PyroModule"
            )
        step = SVIStep(data_parallel(objective, device) if distributed else objective, params, optim, lr)
        stopping = EarlyStopping(patience, keep_best=restore_best and (patience is not None or validation is not None))
        if checkpoint is not None and is_main_process():
            lock = _lock_checkpoint(checkpoint)
        digested = checkpoint is not None  # the data's digests are what a checkpoint compares on resume
        settings = {"batch_size": batches.source.batch_size, "num_data": batches.num_data,
                    "data": batches.fingerprint() if digested else None,  # 64 data, as older checkpoints hold
                    "all_data": batches.fingerprint(None) if digested else None, "elbo": elbo_name,
                    "num_particles": num_particles, "kl_weight": kl_weight, "kl_warmup_epochs": kl_warmup_epochs,
                    "seed": seed, "freeze": freeze, "drop_last": drop_last,
                    # what early stopping compares (a checkpoint written before these were kept is not checked on them)
                    "val_data": validation.fingerprint(None) if digested and validation is not None else None,
                    "patience": patience, "restore_best": stopping.keep_best,
                    "ranks": world_size()}  # another number of ranks is another global batch (and deal of the data)
        hints = {} if chosen_drop_last is not None else {"drop_last": (
            "drop_last was not given: compile=True and the JIT objectives drop an incomplete last batch by default, "
            "the others keep it; pass drop_last= as the saved run had it")}
        saved = TrainingCheckpoint(checkpoint, modules, step.optimizer, batches, store_params, settings, hints)
        history, start_epoch = History(), 0
        if resume and saved.exists():
            start_epoch, history = saved.restore(device, stopping, rank())
            if start_epoch > epochs and not history.stopped_early:
                warnings.warn(f"checkpoint {checkpoint} holds {start_epoch} epochs, more than epochs={epochs}: the "
                              f"run is returned as it stands, with its {start_epoch} epochs (training does not go "
                              "back); give a new checkpoint path to train a run of fewer epochs", stacklevel=2)
            if history.stopped_early:
                epochs = start_epoch
        run = _Run(model=model, guide=guide, modules=modules, freeze=freeze, step=step, batches=batches,
                   train_eval=train_eval, validation=validation,
                   across_ranks=distributed,
                   history=history, stopping=stopping, saved=saved,
                   schedule=KLSchedule(kl_weight, kl_warmup_epochs, len(batches)), device=device, progress=progress)
        _fit(run, range(start_epoch, epochs))
    finally:
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
        if lock is not None:
            lock.release()
    stopping.restore(modules)
    return history


@dataclass
class _Run:
    """What the epochs of one :func:`train` call work with, set up by :func:`train` before the first epoch.

    :ivar modules: ``{"model": ..., "guide": ...}``, the sides that are ``nn.Module`` s.
    :ivar freeze: the side kept fixed (``"model"`` or ``"guide"``), or None.
    :ivar train_eval: the training data scored at the end of every epoch (``train_*`` metrics), or None.
    :ivar validation: ``val_data``'s batches (``val_*`` metrics), or None.
    :ivar across_ranks: whether the epoch's scores are averaged over the ranks (under torchrun: each rank scores a
        stream's cells of its own, or all of the data held in memory with draws of its own, and every rank must
        decide early stopping on the same numbers).
    :ivar saved: the checkpoint, written after every epoch when it has a path.
    """

    model: Callable
    guide: Callable
    modules: dict[str, torch.nn.Module]
    freeze: str | None
    step: SVIStep
    batches: BatchSource
    train_eval: BatchSource | None
    validation: BatchSource | None
    across_ranks: bool
    history: History
    stopping: EarlyStopping
    saved: TrainingCheckpoint
    schedule: KLSchedule
    device: torch.device
    progress: bool


def _fit(run: _Run, epochs: range) -> None:
    """The epochs of :func:`train`: steps, end-of-epoch metrics, early stopping and the checkpoint. A frozen side
    stays in evaluation mode (no dropout, batch norm's running statistics neither used from the batch nor
    updated), so that it is not changed at all."""
    step, batches, saved, history, stopping = run.step, run.batches, run.saved, run.history, run.stopping
    num_data, steps_per_epoch = batches.num_data, len(batches)
    global_step = first_step = epochs.start * steps_per_epoch
    step.steps = 0
    scales, filled = None, None  # (data scale, KL weight) on the device, rewritten in place when they change
    first_loss = saved.first_loss  # the run's first step's loss per datum (across ranks), kept in the checkpoint
    bar = tqdm(total=len(epochs) * steps_per_epoch, desc="train", dynamic_ncols=True,
               disable=not (run.progress and is_main_process()))
    with bar:
        for epoch in epochs:
            for name, module in run.modules.items():
                module.train(name != run.freeze)
            started, total_loss, seen = time.perf_counter(), torch.zeros((), device=run.device), 0
            batches.set_epoch(epoch)
            for args in batches:
                x = args[0]
                beta = run.schedule.weight(global_step)
                data_scale = (num_data or x.shape[0]) / x.shape[0]
                if scales is None or scales.dtype != x.dtype:
                    scales, filled = torch.zeros(2, device=run.device, dtype=x.dtype), None
                if filled != (data_scale, beta):  # rewritten only when they change (the last batch, KL warm-up)
                    scales.copy_(torch.tensor((data_scale, beta), dtype=x.dtype))
                    filled = (data_scale, beta)
                loss = step(args, scales)
                if loss is None:
                    raise TrainingDiverged(non_finite_step(global_step, steps_per_epoch, step.params, saved.path))
                total_loss += loss / data_scale
                if first_loss is None:  # one synchronisation per run
                    first_loss, first_seen = all_reduce_sum(torch.stack([loss / data_scale, loss.new_tensor(
                        x.shape[0])])).tolist()
                    first_loss /= max(first_seen, 1)
                    saved.first_loss = first_loss
                seen += x.shape[0]
                global_step += 1
                if step.deferred and (global_step - first_step) % 256 == 0 and step.failed:  # long epochs stop early
                    failure = first_step + step.first_failure
                    raise TrainingDiverged(non_finite_step(failure, steps_per_epoch, step.params, saved.path))
                bar.update()
            if step.deferred and step.failed:  # one synchronisation per epoch: was any step not finite?
                failure = first_step + step.first_failure
                raise TrainingDiverged(non_finite_step(failure, steps_per_epoch, step.params, saved.path))
            total_loss, seen = all_reduce_sum(torch.stack([total_loss, total_loss.new_tensor(seen)])).tolist()
            record = {"epoch": epoch + 1, "loss": total_loss / max(seen, 1), "kl_weight": beta}
            if first_loss is not None and exploded(first_loss, record["loss"]):
                raise TrainingDiverged(exploded_message(first_loss, record["loss"], epoch, step, saved.path))
            first = epoch == epochs.start  # the pairing is checked on the first epoch's scores only
            if run.train_eval is not None:
                metrics = evaluate(run.model, run.guide, run.train_eval, across_ranks=run.across_ranks,
                                   check_pairing=first)
                record.update({f"train_{k}": v for k, v in metrics.items()})
            if run.validation is not None:
                metrics = evaluate(run.model, run.guide, run.validation, across_ranks=run.across_ranks,
                                   check_pairing=first)
                record.update({f"val_{k}": v for k, v in metrics.items()})
            bad = sorted(k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v))
            if bad:
                raise TrainingDiverged(non_finite_metrics(record, bad, epoch, first_loss, step, saved.path))
            record["seconds"] = time.perf_counter() - started
            history.records.append(record)
            stopping.update(record.get("val_elbo", record.get("train_elbo", -record["loss"])), epoch + 1, run.modules)
            history.best_epoch = stopping.epoch
            history.stopped_early = stopping.should_stop
            bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "val_elbo") if k in record})
            if saved.path is not None:
                rng_states = gather_objects(rng_state())  # one state per rank
                if is_main_process():
                    saved.save(epoch + 1, history, stopping, rng_states)
                barrier()  # no rank reads the checkpoint before it is written
            if history.stopped_early:
                break


__all__ = ["svi_step", "train"]
