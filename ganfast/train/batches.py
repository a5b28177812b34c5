"""Batch sources for `fit`: each yields the next real batch on the trainer's device, and its position
as a small state that checkpoints carry, so that a resumed run sees the same batches as one that
never stopped. Only the current batch is moved to the device.

- a tensor of samples (on any device), or a pair (samples, labels) for a conditional trainer:
  shuffled each epoch with the trainer's generator;
- a DataLoader or any iterable of batches (x, or (x, ...) tuples; (x, y, ...) for a conditional
  trainer, which then gets (x, y) batches): restarted at each epoch. A DataLoader's position is its
  epoch, the batches taken from it in that epoch and its shuffling sampler's generator state at the
  epoch's start (a RandomSampler, WeightedRandomSampler or SubsetRandomSampler without a generator
  of its own gets one seeded with the trainer's seed); on resume the epoch is rebuilt from that
  state with a batch sampler that skips the batches already taken, so no skipped sample is loaded.
  A plain iterable (or a DataLoader of an IterableDataset) is replayed from its start to that batch, with a warning
  on the "ganfast.train" logger: a stream of images loads every replayed batch again. Unless it keeps
  its own position: an iterable with state_dict() / load_state_dict() (torchdata's
  StatefulDataLoader) has its state saved in the checkpoint and restored, in a single process (with
  several, each rank's stream is its own, and rank 0 alone writes checkpoints: they replay).
  An incomplete batch that the step cannot take is skipped, with a warning (LoaderBatches).
"""
from __future__ import annotations

import itertools
import logging

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SubsetRandomSampler, WeightedRandomSampler

from .checkpoint import unloadable_reason
from .labels import check_range

log = logging.getLogger("ganfast.train")
_DRAWING_SAMPLERS = (RandomSampler, WeightedRandomSampler, SubsetRandomSampler)  # each draws from .generator


class TensorBatches:
    """Batches of a tensor of samples, reshuffled every epoch with the trainer's generator.

    With W ranks, every rank draws the same permutation and rank r takes samples [r·B, (r+1)·B) of
    each global batch of W·B: the ranks' batches concatenated are the single-process batch of W·B.
    With `labels` (N,) (a conditional trainer, K classes) each batch is a pair (x, y)."""

    def __init__(self, data: torch.Tensor, batch_size: int, gen: torch.Generator, state: dict | None,
                 rank: int = 0, world: int = 1, device=None, labels: torch.Tensor | None = None,
                 num_classes: int | None = None):
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or labels.dim() != 1 or \
                    labels.shape[0] != data.shape[0]:
                got = f"{labels.dtype} of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else \
                    type(labels).__name__
                raise ValueError(f"fit's labels must be a LongTensor of shape ({data.shape[0]},), one class index "
                                 f"per sample, got {got}")
            check_range(labels, num_classes, "fit's labels")
        self.labels = labels
        if data.shape[0] < batch_size * world:
            raise ValueError(f"the data has {data.shape[0]} samples, fewer than batch_size={batch_size}"
                             + (f" x {world} ranks" if world > 1 else ""))
        self.data, self.batch_size, self.gen = data, batch_size, gen
        self.rank, self.world = rank, world
        self.device = data.device if device is None else torch.device(device)
        self.perm, self.pos = None, 0
        if state is not None and state.get("kind") == "tensor" and state["perm"].numel() == data.shape[0]:
            self.perm, self.pos = state["perm"].to(data.device), int(state["pos"])

    def __next__(self) -> torch.Tensor:
        glob = self.batch_size * self.world
        if self.perm is None or self.pos + glob > self.perm.numel():
            self.perm = torch.randperm(self.data.shape[0], generator=self.gen, device=self.gen.device).to(self.data.device)
            self.pos = 0
        start = self.pos + self.rank * self.batch_size
        idx = self.perm[start:start + self.batch_size]
        self.pos += glob
        x = self.data[idx].to(self.device, non_blocking=True)
        if self.labels is None:
            return x
        return x, self.labels[idx.to(self.labels.device)].to(self.device, non_blocking=True)

    def state(self) -> dict | None:
        return None if self.perm is None else {"kind": "tensor", "perm": self.perm.cpu(), "pos": self.pos}


class _SkipBatches:
    """A batch sampler without its first `skip` batches (the resumed part of an epoch)."""

    def __init__(self, batch_sampler, skip: int):
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


def _resumed_loader(loader: DataLoader, skip: int) -> DataLoader:
    """The same DataLoader (workers, pinning, collate, seeds) over its batch sampler minus `skip` batches."""
    workers = loader.num_workers
    return DataLoader(loader.dataset, batch_sampler=_SkipBatches(loader.batch_sampler, skip), num_workers=workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
                      worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
                      generator=loader.generator, prefetch_factor=loader.prefetch_factor if workers else None,
                      persistent_workers=loader.persistent_workers and workers > 0,
                      pin_memory_device=loader.pin_memory_device)


