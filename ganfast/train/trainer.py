"""`ganfast.Trainer`: a GAN training step built from the user's own G, D and optimizers.

One `step(real)` = `d_steps` discriminator updates + one generator update:

    for each D step:   z ~ N(0, I) from the trainer's generator;  fake = G(z)
                       L_D = d_loss(D(real), D(fake.detach()))  [+ k * penalty every k-th D step]
    G step:            L_G = g_loss(D(fake))  (the last D step's fake, with its graph: one G forward
                       per step, as in PyTorch's DCGAN example)

Speed structure: spectral norm once per D call group (`ganfast.nn.sn_step`), D(real) shared by the
loss and R1 (`real.requires_grad_()` + `penalties.r1_from_logits`), fused losses, D's parameters
frozen during the G step (no wasted weight gradients), and no host-device synchronization unless the
stats are read (`return_stats=True`: one `.tolist()` of one stacked tensor).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import losses
from . import checkpoint as ckpt
from . import distributed as _dist
from .logging import TrainLogger, save_curves, save_samples
from .monitor import DivergenceError, StabilityMonitor

log = logging.getLogger("ganfast.train")

PENALTIES = (None, "r1", "r2", "wgan-gp", "wgan-lp", "dragan")
AMP_MODES = (None, "bf16", "fp16")
STAT_NAMES = ("d_loss", "g_loss", "penalty", "real_mean", "fake_mean", "real_acc", "fake_acc",
              "d_grad_norm", "g_grad_norm")
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def infer_latent_shape(generator: nn.Module, latent_dim=None) -> tuple[int, ...]:
    """Shape of one z: (in_features,) for a first Linear, (in_channels, 1, ..., 1) for a first
    ConvTranspose; `latent_dim` (int or shape) overrides, shaped like the first layer wants."""
    first = next((m for m in generator.modules() if not list(m.children()) and
                  any(True for _ in m.parameters(recurse=False))), None)
    if latent_dim is not None:
        if isinstance(latent_dim, (tuple, list, torch.Size)):
            shape = tuple(int(d) for d in latent_dim)
        else:
            shape = (int(latent_dim),)
        if any(d < 1 for d in shape):
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        if len(shape) == 1 and isinstance(first, _CONV_T) and first.in_channels == shape[0]:
            shape = shape + (1,) * (first.weight.dim() - 2)
        return shape
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    if isinstance(first, _CONV_T):
        return (first.in_channels,) + (1,) * (first.weight.dim() - 2)
    what = "no layer with parameters" if first is None else f"its first layer is {type(first).__name__}"
    hint = " (a convolution's input size is not known)" if isinstance(first, _CONV) else ""
    raise ValueError(f"cannot infer the latent size of the generator: {what}{hint}; pass latent_dim= "
                     f"(an int, or the shape of one z such as (128, 1, 1))")


def _params_in(opt: torch.optim.Optimizer, module: nn.Module, oname: str, mname: str) -> None:
    ids = {id(p) for p in module.parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            if id(p) not in ids:
                raise ValueError(f"{oname} optimizes a parameter (shape {tuple(p.shape)}) that is not in the "
                                 f"{mname}: pass the optimizers in the order (g_optimizer, d_optimizer), built on "
                                 f"the models' parameters")


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                      "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
            "python": [py_state[0], list(py_state[1]), py_state[2]]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


class _TensorBatches:
    """Batches of a tensor of samples, reshuffled every epoch with the trainer's generator.

    With W ranks, every rank draws the same permutation and rank r takes samples [r·B, (r+1)·B) of
    each global batch of W·B: the ranks' batches concatenated are the single-process batch of W·B."""

    def __init__(self, data: torch.Tensor, batch_size: int, gen: torch.Generator, state: dict | None,
                 rank: int = 0, world: int = 1):
        if data.shape[0] < batch_size * world:
            raise ValueError(f"the data has {data.shape[0]} samples, fewer than batch_size={batch_size}"
                             + (f" x {world} ranks" if world > 1 else ""))
        self.data, self.batch_size, self.gen = data, batch_size, gen
        self.rank, self.world = rank, world
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
        return self.data[idx]

    def state(self) -> dict | None:
        return None if self.perm is None else {"kind": "tensor", "perm": self.perm.cpu(), "pos": self.pos}


class _IterableBatches:
    """Batches of a DataLoader / iterable, restarted at each epoch; (x, label, ...) gives x."""

    def __init__(self, data):
        self.data, self.epoch = data, 0
        self._set_epoch()
        self.it = iter(data)

    def _set_epoch(self) -> None:
        sampler = getattr(self.data, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new shuffle each epoch
            sampler.set_epoch(self.epoch)

    def __next__(self) -> torch.Tensor:
        for attempt in range(2):
            try:
                batch = next(self.it)
                break
            except StopIteration:
                if attempt:
                    raise ValueError("the data iterable yields no batches") from None
                self.epoch += 1
                self._set_epoch()
                self.it = iter(self.data)
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"a batch must be a tensor or a (tensor, ...) tuple, got {type(batch).__name__}")
        return batch

    def state(self) -> None:
        return None


