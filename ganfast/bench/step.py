"""`ganfast bench step`: one full GAN step (D update + G update) of `ganfast.Trainer` against the
plain-PyTorch loop with the same models, optimizers and batch. Cases: an MLP on 2-D points (B = 256),
DCGAN at 32x32 (B = 64; width 32 and B = 32 with --quick), and that DCGAN class-conditional (10
classes) with DiffAugment ("cond+aug": the plain loop draws the fake labels uniformly and augments with
the reference DiffAugment), each without regularization and with spectral norm + R1 (PyTorch's
spectral norm; the loop shares D(real) between the loss and R1 and freezes D in the G step, as a
careful user writes it).

The trainer's step has the same work, but calls D once on cat(real, fake) in the D step where D is
small and judges each sample on its own (the MLP without R1; `Trainer._joint`), which the plain loop
could do too but rarely does.

Variants: "eager" is the plain loop, "trainer" reads the stats every step (one host sync),
"trainer-nostats" does not; with SN, "trainer-nostats-sn-per-layer" runs one spectral-norm op per
layer instead of the trainer's one multi-tensor call (`Trainer.sn_multi_tensor`, True on the CPU and CUDA).
Without SN, "trainer-nostats-one-d-call" or "-two-d-calls" makes the other choice than the trainer's
(`Trainer._joint`) where D allows one call, and a "joint check" line compares the two.
vs eager = plain-loop time / variant time (> 1: the trainer is faster); steps/s = 1 / median. The
variants of a case are timed in alternation (this CPU is shared). On the CPU the plain loop runs with
the malloc settings that a Trainer applies to its process (ganfast.train.cpu_malloc), set before the
first case: these ratios are those of the code; `ganfast bench malloc` measures what the
settings add to a plain loop in a process of its own.

After each case's table row, a line gives where the step's time goes (`step_shares`, torch.profiler
over a few steps of trainer-nostats and of the plain loop): the models' forward and backward (with
the autograd engine's time running their backward nodes), the optimizer, and what is neither:
ganfast's ops, the other aten ops at top level (noise draws, the trainer's bookkeeping), and time
outside any op (Python: the trainer's and the loop's own code). #11 asks for "neither" under 10 % of
the step.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from contextlib import ExitStack
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import diffaugment
from . import AUTO_TOLERANCE, Row, interleaved_medians


def _mlp_models(hidden: int = 128):
    try:
        from ..models import MLPDiscriminator, MLPGenerator
        return MLPGenerator(2, 2, hidden), MLPDiscriminator(2, hidden)
    except ImportError:  # ganfast.models not there: the same shapes in plain Sequential
        g = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        d = nn.Sequential(nn.Linear(2, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                          nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))
        return g, d


def _dcgan_models(width: int, num_classes: int | None = None):
    from ..models import DCGANDiscriminator, DCGANGenerator
    return (DCGANGenerator(128, 32, 3, width, num_classes=num_classes),
            DCGANDiscriminator(32, 3, width, num_classes=num_classes))


@dataclasses.dataclass(frozen=True)
class StepCase:
    """One model pair and batch of the suite. A conditional case (num_classes) trains G(z, y) and D(x, y)
    on batches (x, y); augment is a DiffAugment policy that both loops apply to every real and fake
    batch before D (the trainer with ganfast's augmentation op, the plain loop with the reference)."""
    name: str
    models: Callable[[], tuple[nn.Module, nn.Module]]
    latent: tuple[int, ...]
    shape: tuple[int, ...]  # the real batch's
    num_classes: int | None = None
    augment: str | None = None

    def batch(self, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(real images in [-1, 1], their labels or None), from the global generator."""
        real = (torch.rand(self.shape) * 2 - 1).to(device)
        labels = torch.randint(self.num_classes, self.shape[:1]).to(device) if self.num_classes else None
        return real, labels


def trainer_batch(real: torch.Tensor, labels: torch.Tensor | None):
    """What Trainer.step takes for a StepCase's batch: real, or (real, labels) when conditional."""
    return real if labels is None else (real, labels)


def _torch_sn(model: nn.Module) -> nn.Module:
    for m in list(model.modules()):
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            torch.nn.utils.parametrizations.spectral_norm(m)
    return model


def _optims(G, D):
    return (torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999)),
            torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999)))