def _skips_by_sampler(data) -> bool:
    """A DataLoader whose batch sampler can skip batches without loading them (a map-style dataset)."""
    return isinstance(data, DataLoader) and data.batch_sampler is not None and \
        not isinstance(data.dataset, IterableDataset)


def _keeps_own_position(data) -> bool:
    """An iterable that saves and restores its position itself (torchdata's StatefulDataLoader, or
    any with the same two methods: state_dict() after the batches yielded so far)."""
    return callable(getattr(data, "state_dict", None)) and callable(getattr(data, "load_state_dict", None))


def incomplete_last_batch(data) -> int | None:
    """Samples in the last batch of each epoch of a DataLoader that keeps an incomplete one
    (drop_last=False): len(sampler) % batch_size, 0 when every batch is full; None where the loader
    does not say (a batch_sampler of the user's own, a sampler without a length, any other iterable)."""
    if not isinstance(data, DataLoader) or data.batch_size is None:
        return None
    if data.drop_last:
        return 0
    try:
        return len(data.sampler) % data.batch_size  # the sampler: this rank's share under a DistributedSampler
    except TypeError:  # an IterableDataset's sampler has no length
        return None


def _has_batchnorm(model) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def untakeable(n: int, pack: int, accumulate: int, G, D) -> str | None:
    """Why the step cannot take a batch of n samples, or None where it can: accumulate and pack must
    split it, and a model with BatchNorm layers fails in training on one sample per call (one value
    per channel, as BatchNorm1d on (1, C) does; D's samples are the packed ones)."""
    split = pack * accumulate
    if n % split:
        what = " x ".join(f"{k}={v}" for k, v in (("pack", pack), ("accumulate", accumulate)) if v > 1)
        return f"cannot be split by {what}{f' = {split}' if pack > 1 and accumulate > 1 else ''}"
    micro = n // accumulate  # G's batch per call; D judges micro / pack (packed) samples
    if (micro == 1 and _has_batchnorm(G)) or (micro == pack and _has_batchnorm(D)):
        return "gives a model one sample per call, on which its BatchNorm layers fail in training (one value per channel)"
    return None


def check_last_batch(data, cannot_take) -> bool:
    """Before training: whether a DataLoader keeps an incomplete last batch that the step cannot take
    (`cannot_take(n)`, untakeable above); if so, warn now that fit skips it every epoch."""
    tail = incomplete_last_batch(data)
    reason = cannot_take(tail) if tail else None
    if reason is not None:
        log.warning("the DataLoader's incomplete last batch (%d samples in batches of %d leave %d) %s: fit skips it "
                    "every epoch, as drop_last=True would (pass drop_last=True to the DataLoader to say so)",
                    len(data.sampler), data.batch_size, tail, reason)
    return reason is not None


def _described(batch) -> str:
    """What a batch the trainer cannot take is, for its error; for a dict (a Hugging Face dataset's
    rows, collated), the way to make (x, y) pairs of it."""
    if isinstance(batch, (tuple, list)):
        return f"{type(batch).__name__} of {len(batch)}"
    if isinstance(batch, dict):
        keys = ", ".join(repr(k) for k in batch)
        return (f"a dict with keys {keys}: give the DataLoader a collate_fn that returns (images, labels), e.g. "
                f"lambda rows: (torch.stack([r['image'] for r in rows]), torch.tensor([r['label'] for r in rows]))")
    return type(batch).__name__


