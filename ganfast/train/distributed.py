"""Data-parallel training on several processes with torch.distributed (gloo on CPUs, NCCL on GPUs).

Under `torchrun` (WORLD_SIZE > 1 in the environment) `ganfast.Trainer` runs distributed by itself;
`launch(nproc, fn, *args)` starts `nproc` local processes the same way torchrun does (the entry
point behind `ganfast train --nproc N`).

How a step stays equal to the single-process step on the concatenation of all ranks' batches
(every rank has the same batch size B, world size W):

- Gradients: one combined backward per D step (loss + penalty, with its double backward) and one per
  G step; then the gradients of every parameter are flattened into one buffer, all-reduced (sum) and
  divided by W — as StyleGAN3 does, instead of DistributedDataParallel, whose hooks do not see the
  gradients of a double backward correctly. Losses and penalties that are means over samples give
  (1/W) Σ_r mean_r = the mean over the W·B samples, so the averaged gradient is exact. This happens
  before the gradient norm, clipping, GradScaler and the optimizer, so they are identical everywhere.
- Noise: the trainer's generator (same seed on every rank) draws the noise of the whole global batch
  (z, the penalties' α, DRAGAN's u) and each rank takes its slice [r·B, (r+1)·B): ranks get different
  noise, and the draws are the same as a single process with batch W·B.
- Batch-global statistics: the relativistic losses (mean of the other side's logits) are computed
  on the logits all-gathered from every rank, with a gather whose backward all-reduces the logits'
  gradient (exact); DRAGAN's std over the whole batch is all-reduced (two scalars; exact). The stats
  dict is all-reduced (mean over ranks) when it is read, so every rank sees the global stats and the
  stability monitor decides the same on every rank. BatchNorm layers use per-rank batch statistics
  (not exact; their running buffers are averaged over ranks after each step).
- Spectral norm's u, v and the EMA copy are functions of identical weights and deterministic kernels,
  so they stay identical on every rank without communication.
- Data: `fit` on a tensor draws one permutation of the data per epoch (same on every rank) and rank r
  takes samples [r·B, (r+1)·B) of each global batch of W·B; a DataLoader should use a
  DistributedSampler (`loader(...)` builds one).

Failures: every collective runs with a timeout; a rank whose step raises writes its error to the
rendezvous store and aborts the process group, so the other ranks' pending collectives fail at once
with a DistributedError that names that rank's error (not a hang), and it re-raises its own error.
"""
from __future__ import annotations

import datetime
import gc
import os
import socket
import tempfile
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch.nn.utils import parametrize

DEFAULT_TIMEOUT = 600.0  # seconds a collective may wait for the other ranks
_FAIL_KEY = "ganfast/failed"


class DistributedError(RuntimeError):
    """A collective failed: another rank failed, was killed, or did not arrive within the timeout."""


# --- the environment ------------------------------------------------------------------------------