def plain_step(G, D, g_opt, d_opt, real, latent_shape, r1_gamma=None, labels=None, num_classes=None,
               augment=None):
    """The plain loop written the way a careful user writes it: one D(real) forward shared by the loss
    and R1, D on fake.detach(), G on the same fake, and D's parameters frozen during the G step (no
    weight gradients nobody uses). With labels (a conditional case) the fake labels are drawn uniformly
    from num_classes; with augment (a DiffAugment policy) every batch D sees is augmented first, by
    the reference DiffAugment (plain PyTorch), and R1 differentiates at the augmented reals (D's input)."""
    def aug(x):
        return x if augment is None else diffaugment(x, augment, backend="reference")

    def disc(x, y):
        return D(x) if y is None else D(x, y)

    z = torch.randn((real.shape[0],) + latent_shape, device=real.device)
    fake_labels = None if labels is None else torch.randint(num_classes, labels.shape, device=labels.device)
    fake = G(z) if labels is None else G(z, fake_labels)
    d_opt.zero_grad(set_to_none=True)
    x = aug(real).detach().requires_grad_(r1_gamma is not None)
    real_logits = disc(x, labels)
    loss = F.softplus(-real_logits).mean() + F.softplus(disc(aug(fake.detach()), fake_labels)).mean()
    if r1_gamma is not None:
        (g,) = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
        loss = loss + r1_gamma / 2 * g.pow(2).flatten(1).sum(1).mean()
    loss.backward()
    d_opt.step()
    D.requires_grad_(False)
    g_opt.zero_grad(set_to_none=True)
    F.softplus(-disc(aug(fake), fake_labels)).mean().backward()
    g_opt.step()
    D.requires_grad_(True)


def _is_ganfast(name: str) -> bool:
    """A profiler event of a ganfast op: the op itself or its autograd node (C++ or Python)."""
    return "ganfast" in name


def _backward_part(name: str) -> str:
    """The part of a profiler event directly inside a backward call."""
    if _is_ganfast(name):
        return "ganfast ops"
    return "models" if name.startswith("autograd::engine::evaluate_function") else "other ops"


