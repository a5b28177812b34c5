"""`ganfast bench dist`: steps/s of `ganfast.Trainer` on 1 and 2 processes at the same global batch
(torch.distributed: gloo on the CPU; NCCL, one GPU per process, when the device is CUDA and there are
2 GPUs). Case: the MLP on 2-D points with spectral norm + R1, global batch 512 (256 per rank on 2).

Each process count runs in its own processes (ganfast.train.distributed.launch; 1 process = this one),
with the torch threads of this process shared out between the processes (plus 1 process x 1
thread, what each of 2 processes gets); steps/s = 1 / median,
speedup = median with 1 process / median with N. On a 2-core CPU with small
models the gradient all-reduces and the halved threads per process weigh against the split batch.
"""
from __future__ import annotations

import statistics
import time

import torch

from . import Row, _sync

GLOBAL_BATCH = 512


def _models():
    from .step import _mlp_models
    torch.manual_seed(0)
    return _mlp_models()


def _measure(device_type: str, rounds: int, round_time: float) -> float:
    """Median seconds per step of this process's trainer (in lockstep with the other ranks)."""
    from ..train import Trainer
    from ..train import distributed as dist_
    world = dist_.env_world_size()
    device = dist_.default_device() if device_type == "cuda" else torch.device("cpu")
    G, D = _models()
    G, D = G.to(device), D.to(device)
    opts = (torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999)),
            torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999)))
    t = Trainer(G, D, *opts, loss="ns", penalty="r1", spectral_norm=True, seed=0, device=device)
    gen = torch.Generator().manual_seed(1 + t.rank)
    real = (torch.rand((GLOBAL_BATCH // world, 2), generator=gen) * 2 - 1).to(device)
    for _ in range(3):
        t.step(real, return_stats=False)
    _sync(device)
    start = time.perf_counter()
    t.step(real, return_stats=False)
    _sync(device)
    # every rank must run the same number of steps: rank 0's calibration is broadcast
    calls = max(1, int(round_time / max(time.perf_counter() - start, 1e-7)))
    if t._comm is not None:
        calls = t._comm.broadcast_int(calls)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            t.step(real, return_stats=False)
        _sync(device)
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> list[Row]:
    from ..train.distributed import launch
    import torch.distributed as dist
    if not dist.is_available():
        return []
    rounds, round_time = (5, 0.2) if quick else (11, 0.5)
    if device.type == "cuda":
        counts = [1, 2] if torch.cuda.device_count() >= 2 else [1]
        backend = "nccl"
    else:
        counts, backend = [1, 2], "gloo"
    case = f"MLP 2-D sn+r1 global B={GLOBAL_BATCH}"
    total = torch.get_num_threads()
    rows = []
    for n in counts:
        per = max(1, total // n)
        if n == 1:
            sec = _measure(device.type, rounds, round_time)
        else:
            sec = launch(n, _measure, device.type, rounds, round_time, threads=per)
        rows.append(Row("dist", case, f"{n} process{'es' if n > 1 else ''} x {per} thread{'s' if per > 1 else ''}"
                        + (f" ({backend})" if n > 1 else ""), sec))
        if n == 1 and total > 1 and device.type == "cpu":  # what one of the 2 processes has
            torch.set_num_threads(1)
            try:
                rows.append(Row("dist", case, "1 process x 1 thread", _measure(device.type, rounds, round_time)))
            finally:
                torch.set_num_threads(total)
    return rows
