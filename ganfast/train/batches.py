"""Batch sources for `fit`: each yields the next real batch on the trainer's device, and its position
as a small state that checkpoints carry, so that a resumed run sees the same batches as one that
never stopped. Only the current batch is moved to the device.

- a tensor of samples (on any device): shuffled each epoch with the trainer's generator;
- a DataLoader or any iterable of batches (x, or (x, ...) tuples): restarted at each epoch. A
  DataLoader's position is its epoch, the batches taken from it in that epoch and its RandomSampler's
  generator state at the epoch's start; on resume the epoch is rebuilt from that state with a batch
  sampler that skips the batches already taken, so no skipped sample is loaded. A plain iterable
  (or a DataLoader of an IterableDataset) is replayed from its start to that batch.
"""
from __future__ import annotations

import itertools

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler


class TensorBatches:
    """Batches of a tensor of samples, reshuffled every epoch with the trainer's generator.

    With W ranks, every rank draws the same permutation and rank r takes samples [r·B, (r+1)·B) of
    each global batch of W·B: the ranks' batches concatenated are the single-process batch of W·B."""

    def __init__(self, data: torch.Tensor, batch_size: int, gen: torch.Generator, state: dict | None,
                 rank: int = 0, world: int = 1, device=None):
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
        return self.data[idx].to(self.device, non_blocking=True)

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


class LoaderBatches:
    """Batches of a DataLoader / iterable, restarted at each epoch; (x, label, ...) gives x."""

    def __init__(self, data, device: torch.device, seed: int, state: dict | None = None):
        self.data, self.device, self.seed = data, torch.device(device), seed
        self.non_blocking = bool(getattr(data, "pin_memory", False))  # pinned host memory copies async
        self.epoch, self.taken, self._epoch_gen = 0, 0, None
        gen_state, skip = None, 0
        if state is not None and state.get("kind") == "loader":
            self.epoch, skip, gen_state = int(state["epoch"]), int(state["batches"]), state.get("sampler_generator")
        self._start_epoch(gen_state, skip)

    def _sampler_generator(self) -> torch.Generator | None:
        sampler = getattr(self.data, "sampler", None)
        if not isinstance(sampler, RandomSampler):
            return None
        if sampler.generator is None:  # a shuffle the checkpoint can replay: seeded by the trainer's seed
            sampler.generator = torch.Generator().manual_seed(self.seed)
        return sampler.generator

    def _start_epoch(self, gen_state=None, skip: int = 0) -> None:
        sampler = getattr(self.data, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new shuffle each epoch
            sampler.set_epoch(self.epoch)
        gen = self._sampler_generator()
        if gen is not None and gen_state is not None:
            gen.set_state(gen_state)
        self._epoch_gen = gen.get_state() if gen is not None else None
        self.taken = skip
        if skip and isinstance(self.data, DataLoader) and self.data.batch_sampler is not None and \
                not isinstance(self.data.dataset, IterableDataset):
            self.it = iter(_resumed_loader(self.data, skip))
        else:
            self.it = iter(self.data)
            for _ in range(skip):  # an iterable without a batch sampler: replay its start
                next(self.it, None)

    def __next__(self) -> torch.Tensor:
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
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"a batch must be a tensor or a (tensor, ...) tuple, got {type(batch).__name__}")
        return batch.to(self.device, non_blocking=self.non_blocking)

    def state(self) -> dict:
        return {"kind": "loader", "epoch": self.epoch, "batches": self.taken, "sampler_generator": self._epoch_gen}