def step_shares(step, models, steps: int = 10) -> dict[str, float]:
    """Fractions of the wall time of `steps` calls of step() (after 3 unprofiled ones): "models"
    (ops inside a forward of `models`, less ganfast ops nested there such as spectral norm, and every
    backward node that is not ganfast's), "optimizer" (torch.optim's step and zero_grad), "ganfast
    ops", "other ops" (other top-level aten ops) and "outside ops" (the rest of the wall time). They
    sum to 1. The forward of each model is marked by hooks that open a profiler range; each backward
    (torch.autograd.backward and .grad, patched while profiling) by a range too, whose time between
    nodes (the autograd engine's own work and its call from Python) goes to "models" and "ganfast
    ops" in proportion to their number of nodes there: the engine's cost is per node, and running the
    models' backward is the models' work."""
    from torch.profiler import ProfilerActivity, profile, record_function

    for _ in range(3):
        step()
    ranges: list[ExitStack] = []

    def enter(name):
        def hook(module, args):
            stack = ExitStack()
            stack.enter_context(record_function(name))
            ranges.append(stack)
        return hook

    def marked(fn):
        def backward(*args, **kwargs):
            with record_function("bench:backward"):
                return fn(*args, **kwargs)
        return backward

    handles = []
    for i, m in enumerate(models):
        handles.append(m.register_forward_pre_hook(enter(f"bench:model{i}")))
        handles.append(m.register_forward_hook(lambda *_: ranges.pop().close()))
    engine_calls = torch.autograd.backward, torch.autograd.grad  # Tensor.backward calls the first
    torch.autograd.backward, torch.autograd.grad = map(marked, engine_calls)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            wall = (time.perf_counter() - t0) * 1e6
    finally:
        torch.autograd.backward, torch.autograd.grad = engine_calls
        for h in handles:
            h.remove()
    parts = dict.fromkeys(("models", "optimizer", "ganfast ops", "other ops"), 0.0)

    def nested_ganfast(e) -> float:  # time of the outermost ganfast ops below e
        return sum(c.cpu_time_total if _is_ganfast(c.name) else nested_ganfast(c) for c in e.cpu_children)

    for e in prof.events():
        if e.cpu_parent is not None:
            continue
        t = e.cpu_time_total
        if _is_ganfast(e.name):
            parts["ganfast ops"] += t
        elif e.name.startswith("bench:model"):
            inner = nested_ganfast(e)
            parts["ganfast ops"] += inner
            parts["models"] += t - inner
        elif e.name == "bench:backward":
            nodes = dict.fromkeys(("models", "ganfast ops"), 0)
            for c in e.cpu_children:
                part = _backward_part(c.name)
                parts[part] += c.cpu_time_total
                if part in nodes:
                    nodes[part] += 1
            engine = t - sum(c.cpu_time_total for c in e.cpu_children)
            for part, n in nodes.items():
                parts[part] += engine * n / max(sum(nodes.values()), 1)
        elif e.name.startswith("autograd::engine::evaluate_function"):
            parts["models"] += t
        elif e.name.startswith("Optimizer."):
            parts["optimizer"] += t
        else:
            parts["other ops"] += t
    inside = sum(parts.values())
    parts["outside ops"] = max(wall - inside, 0.0)
    total = max(wall, inside)
    return {k: v / total for k, v in parts.items()}


def format_shares(case: str, variant: str, shares: dict[str, float]) -> str:
    neither = shares["ganfast ops"] + shares["other ops"] + shares["outside ops"]
    return (f"step share {case} {variant}: neither models nor optimizer {neither:.0%} ("
            + ", ".join(f"{k} {v:.1%}" for k, v in shares.items() if k not in ("models", "optimizer"))
            + f"); models {shares['models']:.0%}, optimizer {shares['optimizer']:.0%}")


def _other_call_count(trainer, batch, make_trainer):
    """(variant name, trainer) making the other choice than `trainer` of one D call on cat(real,
    fake) or two (Trainer._joint), or None when D does not allow one call. make_trainer() builds a
    trainer configured as `trainer`; batch is a step's (real, or (real, labels)). Runs a first step of
    `trainer` (which probes D)."""
    trainer.step(batch, return_stats=False)
    if not trainer.joint_d_forward:
        return None
    real = batch[0] if isinstance(batch, tuple) else batch
    other = make_trainer()
    if trainer._joint(real, False):
        other.joint_d_forward = False
        return "trainer-nostats-two-d-calls", other
    other.joint_d_max_elements = real.numel()  # the trainer's size limit kept it at two calls
    return "trainer-nostats-one-d-call", other


def joint_check(case: str, rows: list[Row], other: str, tolerance: float = AUTO_TOLERANCE) -> str:
    """A line saying whether the trainer's choice of D calls in the D step (the "trainer-nostats"
    row) beat the other choice (row `other`) in `case`: the check of the trainer's size limit
    (`Trainer.joint_d_max_elements`, by default JOINT_D_MAX_ELEMENTS: no limit)."""
    times = {r.variant: r.seconds for r in rows if r.case == case}
    chosen = "two D calls" if other.endswith("one-d-call") else "one D call"
    ratio = times[other] / times["trainer-nostats"]
    line = f"joint check {case}: the trainer makes {chosen} in the D step; {other} took {ratio:.2f}x its time"
    if ratio * tolerance < 1:
        line += (" <- the other choice was faster: if a quiet rerun confirms it, change the size limit of "
                 "the joint call (ganfast.train.trainer.JOINT_D_MAX_ELEMENTS)")
    return line