def env_world_size() -> int:
    """WORLD_SIZE from the environment (torchrun / launch set it), 1 when absent."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def launched() -> bool:
    """True when this process is one of several (a process group exists, or WORLD_SIZE > 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return env_world_size() > 1


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and logs."""
    return rank() == 0


def default_device() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is there, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


# --- the trainer's communicator ----------------------------------------------------------------------

class _GatherCat(torch.autograd.Function):
    """Concatenate every rank's x along `dim` (equal shapes). Backward: each rank's loss is a function
    of all ranks' x, so rank r's input gradient is the SUM over ranks of the gradient of its slice
    (an all-reduce of the whole gradient, then the slice)."""

    @staticmethod
    def forward(ctx, x, dim, comm):
        ctx.dim, ctx.comm, ctx.n = dim, comm, x.shape[dim]
        parts = [torch.empty_like(x) for _ in range(comm.world)]
        comm._call("all-gather of the logits", dist.all_gather, parts, x.contiguous(), group=comm.group)
        return torch.cat(parts, dim)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        ctx.comm._call("all-reduce of the logits' gradient", dist.all_reduce, grad, group=ctx.comm.group)
        return grad.narrow(ctx.dim, ctx.comm.rank * ctx.n, ctx.n), None, None


class Communicator:
    """One trainer's view of the process group: rank, world size, and the collectives of a step.

    Creates the default process group when nobody has (env:// rendezvous from torchrun's variables;
    gloo for the CPU, NCCL for CUDA) with `timeout` seconds per collective."""

    def __init__(self, device: torch.device, timeout: float = DEFAULT_TIMEOUT):
        if not dist.is_available():
            raise RuntimeError("distributed training needs torch.distributed, which this PyTorch build lacks")
        if not timeout > 0:
            raise ValueError(f"dist_timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.owns_group = False
        if not dist.is_initialized():
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK") if k not in os.environ]
            if missing:
                raise RuntimeError(f"WORLD_SIZE={env_world_size()} but {', '.join(missing)} not set: start the "
                                   f"processes with torchrun or ganfast.train.distributed.launch")
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend, init_method="env://",
                                    timeout=datetime.timedelta(seconds=self.timeout),
                                    **({"device_id": device} if device.type == "cuda" else {}))
            self.owns_group = True
        # the default group, looked up at each call: no reference is kept here, so that aborting it
        # (abort) frees it, which closes gloo's connections and releases the other ranks at once
        self.group = None
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.backend = dist.get_backend()
        if self.backend == "nccl" and device.type != "cuda":
            raise ValueError(f"the process group uses NCCL but the models are on {device}: NCCL needs CUDA "
                             f"tensors (use gloo for the CPU)")
        self.device = device
        self.failed = False
        self.step = 0  # for messages
        self.batch_sizes = None  # the per-rank batch sizes of the first step

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- failure handling -------------------------------------------------------------------------
    def _peer_failure(self) -> str | None:
        try:
            store = dist.distributed_c10d._get_default_store()
            if store.check([_FAIL_KEY]):
                return store.get(_FAIL_KEY).decode(errors="replace")
        except Exception:  # noqa: BLE001 - the store lives on rank 0, which may be gone
            pass
        return None

    def _call(self, what: str, fn: Callable, *args, **kwargs):
        if self.failed:
            raise DistributedError(f"rank {self.rank}: the process group was aborted after an earlier failure; "
                                   f"the distributed run cannot continue")
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - gloo/NCCL raise RuntimeError subclasses of many kinds
            peer = self._peer_failure()
            why = (f"{peer}" if peer else
                   f"another rank failed, was killed, or did not reach this point within {self.timeout:g} s")
            self.abort(None)
            raise DistributedError(f"rank {self.rank} of {self.world}: the {what} at step {self.step} failed: "
                                   f"{why} (the backend said: {str(e).splitlines()[0] if str(e) else type(e).__name__})"
                                   ) from e

    def abort(self, exc: BaseException | None) -> None:
        """After `exc` on this rank: tell the others why (through the store) and abort the group so
        their pending collectives fail now instead of at the timeout. Idempotent."""
        if self.failed:
            return
        self.failed = True
        if exc is not None and not isinstance(exc, DistributedError):
            msg = f"rank {self.rank} failed at step {self.step} with {type(exc).__name__}: {exc}"
            try:
                dist.distributed_c10d._get_default_store().set(_FAIL_KEY, msg[:2000])
            except Exception:  # noqa: BLE001 - best effort
                pass
        try:
            dist.distributed_c10d._abort_process_group()
        except Exception:  # noqa: BLE001 - older PyTorch: destroy closes the connections too
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001
                pass
        gc.collect()  # gloo closes its sockets when the group object is freed

    # --- collectives of the trainer ----------------------------------------------------------------
    @torch.no_grad()
    def broadcast_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite `tensors` with rank 0's, one flat broadcast per dtype."""
        by_dtype: dict = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for ts in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1) for t in ts])
            self._call("broadcast of the initial parameters", dist.broadcast, flat, 0, group=self.group)
            torch._foreach_copy_(ts, [c.view_as(t) for c, t in zip(flat.split([t.numel() for t in ts]), ts)])

    def share_models(self, G, D) -> list[torch.Tensor]:
        """Give every rank rank 0's weights and buffers; return the buffers to average after each step:
        the floating ones that see per-rank batches (BatchNorm's running statistics), not those of a
        parametrization (spectral norm's u, v in G or D, PyTorch's or ganfast's: they follow from the
        identical weights)."""
        self.broadcast_([t.data for m in (G, D) for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()])
        derived = {id(b) for m in (G, D) for sub in m.modules() if isinstance(sub, parametrize.ParametrizationList)
                   for b in sub.buffers()}
        return [b for m in (G, D) for b in m.buffers() if b.is_floating_point() and id(b) not in derived]

    def broadcast_int(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        self._call("broadcast of the seed", dist.broadcast, t, 0, group=self.group)
        return int(t.item())

    @torch.no_grad()
    def average_grads_(self, params: list[torch.Tensor], what: str) -> None:
        """p.grad <- mean over ranks, through one flat all-reduce per dtype (a parameter without a
        gradient here counts as zero and gets the averaged gradient, so every rank stays identical)."""
        by_dtype: dict = {}
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            self._call(f"all-reduce of {what}'s gradients", dist.all_reduce, flat, group=self.group)
            flat.div_(self.world)
            torch._foreach_copy_(grads, [c.view_as(g) for c, g in zip(flat.split([g.numel() for g in grads]), grads)])

    @torch.no_grad()
    def average_(self, tensors: list[torch.Tensor], what: str) -> None:
        """In-place mean over ranks of floating tensors (stats, BatchNorm buffers)."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self._call(f"all-reduce of {what}", dist.all_reduce, flat, group=self.group)
        flat.div_(self.world)
        torch._foreach_copy_(tensors, [c.view_as(t) for c, t in zip(flat.split([t.numel() for t in tensors]), tensors)])

    def gather_cat(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """All ranks' x concatenated along dim, differentiable (see _GatherCat)."""
        return _GatherCat.apply(x, dim, self)

    def gather_logits(self, real_logits: torch.Tensor, fake_logits: torch.Tensor):
        """Every rank's real and fake logits (for the relativistic losses' batch means), one gather."""
        if real_logits.shape != fake_logits.shape:
            raise ValueError(f"relativistic losses pair real and fake logits: shapes {tuple(real_logits.shape)} "
                             f"and {tuple(fake_logits.shape)}")
        both = self.gather_cat(torch.stack([real_logits, fake_logits]), dim=1)
        return both[0], both[1]

    @torch.no_grad()
    def global_std(self, x: torch.Tensor) -> torch.Tensor:
        """Unbiased std of the elements of every rank's x (equal sizes), as torch.std of the
        concatenation: two all-reduces (sum, then the centered sum of squares), in float64."""
        n = x.numel() * self.world
        s = x.sum(dtype=torch.float64).reshape(1)
        self._call("all-reduce of DRAGAN's batch mean", dist.all_reduce, s, group=self.group)
        mean = s / n
        ss = (x.to(torch.float64) - mean).pow(2).sum().reshape(1)
        self._call("all-reduce of DRAGAN's batch variance", dist.all_reduce, ss, group=self.group)
        return (ss / (n - 1)).sqrt().to(x.dtype).reshape(())

    def check_batch_sizes(self, sizes: list[int]) -> None:
        """Every rank must pass batches of the same sizes (the mean over ranks of per-rank means is the
        global mean only then): one all-gather on the first step, then each rank checks its own."""
        if self.batch_sizes is not None:
            if sizes != self.batch_sizes:  # this rank's error aborts the others
                raise ValueError(f"distributed training needs the same batch size on every rank at every step: "
                                 f"rank {self.rank} got {sizes}, its first step had {self.batch_sizes} (use "
                                 f"drop_last=True)")
            return
        self.batch_sizes = sizes
        mine = torch.tensor(sizes, dtype=torch.int64, device=self.device)
        n = torch.tensor([mine.numel()], dtype=torch.int64, device=self.device)
        counts = [torch.empty_like(n) for _ in range(self.world)]
        self._call("all-gather of the batch sizes", dist.all_gather, counts, n, group=self.group)
        if len({int(c) for c in counts}) == 1:
            parts = [torch.empty_like(mine) for _ in range(self.world)]
            self._call("all-gather of the batch sizes", dist.all_gather, parts, mine, group=self.group)
            got = [p.tolist() for p in parts]
        else:
            got = [f"{int(c)} batches" for c in counts]
        if any(g != got[0] for g in got):
            raise ValueError(f"distributed training needs the same batch size on every rank (the averaged "
                             f"gradient is the gradient of the whole batch only then); the ranks have "
                             f"{', '.join(f'rank {i}: {g}' for i, g in enumerate(got))}. Use drop_last=True "
                             f"and a DistributedSampler (ganfast.train.distributed.loader)")

    def barrier(self, what: str) -> None:
        self._call(what, dist.barrier, group=self.group)


def wanted(distributed: bool | None) -> bool:
    """Whether a trainer runs distributed: None (auto) when launched on several processes."""
    if distributed not in (None, True, False):
        raise ValueError(f"distributed must be None (auto), True or False, got {distributed!r}")
    if distributed and not launched():
        raise ValueError("distributed=True but this process is alone: launch several with torchrun or "
                         "ganfast.train.distributed.launch (WORLD_SIZE > 1)")
    return launched() if distributed is None else distributed


def communicator(distributed: bool, device: torch.device, timeout: float = DEFAULT_TIMEOUT):
    return Communicator(device, timeout) if distributed else LocalCommunicator()


class LocalCommunicator:
    """The communicator of a trainer that runs alone: rank 0 of 1, and every collective is the
    identity, so the step is written once for both cases."""
    rank, world, is_main, failed, step = 0, 1, True, False, 0

    def abort(self, exc: BaseException | None) -> None:
        pass

    def share_models(self, G, D) -> list[torch.Tensor]:
        return []

    def broadcast_int(self, value: int) -> int:
        return value

    def average_grads_(self, params, what: str) -> None:
        pass

    def average_(self, tensors, what: str) -> None:
        pass

    def gather_logits(self, real_logits: torch.Tensor, fake_logits: torch.Tensor):
        return real_logits, fake_logits

    @torch.no_grad()
    def global_std(self, x: torch.Tensor) -> torch.Tensor:
        return x.std()

    def check_batch_sizes(self, sizes: list[int]) -> None:
        pass

    def barrier(self, what: str) -> None:
        pass


# --- data ------------------------------------------------------------------------------------------

def loader(dataset, batch_size: int, shuffle: bool = True, seed: int = 0, **kwargs):
    """A DataLoader over this rank's share of `dataset` (DistributedSampler, drop_last=True so that
    every rank gets full batches of batch_size). `fit` calls set_epoch at every epoch."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    world = dist.get_world_size() if dist.is_initialized() else env_world_size()
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank(), shuffle=shuffle, seed=seed,
                                 drop_last=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)


# --- launching ---------------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(local: int, nproc: int, port: int, threads: int, fn, args, result_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(nproc), RANK=str(local),
                      LOCAL_RANK=str(local), LOCAL_WORLD_SIZE=str(nproc))
    torch.set_num_threads(threads)
    try:
        result = fn(*args)
        if local == 0:  # a file, not a queue: a queue shares tensors by file descriptors that die with this process
            torch.save(result, result_path)
    except BaseException as e:
        # every rank ends with its own error; tell the others why and release them at once
        if not isinstance(e, DistributedError) and dist.is_available() and dist.is_initialized():
            try:
                store = dist.distributed_c10d._get_default_store()
                if not store.check([_FAIL_KEY]):  # the trainer may have said it already, with the step
                    store.set(_FAIL_KEY, f"rank {local} failed with {type(e).__name__}: {e}"[:2000])
            except Exception:  # noqa: BLE001
                pass
        raise
    finally:
        if dist.is_available() and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001
                pass


def launch(nproc: int, fn: Callable, *args, threads: int | None = None):
    """Run `fn(*args)` in `nproc` processes on this machine, as torchrun would: each gets
    MASTER_ADDR=127.0.0.1, a free MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK set, so a `Trainer` built
    inside trains distributed by itself (gloo on CPU, NCCL on cuda:LOCAL_RANK). `fn` and `args` must
    be picklable (a module-level function). Returns rank 0's return value. If a process raises or
    dies, the others are terminated and DistributedError names the rank and its error. nproc=1 calls
    fn(*args) here. threads: torch threads per process (default: the CPU count / nproc)."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an integer >= 1, got {nproc!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if nproc == 1:
        return fn(*args)
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ValueError(f"nproc={nproc} but only {torch.cuda.device_count()} CUDA devices: one process per GPU")
    import torch.multiprocessing as mp
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    with tempfile.TemporaryDirectory(prefix="ganfast-launch-") as tmp:
        result_path = os.path.join(tmp, "result.pt")
        try:
            mp.start_processes(_entry, args=(nproc, free_port(), threads, fn, args, result_path), nprocs=nproc,
                               join=True, start_method="spawn")
        except mp.ProcessRaisedException as e:
            raise DistributedError(f"distributed run failed: rank {e.error_index} raised:\n{e}") from None
        except mp.ProcessExitedException as e:
            signal = f" (signal {e.signal_name})" if getattr(e, "signal_name", None) else ""
            raise DistributedError(f"distributed run failed: rank {e.error_index} exited with code {e.exit_code}"
                                   f"{signal}") from None
        return torch.load(result_path, weights_only=False)  # written by rank 0 of this launch just now