class LoaderBatches:
    """Batches of a DataLoader / iterable, restarted at each epoch; (x, label, ...) gives x, or
    (x, label) when num_classes is given (a conditional trainer: labels range-checked on the host).
    own_state: whether the checkpoints may carry a stateful iterable's own state (one process).

    An incomplete batch (fewer samples than the loader's batch_size, or than the largest batch so far
    where the loader does not say) for which `cannot_take(n)` gives a reason is skipped, as
    drop_last=True would skip it, with a warning at the first one unless `warned` (check_last_batch
    warned before training): a stream's last batch is known only when it comes, and refusing it
    there would end the run an epoch in. Skipped batches count in the position, so a resumed run
    skips them too. The decision depends on the batch's size alone: ranks given batches of equal
    sizes skip alike."""

    def __init__(self, data, device: torch.device, seed: int, state: dict | None = None,
                 num_classes: int | None = None, own_state: bool = True, cannot_take=None, warned: bool = False):
        self.data, self.device, self.seed, self.num_classes = data, torch.device(device), seed, num_classes
        self.cannot_take, self._warned_skip = cannot_take, warned
        self._full = data.batch_size if isinstance(data, DataLoader) else None  # None: batched by its sampler
        self._largest = 0  # the largest batch so far, the full size where the loader does not say
        self.non_blocking = bool(getattr(data, "pin_memory", False))  # pinned host memory copies async
        self.epoch, self.taken, self._epoch_gen = 0, 0, None
        # where the position cannot be skipped to, the iterable's own state (when it keeps one)
        self._own_state = own_state and not _skips_by_sampler(data) and _keeps_own_position(data)
        self._warned_state = False
        gen_state, skip, iterable_state = None, 0, None
        if state is not None and state.get("kind") == "loader":
            self.epoch, skip, gen_state = int(state["epoch"]), int(state["batches"]), state.get("sampler_generator")
            iterable_state = state.get("iterable_state") if self._own_state else None
        self._start_epoch(gen_state, skip, iterable_state)
        self._kept_epoch = self.epoch - 1  # the epoch of the last batch not skipped (none yet)

    def _sampler_generator(self) -> torch.Generator | None:
        """The generator of the loader's shuffling sampler (RandomSampler, or the class-balancing
        WeightedRandomSampler, or SubsetRandomSampler), whose state at each epoch's start the
        checkpoints carry; None for a sampler that does not draw (or draws its own way)."""
        sampler = getattr(self.data, "sampler", None)
        if not isinstance(sampler, _DRAWING_SAMPLERS):
            return None
        if sampler.generator is None:  # a shuffle the checkpoint can replay: seeded by the trainer's seed
            sampler.generator = torch.Generator().manual_seed(self.seed)
        return sampler.generator

    def _start_epoch(self, gen_state=None, skip: int = 0, iterable_state=None) -> None:
        sampler = getattr(self.data, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new shuffle each epoch
            sampler.set_epoch(self.epoch)
        gen = self._sampler_generator()
        if gen is not None and gen_state is not None:
            gen.set_state(gen_state)
        self._epoch_gen = gen.get_state() if gen is not None else None
        self.taken = skip
        if skip and _skips_by_sampler(self.data):
            self.it = iter(_resumed_loader(self.data, skip))
        elif skip and iterable_state is not None:
            self.data.load_state_dict(iterable_state)
            self.it = iter(self.data)
        else:
            self.it = iter(self.data)
            if skip:  # a stream's replay loads every batch again: it can take long, so say so
                log.warning("resuming: replaying the first %d batches of epoch %d of the data iterable to reach its "
                            "position (an iterable without a batch sampler can only be replayed; a DataLoader over a "
                            "map-style dataset skips batches without loading them)", skip, self.epoch)
            for _ in range(skip):  # an iterable without a batch sampler: replay its start
                next(self.it, None)

    def _next_batch(self):
        for attempt in range(2):
            try:
                batch = next(self.it)
                break
            except StopIteration:
                if attempt:
                    raise ValueError("the data iterable yields no batches") from None
                self.epoch += 1
                self._start_epoch()
        self.taken += 1
        return batch

    def _skipped(self, x: torch.Tensor) -> bool:
        """Whether x is an incomplete batch the step cannot take (then warn at the first one)."""
        n = x.shape[0] if x.dim() else 0
        self._largest = max(n, self._largest)
        full = self._full if self._full is not None else self._largest
        reason = self.cannot_take(n) if self.cannot_take is not None and n < full else None
        if reason is None:
            self._kept_epoch = self.epoch
            return False
        if self.epoch - self._kept_epoch >= 2:  # every batch of epoch _kept_epoch + 1 skipped
            raise ValueError(f"no batch of a whole epoch of the data can be taken: a batch of {n} samples (full batches "
                             f"hold {full}) {reason}")
        if not self._warned_skip:
            self._warned_skip = True
            log.warning("the data's incomplete batch of %d samples (full batches hold %d) %s: fit skips it and any like "
                        "it, as drop_last=True would (pass drop_last=True to the DataLoader to say so)", n, full, reason)
        return True

    def __next__(self) -> torch.Tensor:
        while True:
            batch = self._next_batch()
            if self.num_classes is not None:
                x, y = self._labelled(batch)
            else:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if not isinstance(x, torch.Tensor):
                    raise TypeError(f"a batch must be a tensor or a (tensor, ...) tuple, got {_described(batch)}")
            if self._skipped(x):
                continue
            x = x.to(self.device, non_blocking=self.non_blocking)
            if self.num_classes is None:
                return x
            return x, y.to(self.device, non_blocking=self.non_blocking)

    def _labelled(self, batch):
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], torch.Tensor)
                and isinstance(batch[1], torch.Tensor)):
            raise ValueError(f"this trainer is conditional (num_classes={self.num_classes}): the data must yield "
                             f"(x, y, ...) batches with y a LongTensor of class indices, got {_described(batch)}")
        x, y = batch[0], batch[1]
        if y.device.type == "cpu" and y.dtype == torch.long:
            check_range(y, self.num_classes, "the data's labels")
        return x, y

    def state(self) -> dict:
        out = {"kind": "loader", "epoch": self.epoch, "batches": self.taken, "sampler_generator": self._epoch_gen}
        if self._own_state:
            out["iterable_state"] = self._iterable_state()
        return out

    def _iterable_state(self):
        """The iterable's own state, or None (then a resume replays) where a checkpoint could not load
        it back."""
        state = self.data.state_dict()
        reason = unloadable_reason(state)
        if reason is None:
            return state
        if not self._warned_state:
            self._warned_state = True
            log.warning("the data iterable's state_dict() holds objects a checkpoint cannot load back (%s); a resume "
                        "will replay the iterable to its position instead", reason)
        return None