def cases(quick: bool):
    """The suite's StepCases: the MLP, the DCGAN, and the DCGAN class-conditional (10 classes: G with
    conditional batch norm, D with a projection head) with DiffAugment's full policy."""
    yield StepCase("MLP 2-D B=256", _mlp_models, (2,), (256, 2))
    try:
        from .. import models  # noqa: F401
    except ImportError:
        return
    width, b = (32, 32) if quick else (64, 64)
    name = f"DCGAN 32x32 w={width} B={b}"
    yield StepCase(name, lambda: _dcgan_models(width), (128, 1, 1), (b, 3, 32, 32))
    yield StepCase(name + " cond+aug", lambda: _dcgan_models(width, 10), (128, 1, 1), (b, 3, 32, 32),
                   num_classes=10, augment="color,translation,cutout")


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> list[Row]:
    from ..train import Trainer
    from ..train.cpu_malloc import keep_freed_memory

    if torch.device(device).type == "cpu":
        keep_freed_memory()  # what the first Trainer would do: the same settings for every variant
    try:
        from .. import nn as _gnn, penalties as _pen  # noqa: F401
        regs = [None, "sn+r1"]
    except ImportError:
        regs = [None]
    rows = []
    for case_spec in cases(quick):
        torch.manual_seed(0)
        G0, D0 = case_spec.models()
        real, labels = case_spec.batch(device)
        batch = trainer_batch(real, labels)
        latent = case_spec.latent
        for reg in regs:
            case = case_spec.name + (" sn+r1" if reg else "")
            fns = {}
            # plain PyTorch
            G, D = copy.deepcopy(G0).to(device), copy.deepcopy(D0).to(device)
            if reg:
                _torch_sn(D)
            g_opt, d_opt = _optims(G, D)
            gamma = 10.0 if reg else None
            fns["eager"] = (lambda G=G, D=D, g_opt=g_opt, d_opt=d_opt:
                            plain_step(G, D, g_opt, d_opt, real, latent, gamma, labels, case_spec.num_classes,
                                       case_spec.augment))
            models = {"eager": (G, D)}  # whose forwards step_shares counts as the models' work
            # ganfast.Trainer, with and without reading the stats; with SN also one SN op per layer
            # instead of the multi-tensor call (the trainer's choice on the CPU and CUDA)
            variants = [("trainer", True, None), ("trainer-nostats", False, None)]
            if reg:
                variants.append(("trainer-nostats-sn-per-layer", False, False))
            def make_trainer(reg=reg):
                G, D = copy.deepcopy(G0).to(device), copy.deepcopy(D0).to(device)
                return Trainer(G, D, *_optims(G, D), loss="ns", penalty="r1" if reg else None,
                               spectral_norm=bool(reg), seed=0, num_classes=case_spec.num_classes,
                               augment=case_spec.augment)

            trainers = {}
            for variant, stats, sn_multi in variants:
                t = trainers[variant] = make_trainer()
                if sn_multi is not None:
                    t.sn_multi_tensor = sn_multi
                fns[variant] = lambda t=t, stats=stats: t.step(batch, return_stats=stats)
                models[variant] = (t.G, t.D)
            # the other choice of the D step's call count (Trainer._joint), where D allows one call
            other = _other_call_count(trainers["trainer-nostats"], batch, make_trainer)
            if other is not None:
                fns[other[0]] = lambda t=other[1]: t.step(batch, return_stats=False)
            rounds, round_time = (5, 0.1) if quick else (11, 0.2)
            for variant, sec in interleaved_medians(fns, device, rounds=rounds, round_time=round_time).items():
                rows.append(Row("step", case, variant, sec))
            if other is not None:
                print(joint_check(case, rows, other[0]), flush=True)
            for variant in ("eager", "trainer-nostats"):
                shares = step_shares(fns[variant], models[variant], steps=3 if quick else 10)
                print(format_shares(case, variant, shares), flush=True)
    return rows