class Trainer:
    """GAN training with the user's own G, D and optimizers (see the module docstring for the step).

    loss: a kind of ganfast.losses. penalty: None | "r1" | "r2" | "wgan-gp" | "wgan-lp" (one-sided) |
    "dragan", weighted by penalty_weight (λ or γ), applied every penalty_interval-th D step times the
    interval (lazy; d_optimizer gets StyleGAN2's Adam correction here). d_steps: D updates per G update.
    spectral_norm: ganfast.nn.apply_spectral_norm(D) (build d_optimizer before or after: the Parameter
    objects stay the same). ema: decay of an EMA copy of G (`ema_g`, used by `sample`). amp: None |
    "bf16" | "fp16" (autocast; fp16 adds GradScalers). grad_clip: max gradient norm, a float or (g, d).
    weight_clip: clamp D's parameters to [-c, c] after each D update. latent_dim: int or the shape of
    one z; inferred from G's first Linear / ConvTranspose. device: moves G and D there (default: theirs).
    seed: of the trainer's noise generator (z, penalty draws, data shuffling), saved in checkpoints.
    monitor: a StabilityMonitor (checks run on steps whose stats are read).
    distributed: None (default) runs data-parallel when launched on several processes (torchrun or
    ganfast.train.distributed.launch: WORLD_SIZE > 1, or a process group exists), True requires it,
    False trains this process alone. Then step(real) takes this rank's batch (the same size on every
    rank) and the update is that of one process on all ranks' batches concatenated (see
    ganfast/train/distributed.py). dist_timeout: seconds a collective waits for the other ranks.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, g_optimizer: torch.optim.Optimizer,
                 d_optimizer: torch.optim.Optimizer, loss: str = "ns", penalty: str | None = None,
                 penalty_weight: float = 10.0, penalty_interval: int = 1, d_steps: int = 1,
                 spectral_norm: bool = False, ema: float | None = None, amp: str | None = None,
                 grad_clip=None, weight_clip: float | None = None, latent_dim=None, device=None,
                 seed: int | None = None, monitor: StabilityMonitor | None = None,
                 distributed: bool | None = None, dist_timeout: float = _dist.DEFAULT_TIMEOUT):
        # --- configuration checks (all before anything is changed) -------------------------------
        if not isinstance(generator, nn.Module) or not isinstance(discriminator, nn.Module):
            raise TypeError("generator and discriminator must be torch.nn.Module instances")
        for name, opt in (("g_optimizer", g_optimizer), ("d_optimizer", d_optimizer)):
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"{name} must be a torch.optim.Optimizer, got {type(opt).__name__}")
        if loss not in losses.KINDS:
            raise ValueError(f"unknown loss {loss!r}; valid losses: {', '.join(losses.KINDS)}")
        if penalty not in PENALTIES:
            raise ValueError(f"unknown penalty {penalty!r}; valid penalties: None, "
                             + ", ".join(repr(p) for p in PENALTIES[1:]))
        if isinstance(d_steps, bool) or not isinstance(d_steps, int) or d_steps < 1:
            raise ValueError(f"d_steps must be an integer >= 1, got {d_steps!r}")
        if isinstance(penalty_interval, bool) or not isinstance(penalty_interval, int) or penalty_interval < 1:
            raise ValueError(f"penalty_interval must be an integer >= 1, got {penalty_interval!r}")
        if not (isinstance(penalty_weight, (int, float)) and math.isfinite(penalty_weight) and penalty_weight >= 0):
            raise ValueError(f"penalty_weight must be a finite number >= 0, got {penalty_weight!r}")
        if ema is not None and not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1) (e.g. 0.999), got {ema!r}")
        if amp not in AMP_MODES:
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
        if grad_clip is None:
            self.grad_clip = (None, None)
        elif isinstance(grad_clip, (tuple, list)):
            if len(grad_clip) != 2:
                raise ValueError(f"grad_clip must be a float or a (g, d) pair, got {grad_clip!r}")
            self.grad_clip = tuple(None if c is None else float(c) for c in grad_clip)
        else:
            self.grad_clip = (float(grad_clip), float(grad_clip))
        if any(c is not None and not c > 0 for c in self.grad_clip):
            raise ValueError(f"grad_clip values must be > 0, got {grad_clip!r}")
        if weight_clip is not None and not weight_clip > 0:
            raise ValueError(f"weight_clip must be > 0, got {weight_clip!r}")
        if distributed not in (None, True, False):
            raise ValueError(f"distributed must be None (auto), True or False, got {distributed!r}")
        if distributed is None:
            distributed = _dist.launched()
        elif distributed and not _dist.launched():
            raise ValueError("distributed=True but this process is alone: launch several with torchrun or "
                             "ganfast.train.distributed.launch (WORLD_SIZE > 1)")

        # --- devices --------------------------------------------------------------------------
        g_dev = {p.device for p in generator.parameters()}
        d_dev = {p.device for p in discriminator.parameters()}
        if not g_dev or not d_dev:
            raise ValueError("the generator and the discriminator must both have parameters")
        if device is not None:
            device = torch.device(device)
            if device.type == "cuda" and device.index is None:
                # one GPU per process under torchrun: cuda:LOCAL_RANK
                device = _dist.default_device() if distributed else torch.device("cuda", torch.cuda.current_device())
            generator.to(device)  # keeps the Parameter objects, so the optimizers stay valid
            discriminator.to(device)
        else:
            if len(g_dev | d_dev) > 1:
                raise ValueError(f"device mismatch: the generator is on {sorted(map(str, g_dev))} and the "
                                 f"discriminator on {sorted(map(str, d_dev))}; move both to one device or pass device=")
            device = next(iter(g_dev))
        self.device = device

        self.G, self.D = generator, discriminator
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.loss, self.penalty = loss, penalty
        self.penalty_weight, self.penalty_interval = float(penalty_weight), penalty_interval
        self.d_steps, self.ema_beta, self.amp, self.weight_clip = d_steps, ema, amp, weight_clip
        self.dtype = next(p.dtype for p in generator.parameters() if p.is_floating_point())
        self.latent_shape = infer_latent_shape(generator, latent_dim)
        self.monitor = monitor if monitor is not None else StabilityMonitor()

        self._pen = None
        if penalty is not None:
            try:
                from .. import penalties as _pen
            except ImportError as e:
                raise ImportError(f"penalty={penalty!r} needs ganfast.penalties, which is not available: {e}") from e
            self._pen = _pen

        # --- spectral norm: applied to D here; sn_step around each group of D calls ---------------
        self._nn = None
        if spectral_norm:
            try:
                from .. import nn as _gnn
            except ImportError as e:
                raise ImportError(f"spectral_norm=True needs ganfast.nn, which is not available: {e}") from e
            _gnn.apply_spectral_norm(discriminator)
            discriminator.to(device)
            self._nn = _gnn
        else:
            try:
                from .. import nn as _gnn
                if len(_gnn.spectral_norms(discriminator)):
                    self._nn = _gnn  # the user's D already carries ganfast spectral norm
            except Exception:  # noqa: BLE001 - ganfast.nn missing or D without normalized layers
                self._nn = None
        _params_in(g_optimizer, generator, "g_optimizer", "generator")
        _params_in(d_optimizer, discriminator, "d_optimizer", "discriminator")

        # --- several processes: every rank starts from rank 0's weights, buffers (SN u, v) and seed
        self._comm = None
        self._sync_buffers: list[torch.Tensor] = []
        if distributed:
            self._comm = _dist.Communicator(device, dist_timeout)
            self._comm.broadcast_([t.data for m in (generator, discriminator)
                                   for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()])
            sn_bufs = set()
            if self._nn is not None:
                sn_bufs = {id(b) for m in discriminator.modules() if isinstance(m, self._nn.SpectralNorm)
                           for b in m.buffers()}
            # u, v follow from identical weights; other floating buffers (BatchNorm's running
            # statistics) see per-rank batches and are averaged over ranks after each step
            self._sync_buffers = [b for m in (generator, discriminator) for b in m.buffers()
                                  if b.is_floating_point() and id(b) not in sn_bufs]

        # Lazy regularization (StyleGAN2): the penalty every k-th D step, times k; Adam's lr and betas
        # corrected for it: lr *= c, beta ** c with c = k / (k + 1).
        if penalty is not None and penalty_interval > 1:
            self._pen.LazyRegularizer(penalty_interval).adjust_optimizer(d_optimizer)

        self.ema_g = None
        if ema is not None:
            self.ema_g = copy.deepcopy(generator).requires_grad_(False).eval()
            self._ema_pairs = (list(self.ema_g.parameters()), list(generator.parameters()),
                               list(self.ema_g.buffers()), list(generator.buffers()))

        self._amp_dtype = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        fp16 = amp == "fp16"
        self.d_scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        self.g_scaler = torch.amp.GradScaler(device.type, enabled=fp16)

        if seed is None:
            seed = random.SystemRandom().randrange(2 ** 62)
        if self._comm is not None:
            seed = self._comm.broadcast_int(int(seed))  # one noise stream, sliced per rank
        self.seed = int(seed)
        self._gen = torch.Generator(device=device).manual_seed(self.seed)
        self._sample_gen = torch.Generator(device=device).manual_seed(self.seed + 1)

        self._d_params = [p for p in discriminator.parameters() if p.requires_grad]
        self._g_params = [p for p in generator.parameters() if p.requires_grad]
        self._stat_dtype = torch.float32 if device.type == "mps" else torch.float64
        self._zero = torch.zeros((), device=device, dtype=self._stat_dtype)
        self._last_pen = self._zero
        self.step_count = 0
        self.d_step_count = 0  # lazy regularization phase
        self._data_shape = None
        self._snapshot = None
        self._snapshot_step = -1
        self._ckpt_dir = None
        self._pending_data_state = None
        self.rolled_back = False  # set by a step that rolled back
        self._batch_sizes = None  # distributed: the per-rank batch sizes checked on the first step

    @property
    def rank(self) -> int:
        return self._comm.rank if self._comm is not None else 0

    @property
    def world_size(self) -> int:
        return self._comm.world if self._comm is not None else 1

    # --- helpers ----------------------------------------------------------------------------------
    def _autocast(self):
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp_dtype)

    def _sn(self):
        return self._nn.sn_step(self.D) if self._nn is not None else contextlib.nullcontext()

    def _noise(self, n: int, gen: torch.Generator | None = None, shard: bool = False) -> torch.Tensor:
        if shard:  # training noise: this rank's slice of the global batch's draw
            return self._draw(torch.randn, (n,) + self.latent_shape, self.dtype)
        return torch.randn((n,) + self.latent_shape, generator=gen or self._gen, device=self.device, dtype=self.dtype)

    def _draw(self, fn, shape, dtype) -> torch.Tensor:
        """fn(shape) from the trainer's generator; with W ranks, rank r's rows [r·n, (r+1)·n) of one
        draw of W·n rows (the same generator state on every rank): the single-process draw for W·n."""
        if self._comm is None:
            return fn(shape, generator=self._gen, device=self.device, dtype=dtype)
        n, w = shape[0], self._comm.world
        full = fn((n * w,) + tuple(shape[1:]), generator=self._gen, device=self.device, dtype=dtype)
        return full[self._comm.rank * n:(self._comm.rank + 1) * n]

    def _gather_logits(self, real_logits, fake_logits):
        """Relativistic losses average the other side's logits over the batch: with W ranks, compute
        them on every rank's logits (gathered; the gather's backward sums the gradient over ranks)."""
        if self._comm is None or self.loss not in losses.RELATIVISTIC:
            return real_logits, fake_logits
        if real_logits.shape != fake_logits.shape:
            raise ValueError(f"relativistic losses pair real and fake logits: shapes {tuple(real_logits.shape)} "
                             f"and {tuple(fake_logits.shape)}")
        both = self._comm.gather_cat(torch.stack([real_logits, fake_logits]), dim=1)
        return both[0], both[1]

    def _prepare(self, real) -> torch.Tensor:
        if not isinstance(real, torch.Tensor):
            raise TypeError(f"a real batch must be a tensor, got {type(real).__name__}")
        if real.device != self.device:
            raise ValueError(f"device mismatch: the real batch is on {real.device} but the models are on "
                             f"{self.device}; move it there (fit does this for you)")
        if not real.is_floating_point():
            raise TypeError(f"the real batch must be floating point (scaled like the generator's output), "
                            f"got {real.dtype}")
        if real.dim() < 2 or real.shape[0] == 0:
            raise ValueError(f"a real batch must have a batch dimension and at least one feature dimension, "
                             f"got shape {tuple(real.shape)}")
        if real.dtype != self.dtype:
            real = real.to(self.dtype)
        if self._data_shape is None:
            self._check_models(real)
        elif real.shape[1:] != self._data_shape:
            raise ValueError(f"a real batch of per-sample shape {tuple(real.shape[1:])} differs from the first "
                             f"batch's {tuple(self._data_shape)}")
        return real

    @torch.no_grad()
    def _check_models(self, real: torch.Tensor) -> None:
        """Run G and D once on a few samples, before any update, and say clearly what does not fit.
        Buffers (BatchNorm statistics, spectral-norm u/v) and the global RNG are restored after."""
        n = min(real.shape[0], 4)
        mods = [self.G, self.D]
        saved = [[b.clone() for b in m.buffers()] for m in mods]
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), self._autocast():
                z = self._noise(n, torch.Generator(device=self.device).manual_seed(0))
                try:
                    fake = self.G(z)
                except Exception as e:
                    raise ValueError(f"the generator failed on noise of shape {tuple(z.shape)} (latent shape "
                                     f"{self.latent_shape}; pass latent_dim= if that is wrong): {e}") from e
                if not isinstance(fake, torch.Tensor):
                    raise TypeError(f"the generator must return a tensor, got {type(fake).__name__}")
                if fake.shape[1:] != real.shape[1:]:
                    raise ValueError(f"the generator's output shape {tuple(fake.shape[1:])} (per sample) does "
                                     f"not match the data's {tuple(real.shape[1:])}")
                try:
                    out = self.D(real[:n])
                except Exception as e:
                    raise ValueError(f"the discriminator failed on a real batch of shape {tuple(real[:n].shape)} "
                                     f"(per sample {tuple(real.shape[1:])}): {e}") from e
                if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != n:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise ValueError(f"the discriminator must return one logit (or patch map) per sample: "
                                     f"for a batch of {n} it returned {got}")
        finally:
            for m, bufs in zip(mods, saved):
                for b, s in zip(m.buffers(), bufs):
                    b.copy_(s)
        self._data_shape = real.shape[1:]

    def _set_d_grad(self, flag: bool) -> None:
        for p in self._d_params:
            p.requires_grad_(flag)

    def _grad_norm(self, params, clip, want: bool):
        """Total gradient norm (pre-clipping) as a device tensor; clips when `clip` is set."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return self._zero
        if clip is not None:
            return torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        if not want:
            return None
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    def _penalty_value(self, real, fake, real_logits, fake_logits):
        p, w = self._pen, self.penalty_weight
        # under fp16 the penalties differentiate the scaled output and unscale before the norm
        sc = self.d_scaler if self.d_scaler.is_enabled() else None
        if self.penalty == "r1":
            return p.r1_from_logits(real_logits, real, w, scaler=sc)
        if self.penalty == "r2":
            return p.r2_from_logits(fake_logits, fake, w, scaler=sc)
        b = real.shape[0]
        if fake.shape[0] != b:
            raise ValueError(f"{self.penalty} pairs real and fake samples: batch sizes {b} and {fake.shape[0]}")
        # the penalties' random draws come from the trainer's generator (reproducible, checkpointed)
        alpha = self._draw(torch.rand, (b,), real.dtype)
        if self.penalty in ("wgan-gp", "wgan-lp"):
            return p.wgan_gp(self.D, real, fake, weight=w, one_sided=self.penalty == "wgan-lp", alpha=alpha, scaler=sc)
        noise = self._draw(torch.rand, tuple(real.shape), real.dtype)
        if self._comm is not None:
            # DRAGAN's std is over the whole (global) batch: all-reduced here; then x̂ = real + (1 − α)·c·std·u
            # is WGAN-GP's interpolation between real and real + c·std·u (c = 0.5, dragan's default)
            std = self._comm.global_std(real.detach())
            return p.wgan_gp(self.D, real, real.detach() + 0.5 * std * noise, weight=w, alpha=alpha, scaler=sc)
        return p.dragan(self.D, real, weight=w, alpha=alpha, noise=noise, scaler=sc)

    def _d_update(self, real, fake, want: bool):
        self.d_optimizer.zero_grad(set_to_none=True)
        apply_pen = self.penalty is not None and self.d_step_count % self.penalty_interval == 0
        with self._sn():
            with self._autocast():
                if apply_pen and self.penalty == "r1":
                    real = real.detach().requires_grad_(True)  # D(real) serves the loss and R1
                if apply_pen and self.penalty == "r2":
                    fake = fake.detach().requires_grad_(True)
                real_logits = self.D(real)
                fake_logits = self.D(fake)
                loss, st = losses.d_loss(*self._gather_logits(real_logits, fake_logits), self.loss, return_stats=True)
                total = loss
                if apply_pen:
                    pen = self._penalty_value(real, fake, real_logits, fake_logits)
                    self._last_pen = pen.detach()
                    total = loss + pen * self.penalty_interval if self.penalty_interval > 1 else loss + pen
            self.d_scaler.scale(total).backward()
        if self._comm is not None:  # the one combined backward's gradients, averaged over ranks
            self._comm.average_grads_(self._d_params, "D")
        self.d_step_count += 1
        if self.amp == "fp16" and (want or self.grad_clip[1] is not None):
            self.d_scaler.unscale_(self.d_optimizer)
        gn = self._grad_norm(self._d_params, self.grad_clip[1], want)
        self.d_scaler.step(self.d_optimizer)
        self.d_scaler.update()
        if self.weight_clip is not None:  # original WGAN: clip D's weights to [-c, c]
            with torch.no_grad():
                torch._foreach_clamp_min_(self._d_params, -self.weight_clip)
                torch._foreach_clamp_max_(self._d_params, self.weight_clip)
        return loss, st, gn

    def _g_update(self, fake, real, want: bool):
        self.g_optimizer.zero_grad(set_to_none=True)
        self._set_d_grad(False)  # no weight gradients for D in the G step
        try:
            with self._sn():
                with self._autocast():
                    fake_logits = self.D(fake)
                    real_logits = None
                    if self.loss in losses.RELATIVISTIC:
                        with torch.no_grad():
                            real_logits = self.D(real)
                    if real_logits is not None and self._comm is not None:
                        real_logits, fake_logits = self._gather_logits(real_logits, fake_logits)
                    loss = losses.g_loss(fake_logits, self.loss, real_logits)
                self.g_scaler.scale(loss).backward()
        finally:
            self._set_d_grad(True)
        if self._comm is not None:
            self._comm.average_grads_(self._g_params, "G")
        if self.amp == "fp16" and (want or self.grad_clip[0] is not None):
            self.g_scaler.unscale_(self.g_optimizer)
        gn = self._grad_norm(self._g_params, self.grad_clip[0], want)
        self.g_scaler.step(self.g_optimizer)
        self.g_scaler.update()
        if self._sync_buffers:
            self._comm.average_(self._sync_buffers, "the BatchNorm buffers")
        if self.ema_g is not None:
            ep, gp, eb, gb = self._ema_pairs
            with torch.no_grad():
                torch._foreach_lerp_(ep, gp, 1.0 - self.ema_beta)  # ema += (1 - beta) * (g - ema)
                for e, g in zip(eb, gb):
                    e.copy_(g)
        return loss, gn

    # --- public API -----------------------------------------------------------------------------
    def step(self, real, return_stats: bool = True) -> dict | None:
        """d_steps D updates and one G update. `real`: a batch (reused by every D step) or a list of
        d_steps batches. Returns the stats as plain floats (one host sync), or None.

        Distributed: `real` is this rank's batch; every rank must call step with the same
        return_stats (the stats are averaged over ranks). An error on one rank aborts the group: the
        other ranks get a DistributedError naming it, this rank re-raises its own."""
        if self._comm is None:
            return self._step(real, return_stats)
        self._comm.step = self.step_count + 1
        try:
            return self._step(real, return_stats)
        except BaseException as e:
            self._comm.abort(e)
            raise

    def _step(self, real, return_stats: bool) -> dict | None:
        reals = list(real) if isinstance(real, (list, tuple)) else [real] * self.d_steps
        if len(reals) != self.d_steps:
            raise ValueError(f"step got {len(reals)} real batches; pass one batch or a list of d_steps={self.d_steps}")
        reals = [self._prepare(r) for r in reals]
        if self._comm is not None:
            sizes = [r.shape[0] for r in reals]
            if self._batch_sizes is None:
                self._comm.check_batch_sizes(sizes)  # once: the same batch sizes on every rank
                self._batch_sizes = sizes
            elif sizes != self._batch_sizes:  # checked locally; this rank's error aborts the others
                raise ValueError(f"distributed training needs the same batch size on every rank at every step: "
                                 f"rank {self.rank} got {sizes}, its first step had {self._batch_sizes} (use "
                                 f"drop_last=True)")
        if self._snapshot is None and self.monitor.snapshot_every:
            self._take_snapshot()
        self.rolled_back = False
        self.G.train()
        self.D.train()
        for i, r in enumerate(reals):
            z = self._noise(r.shape[0], shard=True)
            if i == len(reals) - 1:
                with self._autocast():
                    fake = self.G(z)  # kept with its graph for the G step
                fake_d = fake.detach()
            else:
                with torch.no_grad(), self._autocast():
                    fake_d = self.G(z)
            d_loss, st, d_gn = self._d_update(r, fake_d, return_stats)
        g_loss, g_gn = self._g_update(fake, reals[-1], return_stats)
        self.step_count += 1
        if not return_stats:
            return None
        vals = [d_loss, g_loss, self._last_pen, st["real_mean"], st["fake_mean"], st["real_acc"], st["fake_acc"],
                d_gn, g_gn]
        names = list(STAT_NAMES)
        if self._nn is not None:
            sig = [s if isinstance(s, torch.Tensor) else torch.tensor(float(s))
                   for s in self._nn.spectral_norms(self.D).values()]
            if sig:
                sig = torch.stack([s.detach().to(self.device, self._stat_dtype).reshape(()) for s in sig])
                vals += [sig.max(), sig.min()]
                names += ["sigma_max", "sigma_min"]
        packed = torch.stack([v.detach().to(self._stat_dtype).reshape(()) for v in vals])
        if self._comm is not None:  # the global batch's stats (means over equal per-rank batches)
            self._comm.average_([packed], "the step's stats")
        stats = dict(zip(names, packed.tolist()))  # the one host-device sync of the step
        self._after_read(stats)
        return stats

    def _after_read(self, stats: dict) -> None:
        bad = self.monitor.nonfinite(stats, check_grads=self.amp != "fp16")
        if bad:
            self.monitor.divergence(self.step_count, bad, stats)  # raises once rollbacks are used up
            self._rollback()
            return
        self.monitor.observe(self.step_count, stats)
        every = self.monitor.snapshot_every
        if every and self.step_count - self._snapshot_step >= every:
            self._take_snapshot()

    def _take_snapshot(self) -> None:
        self._snapshot = copy.deepcopy(self.state_dict(include_monitor=True))
        self._snapshot_step = self.step_count

    def _rollback(self) -> None:
        if self._snapshot is not None:
            state, where = copy.deepcopy(self._snapshot), f"the in-memory snapshot of step {self._snapshot_step}"
        elif self._ckpt_dir is not None and ckpt.list_checkpoints(self._ckpt_dir):
            state, path = ckpt.load_latest_valid(self._ckpt_dir, map_location="cpu")
            where = f"checkpoint {path}"
        else:
            raise DivergenceError(f"training diverged at step {self.step_count} and there is no snapshot or "
                                  f"checkpoint to roll back to: {self.monitor.events[-1].message}")
        scale_then = float(state["monitor"]["lr_scale"]) if state.get("monitor") else 1.0
        self._load_state(state, restore_monitor=False)
        ratio = self.monitor.lr_scale / scale_then
        for opt in (self.g_optimizer, self.d_optimizer):
            for group in opt.param_groups:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].mul_(ratio)
                else:
                    group["lr"] = group["lr"] * ratio
        self._snapshot_step = self.step_count
        self._snapshot = copy.deepcopy(self.state_dict(include_monitor=True))
        self.rolled_back = True
        log.warning("ganfast monitor: rolled back to %s (step %d)", where, self.step_count)

    @torch.no_grad()
    def sample(self, n: int, z: torch.Tensor | None = None) -> torch.Tensor:
        """n samples from G (the EMA copy when ema is set), in eval mode, with noise from a generator
        separate from the training noise (so sampling never changes training)."""
        model = self.ema_g if self.ema_g is not None else self.G
        if z is None:
            z = self._noise(n, self._sample_gen)
        was_training = model.training
        model.eval()
        try:
            with self._autocast():
                return model(z)
        finally:
            model.train(was_training)

    # --- checkpoints ----------------------------------------------------------------------------
    def state_dict(self, data_state: dict | None = None, include_monitor: bool = True) -> dict:
        return {
            "format": 1, "step": self.step_count, "d_step_count": self.d_step_count, "seed": self.seed,
            "config": {"loss": self.loss, "penalty": self.penalty, "penalty_interval": self.penalty_interval,
                       "d_steps": self.d_steps, "latent_shape": list(self.latent_shape)},
            "generator": self.G.state_dict(), "discriminator": self.D.state_dict(),
            "ema": self.ema_g.state_dict() if self.ema_g is not None else None,
            "g_optimizer": self.g_optimizer.state_dict(), "d_optimizer": self.d_optimizer.state_dict(),
            "g_scaler": self.g_scaler.state_dict(), "d_scaler": self.d_scaler.state_dict(),
            "rng": _rng_state(), "noise_generator": self._gen.get_state(),
            "sample_generator": self._sample_gen.get_state(), "last_penalty": self._last_pen.cpu(),
            "monitor": self.monitor.state_dict() if include_monitor else None, "data": data_state,
        }

    def _load_state(self, state: dict, restore_monitor: bool = True) -> None:
        cfg = state.get("config", {})
        for k in ("loss", "penalty", "penalty_interval", "d_steps"):
            if k in cfg and cfg[k] != getattr(self, k):
                log.warning("checkpoint was written with %s=%r; this trainer has %r", k, cfg[k], getattr(self, k))
        self.G.load_state_dict(state["generator"])
        self.D.load_state_dict(state["discriminator"])
        if self.ema_g is not None:
            if state.get("ema") is not None:
                self.ema_g.load_state_dict(state["ema"])
            else:
                self.ema_g.load_state_dict(self.G.state_dict())
        self.g_optimizer.load_state_dict(state["g_optimizer"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        if state.get("g_scaler"):
            self.g_scaler.load_state_dict(state["g_scaler"])
        if state.get("d_scaler"):
            self.d_scaler.load_state_dict(state["d_scaler"])
        _set_rng_state(state["rng"])
        self._gen.set_state(state["noise_generator"])
        self._sample_gen.set_state(state["sample_generator"])
        self._last_pen = state["last_penalty"].to(self.device, self._stat_dtype)
        self.step_count = int(state["step"])
        self.d_step_count = int(state["d_step_count"])
        if restore_monitor and state.get("monitor") is not None:
            self.monitor.load_state_dict(state["monitor"])

    def save_checkpoint(self, path, data_state: dict | None = None) -> Path:
        """Write the whole training state to `path` atomically, with a SHA-256 of the payload."""
        return ckpt.save(self.state_dict(data_state), path)

    def load_checkpoint(self, path) -> dict:
        """Restore from a checkpoint file, or from the newest of a directory of them. A corrupt or
        truncated file is named in a warning and the previous checkpoint is used. Returns the state."""
        state, used = ckpt.load_latest_valid(path, map_location="cpu")
        self._load_state(state)
        self._pending_data_state = state.get("data")
        self._snapshot, self._snapshot_step = None, -1
        log.info("resumed from %s at step %d", used, self.step_count)
        return state

    # --- the loop ---------------------------------------------------------------------------------
    def fit(self, data, steps: int, batch_size: int = 64, *, log_every: int = 1, log_dir=None,
            checkpoint_dir=None, checkpoint_every: int | None = None, keep_checkpoints: int = 3,
            resume: bool = True, sample_every: int | None = None, n_samples: int = 64,
            progress: bool = True, callback=None) -> list[dict]:
        """Train until `steps` steps in total have run (a resumed trainer continues to the same total).

        data: a DataLoader / iterable of batches (x or (x, ...)), or a tensor of samples (batched with
        batch_size, reshuffled each epoch with the trainer's generator). log_dir gets metrics.csv,
        TensorBoard scalars and samples/; checkpoints go to checkpoint_dir (default log_dir/checkpoints)
        every checkpoint_every steps (default 1000), keeping the last keep_checkpoints. With resume,
        an existing checkpoint there is loaded first. Every sample_every steps, n_samples samples
        (fixed noise) go to log_dir/samples/ as a scatter over real data (2-D) or an image grid; at
        the end, log_dir/curves.png; the last step is always checkpointed and sampled. callback: called
        as callback(trainer, step, stats) after each completed step (stats None on steps not read); a
        dict it returns is added to that step's logged stats (e.g. evaluation metrics; on steps that are
        logged, return the same keys every time so the CSV keeps one header). Returns the stats of the
        logged steps.

        Distributed: batch_size is per rank (a tensor's global batches of W·batch_size are split by
        rank; a DataLoader should use a DistributedSampler, see distributed.loader); rank 0 alone writes
        logs, samples and checkpoints (the others wait at a barrier), and every rank resumes from the
        same checkpoint_dir (shared by all ranks), whatever the number of ranks that wrote it."""
        try:
            return self._fit(data, steps, batch_size, log_every=log_every, log_dir=log_dir,
                             checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                             keep_checkpoints=keep_checkpoints, resume=resume, sample_every=sample_every,
                             n_samples=n_samples, progress=progress, callback=callback)
        except BaseException as e:
            if self._comm is not None:  # end the other ranks with this error instead of a hang
                self._comm.abort(e)
            raise

    def _fit(self, data, steps, batch_size, *, log_every, log_dir, checkpoint_dir, checkpoint_every,
             keep_checkpoints, resume, sample_every, n_samples, progress, callback) -> list[dict]:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        log_dir = Path(log_dir) if log_dir is not None else None
        if checkpoint_dir is None and log_dir is not None:
            checkpoint_dir = log_dir / "checkpoints"
        if checkpoint_dir is not None and checkpoint_every is None:
            checkpoint_every = 1000
        if checkpoint_every is not None and checkpoint_dir is None:
            raise ValueError("checkpoint_every needs checkpoint_dir (or log_dir)")
        if sample_every is not None and log_dir is None:
            raise ValueError("sample_every needs log_dir (samples are saved under log_dir/samples)")
        self._ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        found = ckpt.list_checkpoints(self._ckpt_dir) if resume and self._ckpt_dir is not None else []
        if found and ckpt.checkpoint_step(found[-1]) > self.step_count:  # never go back in time
            self.load_checkpoint(self._ckpt_dir)
        # a continuing trainer keeps its CSV rows up to its step (drops those a resumed run redoes)
        resumed_at = self.step_count if self.step_count > 0 else None
        main = self._comm is None or self._comm.is_main
        if isinstance(data, torch.Tensor):
            source = _TensorBatches(data, batch_size, self._gen, self._pending_data_state, self.rank, self.world_size)
        else:
            if self._comm is not None and isinstance(data, torch.utils.data.DataLoader) and \
                    not isinstance(data.sampler, torch.utils.data.DistributedSampler):
                log.warning("distributed fit on a DataLoader without a DistributedSampler: the ranks may draw "
                            "the same samples (use ganfast.train.distributed.loader)")
            source = _IterableBatches(data)
        self._pending_data_state = None

        def next_batch():
            b = next(source)
            return b.to(self.device, non_blocking=True) if b.device != self.device else b

        logger = TrainLogger(log_dir / "metrics.csv" if log_dir and main else None,
                             log_dir / "tensorboard" if log_dir and main else None, progress=progress and main,
                             total=steps,
                             initial=self.step_count, resume_step=resumed_at)
        history: list[dict] = []
        fixed_z = self._noise(n_samples, torch.Generator(device=self.device).manual_seed(self.seed + 2))
        ref_real = None
        n_events = len(self.monitor.events)
        try:
            while self.step_count < steps:
                batches = [next_batch() for _ in range(self.d_steps)]
                if ref_real is None:
                    ref_real = batches[0]
                nxt = self.step_count + 1
                read = (nxt % log_every == 0 or nxt == steps
                        or (checkpoint_every is not None and nxt % checkpoint_every == 0))
                stats = self.step(batches if self.d_steps > 1 else batches[0], return_stats=read)
                for e in self.monitor.events[n_events:]:
                    logger.message(f"[ganfast monitor] {e.message}")
                n_events = len(self.monitor.events)
                if self.rolled_back:
                    if logger.bar is not None:
                        logger.bar.n = self.step_count
                        logger.bar.refresh()
                    continue
                logger.advance()
                if callback is not None:
                    extra = callback(self, self.step_count, stats)
                    if extra and stats is not None:
                        stats = {**stats, **extra}
                if stats is not None:
                    logger.log(self.step_count, stats)
                    history.append({"step": self.step_count, **stats})
                last = self.step_count == steps
                if checkpoint_every is not None and (self.step_count % checkpoint_every == 0 or last):
                    if main:  # every rank holds the same state: rank 0 writes it
                        ckpt.save_rotating(self.state_dict(source.state()), self._ckpt_dir, self.step_count,
                                           keep_checkpoints)
                    if self._comm is not None:  # nobody reads or rotates checkpoints while it writes
                        self._comm.barrier(f"barrier after rank 0 wrote checkpoint {self.step_count}")
                if main and sample_every is not None and (self.step_count % sample_every == 0 or last):
                    save_samples(self.sample(n_samples, z=fixed_z),
                                 log_dir / "samples" / f"step-{self.step_count:09d}.png", real=ref_real)
        finally:
            logger.close()
            if main and log_dir is not None and (log_dir / "metrics.csv").exists():
                save_curves(log_dir / "metrics.csv", log_dir / "curves.png")
        return history
