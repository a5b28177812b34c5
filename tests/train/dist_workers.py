"""Functions run in the spawned ranks of tests/train/test_distributed.py (module-level, so that
torch.multiprocessing can pickle them by name); each rank writes what the test checks to a file."""
import json
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

import ganfast
from trainer_models import cond_mlp_pair, labelled_points, mlp_pair, points

B = 8  # per-rank batch
CASES = [  # every penalty, with spectral norm and EMA; a relativistic loss; lazy R1 with 2 D steps
    dict(loss="ns", penalty=None),
    dict(loss="ns", penalty="r1"),
    dict(loss="ns", penalty="r2"),
    dict(loss="ns", penalty="wgan-gp"),
    dict(loss="ns", penalty="dragan"),
    dict(loss="rahinge", penalty="r1"),
    dict(loss="hinge", penalty="r1", penalty_interval=2, d_steps=2, grad_clip=0.5),
]


def build(case, model_seed=0, seed=123, distributed=None, timeout=30.0):
    G, D = mlp_pair(seed=model_seed)
    # SGD: an update proportional to the gradient, so a wrong gradient shows in the parameters
    g_opt = torch.optim.SGD(G.parameters(), lr=0.05, momentum=0.9)
    d_opt = torch.optim.SGD(D.parameters(), lr=0.05, momentum=0.9)
    return ganfast.Trainer(G, D, g_opt, d_opt, spectral_norm=True, ema=0.9, seed=seed, penalty_weight=1.0,
                           distributed=distributed, dist_timeout=timeout, **case)


def global_batch(step, world=2):
    return points(B * world, seed=10 + step)


def states(tr):
    return {"G": tr.G.state_dict(), "D": tr.D.state_dict(), "ema": tr.ema_g.state_dict()}


def equivalence(out_dir, steps):
    rank = int(os.environ["RANK"])
    results = []
    for case in CASES:
        # rank 1 starts from other weights, SN vectors and no seed: rank 0's are broadcast
        tr = build(case, model_seed=rank, seed=123 if rank == 0 else None)
        assert tr.world_size == 2 and tr.rank == rank
        stats = [tr.step(global_batch(s)[rank * B:(rank + 1) * B]) for s in range(steps)]
        results.append({"state": states(tr), "stats": stats})
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def fit_killed(ckpt_dir, data, steps, kill_at):
    """A 2-rank fit with checkpoints every 2 steps; rank 1 is SIGKILLed before step kill_at."""
    rank = int(os.environ["RANK"])
    tr = build(dict(loss="ns", penalty="r1"), model_seed=rank, seed=7)
    inner = tr.step

    def step(real, return_stats=True):
        if rank == 1 and tr.step_count + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return inner(real, return_stats)

    tr.step = step
    tr.fit(data, steps, batch_size=B, checkpoint_dir=ckpt_dir, checkpoint_every=2, progress=False)


def fit_resume(ckpt_dir, data, steps, out_dir):
    rank = int(os.environ["RANK"])
    tr = build(dict(loss="ns", penalty="r1"), model_seed=rank, seed=7)
    tr.fit(data, steps, batch_size=B, checkpoint_dir=ckpt_dir, checkpoint_every=2, progress=False)
    torch.save(states(tr), Path(out_dir) / f"resumed{rank}.pt")


def failing(out_dir, mode, timeout):
    """mode "raise": rank 1's third step gets a bad batch; "hang": rank 1 stalls past the timeout."""
    rank = int(os.environ["RANK"])
    tr = build(dict(loss="ns", penalty="r1"), timeout=timeout)
    start, err = time.monotonic(), None
    try:
        for s in range(4):
            real = global_batch(s)[rank * B:(rank + 1) * B]
            if rank == 1 and s == 2:
                if mode == "raise":
                    real = real[:, :1]  # wrong per-sample shape: a ValueError on this rank only
                else:
                    time.sleep(timeout + 3)
            tr.step(real)
    except Exception as e:  # noqa: BLE001 - recorded for the test
        err = [type(e).__name__, str(e)]
        own = e
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"err": err, "elapsed": time.monotonic() - start}))
    if mode == "raise" and rank == 1 and err is not None:
        # once rank 0 has written its file (launch terminates the others when one fails), raise for launch
        for _ in range(300):
            if Path(out_dir, "rank0.json").exists():
                break
            time.sleep(0.1)
        raise own


# --- conditional (labels) ---------------------------------------------------------------------------
COND_CASES = [dict(loss="ns", penalty="r1"), dict(loss="hinge", penalty="wgan-gp", class_probs=[1, 2, 3]),
              dict(loss="rahinge", penalty="dragan")]


def build_conditional(case, model_seed=0, seed=5, distributed=None):
    G, D = cond_mlp_pair(3, seed=model_seed)
    g_opt = torch.optim.SGD(G.parameters(), lr=0.05, momentum=0.9)
    d_opt = torch.optim.SGD(D.parameters(), lr=0.05, momentum=0.9)
    return ganfast.Trainer(G, D, g_opt, d_opt, spectral_norm=True, ema=0.9, seed=seed, penalty_weight=1.0,
                           num_classes=3, distributed=distributed, dist_timeout=30.0, **case)


def global_labelled_batch(step, world=2):
    return labelled_points(B * world, 3, seed=20 + step)


def cond_equivalence(out_dir, steps):
    rank = int(os.environ["RANK"])
    results = []
    for case in COND_CASES:
        tr = build_conditional(case, model_seed=rank, seed=5 if rank == 0 else None)
        stats = []
        for s in range(steps):
            x, y = global_labelled_batch(s)
            stats.append(tr.step((x[rank * B:(rank + 1) * B], y[rank * B:(rank + 1) * B])))
        results.append({"state": states(tr), "stats": stats})
    torch.save(results, Path(out_dir) / f"cond{rank}.pt")


def trained_generator_state(steps):
    """A run of a G with PyTorch's spectral norm (replaced by spectral_norm=True) on `world` ranks of
    the same global batches; returns rank 0's G state_dict (tensors: launch brings them back from
    the process)."""
    from torch.nn.utils.parametrizations import spectral_norm as torch_sn
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    G = nn.Sequential(torch_sn(nn.Linear(3, 300)), nn.ReLU(), torch_sn(nn.Linear(300, 2)))
    D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    tr = ganfast.Trainer(G, D, torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3),
                         spectral_norm=True, penalty="r1", seed=0, dist_timeout=30.0)
    n = B * 2 // world
    for s in range(steps):
        tr.step(points(B * 2, seed=30 + s)[rank * n:(rank + 1) * n])
    return tr.G.state_dict()
