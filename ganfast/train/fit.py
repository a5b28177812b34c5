"""The training loop behind `Trainer.fit`: batches, resume, logging, checkpoints and samples."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import is_positive_int
from .batches import LoaderBatches, TensorBatches, check_last_batch, untakeable
from .labels import is_pair, looks_labelled, missing_error, unconditional_error
from .logging import TrainLogger, save_curves, save_samples

log = logging.getLogger("ganfast.train")
RESUME_CHOICES = (True, False, "force")
DEFAULT_BATCH_SIZE = 64  # of a tensor of samples


def fit(trainer, data, steps: int, batch_size: int | None = None, *, log_every: int = 1, log_dir=None,
        checkpoint_dir=None, checkpoint_every: int | None = None, keep_checkpoints: int = 3, resume=True,
        sample_every: int | None = None, n_samples: int = 64, progress: bool = True, callback=None) -> list[dict]:
    """Train until `steps` steps in total have run (a resumed trainer continues to the same total).

    data: a DataLoader / iterable of batches (x or (x, ...)), or a tensor of samples (batched with
    batch_size, default 64, reshuffled each epoch with the trainer's generator; a DataLoader makes its
    own batches, and a batch_size that differs from its own is refused; an incomplete batch that the
    step cannot take, one that accumulate or pack cannot split or that gives a model with BatchNorm
    one sample per call, is skipped with a warning, as drop_last=True would skip it:
    batches.LoaderBatches). A conditional trainer takes
    (x, y, ...) batches, or a pair of tensors (samples, labels); its sample pictures hold one row
    per class. Only the current batch is moved
    to the trainer's device (a DataLoader with pin_memory=True copies without blocking). log_dir gets
    metrics.csv, TensorBoard scalars and samples/; checkpoints go to checkpoint_dir (default
    log_dir/checkpoints) every checkpoint_every steps (default 1000), keeping the last
    keep_checkpoints. resume: True loads an existing checkpoint there first, when it was written by
    the same configuration (parameter shapes, loss, penalty, optimizers), and refuses one written by
    another (ckpt.ResumeMismatchError lists the differences); "force" loads it anyway; False ignores
    it. The position in the data (a tensor's permutation, a DataLoader's epoch and batch) is restored
    too. Every sample_every steps, n_samples samples (fixed noise) go to log_dir/samples/ as a scatter
    over real data (2-D) or an image grid; at the end, log_dir/curves.png; the last step is always
    checkpointed and sampled. callback: called as callback(trainer, step, stats) after each
    completed step (stats None on steps not read); a dict of numbers it returns (floats, numpy scalars,
    one-element tensors) is added to that step's logged stats as floats (e.g. evaluation metrics; on
    steps that are logged, return the same keys every time so the CSV keeps one header). Returns the
    stats of the logged steps.

    Distributed: batch_size is per rank (a tensor's global batches of W·batch_size are split by
    rank; a DataLoader should use a DistributedSampler, see distributed.loader); rank 0 alone writes
    logs, samples and checkpoints (the others wait at a barrier), and every rank resumes from the
    same checkpoint_dir (shared by all ranks), whatever the number of ranks that wrote it."""
    try:
        return _fit(trainer, data, steps, batch_size, log_every=log_every, log_dir=log_dir,
                    checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                    keep_checkpoints=keep_checkpoints, resume=resume, sample_every=sample_every,
                    n_samples=n_samples, progress=progress, callback=callback)
    except BaseException as e:
        trainer._comm.abort(e)  # end the other ranks with this error instead of a hang
        raise


def _numbers(extra) -> dict:
    """A callback's extra stats as floats (they go to the CSV, TensorBoard and the history): numbers,
    numpy scalars and one-element tensors; anything else is an error that names it."""
    out = {}
    for k, v in extra.items():
        try:
            out[k] = float(v)  # a tensor on the GPU: its one host read, on the steps that are logged
        except (TypeError, ValueError, RuntimeError):
            got = f"a tensor of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else repr(v)[:80]
            raise TypeError(f"fit's callback returned {k!r}: {got}; its values must be numbers (a float, an int, "
                            f"a numpy scalar or a one-element tensor): they go to metrics.csv and TensorBoard"
                            ) from None
    return out


def _source(trainer, data, batch_size: int | None, state: dict | None):
    k = trainer.num_classes
    if isinstance(data, torch.utils.data.DataLoader) and batch_size is not None and \
            data.batch_size is not None and batch_size != data.batch_size:
        raise ValueError(f"fit's batch_size={batch_size} batches a tensor of samples; this DataLoader makes its own "
                         f"batches of {data.batch_size}: leave batch_size out, or build the DataLoader with "
                         f"batch_size={batch_size}")
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if k is None and looks_labelled(data):
        raise unconditional_error("fit")
    if k is not None and is_pair(data):
        return TensorBatches(data[0], batch_size, trainer._gen, state, trainer.rank, trainer.world_size,
                             trainer.device, labels=data[1], num_classes=k)
    if k is not None and isinstance(data, torch.Tensor):
        raise missing_error("fit", k)
    if isinstance(data, torch.Tensor):
        return TensorBatches(data, batch_size, trainer._gen, state, trainer.rank, trainer.world_size, trainer.device)
    if trainer.world_size > 1 and isinstance(data, torch.utils.data.DataLoader) and \
            not isinstance(data.sampler, torch.utils.data.DistributedSampler):
        log.warning(
            "distributed fit on a DataLoader without a DistributedSampler: the ranks may draw the same samples "
            "(use ganfast.train.distributed.loader)")
    cfg = trainer.config

    def cannot_take(n: int) -> str | None:
        return untakeable(n, cfg.pack, cfg.accumulate, trainer.G, trainer.D)

    return LoaderBatches(data, trainer.device, trainer.seed, state, num_classes=k, own_state=trainer.world_size == 1,
                         cannot_take=cannot_take, warned=check_last_batch(data, cannot_take))


def _fit(tr, data, steps, batch_size, *, log_every, log_dir, checkpoint_dir, checkpoint_every, keep_checkpoints,
         resume, sample_every, n_samples, progress, callback) -> list[dict]:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    for name, value in (("batch_size", batch_size), ("log_every", log_every), ("checkpoint_every", checkpoint_every),
                        ("sample_every", sample_every), ("keep_checkpoints", keep_checkpoints),
                        ("n_samples", n_samples)):
        if value is not None and not is_positive_int(value):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not any(resume is c for c in RESUME_CHOICES):
        raise ValueError(f"resume must be True, False or 'force', got {resume!r}")
    log_dir = Path(log_dir) if log_dir is not None else None
    if checkpoint_dir is None and log_dir is not None:
        checkpoint_dir = log_dir / "checkpoints"
    if checkpoint_dir is not None and checkpoint_every is None:
        checkpoint_every = 1000
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError("checkpoint_every needs checkpoint_dir (or log_dir)")
    if sample_every is not None and log_dir is None:
        raise ValueError("sample_every needs log_dir (samples are saved under log_dir/samples)")
    ckpt_dir = tr.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    found = ckpt.list_checkpoints(ckpt_dir) if resume and ckpt_dir is not None else []
    if found and ckpt.checkpoint_step(found[-1]) > tr.step_count:  # never go back in time
        tr.load_checkpoint(ckpt_dir, force=resume == "force")
    # a continuing trainer keeps its CSV rows up to its step (drops those a resumed run redoes)
    resumed_at = tr.step_count if tr.step_count > 0 else None
    main = tr._comm.is_main
    source = _source(tr, data, batch_size, tr.pending_data_state)
    tr.pending_data_state = None

    logger = TrainLogger(log_dir / "metrics.csv" if log_dir and main else None,
                         log_dir / "tensorboard" if log_dir and main else None, progress=progress and main,
                         total=steps, initial=tr.step_count, resume_step=resumed_at)
    history: list[dict] = []
    fixed_y, nrow = None, 8
    if tr.classes is not None:  # one row per class
        nrow = max(1, n_samples // tr.num_classes)
        n_samples = nrow * tr.num_classes
        fixed_y = tr.classes.balanced_labels(n_samples, tr.device)
    fixed_z = tr._noise(n_samples, torch.Generator(device=tr.device).manual_seed(tr.seed + 2))
    ref_real = None  # a few real samples (on the CPU) drawn under the samples
    n_events = len(tr.monitor.events)
    d_steps = tr.config.d_steps
    try:
        while tr.step_count < steps:
            batches = [next(source) for _ in range(d_steps)]
            if ref_real is None:
                ref_real = (batches[0][0] if fixed_y is not None else batches[0])[:max(n_samples, 1)].cpu()
            nxt = tr.step_count + 1
            read = (nxt % log_every == 0 or nxt == steps
                    or (checkpoint_every is not None and nxt % checkpoint_every == 0))
            stats = tr.step(batches if d_steps > 1 else batches[0], return_stats=read)
            del batches
            for e in tr.monitor.events[n_events:]:
                logger.message(f"[ganfast monitor] {e.message}")
            n_events = len(tr.monitor.events)
            if tr.rolled_back:
                if logger.bar is not None:
                    logger.bar.n = tr.step_count
                    logger.bar.refresh()
                continue
            logger.advance()
            if callback is not None:
                extra = callback(tr, tr.step_count, stats)
                if extra is not None and not isinstance(extra, dict):
                    raise TypeError(f"fit's callback must return a dict of numbers or None, got {type(extra).__name__}")
                if extra and stats is not None:  # read on the logged steps only: a GPU tensor's value syncs
                    stats = {**stats, **_numbers(extra)}
            if stats is not None:
                logger.log(tr.step_count, stats)
                history.append({"step": tr.step_count, **stats})
            last = tr.step_count == steps
            if checkpoint_every is not None and (tr.step_count % checkpoint_every == 0 or last):
                if main:  # every rank holds the same state: rank 0 writes it
                    ckpt.save_rotating(tr.state_dict(source.state()), ckpt_dir, tr.step_count, keep_checkpoints)
                # nobody reads or rotates checkpoints while it writes
                tr._comm.barrier(f"barrier after rank 0 wrote checkpoint {tr.step_count}")
            if main and sample_every is not None and (tr.step_count % sample_every == 0 or last):
                save_samples(tr.sample(n_samples, z=fixed_z, labels=fixed_y),
                             log_dir / "samples" / f"step-{tr.step_count:09d}.png", real=ref_real, nrow=nrow)
    finally:
        logger.close()
        if main and log_dir is not None and (log_dir / "metrics.csv").exists():
            save_curves(log_dir / "metrics.csv", log_dir / "curves.png")
    return history
