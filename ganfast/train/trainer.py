"""`ganfast.Trainer`: a GAN training step built from the user's own G, D and optimizers.

One `step(real)` = `d_steps` discriminator updates + one generator update:

    for each D step:   z ~ N(0, I) from the trainer's generator;  fake = G(z)
                       L_D = d_loss(D(real), D(fake.detach()))  [+ k * penalty every k-th D step]
    G step:            L_G = g_loss(D(fake))  (the last D step's fake, with its graph: one G forward
                       per step, as in PyTorch's DCGAN example)

Class-conditional (num_classes=K): batches are (x, y) pairs, G is called as G(z, y_fake) and D as
D(x, y); y_fake is drawn with z (labels.py). The penalties differentiate with respect to x only;
WGAN-GP's and DRAGAN's points x̂ keep the real sample's label (x̂ lies on the segment from a real
sample, or around it, so D is asked about it as that sample's class).

With pack=m (PacGAN, Lin et al. 2018) D judges m samples at once: every batch D sees, real or fake,
is packed (B, C, H, W) -> (B/m, m·C, H, W), reals with reals and fakes with fakes, before the loss
and the penalty (R1 is then the gradient norm of D at the packed reals).

With accumulate=k each batch is split into k micro-batches whose gradients (loss / k) add up before
the one update; noise and penalty draws are made for the whole batch at once.

Speed structure: spectral norm once per D call group (`ganfast.nn.sn_step`), D(real) shared by the
loss and R1 (`real.requires_grad_()` + `penalties.r1_from_logits`), one D call on cat(real, fake) for
a small D that judges each sample on its own (`Trainer._joint`), fused losses, D's parameters
frozen during the G step (no wasted weight gradients), the D step's backward asked for D's parameters
only (no gradient for the reals R1 differentiates), and no host-device synchronization unless the
stats are read (`return_stats=True`: one `.tolist()` of one stacked tensor).

Beside this file: batches.py, fit.py (the loop), monitor.py (checks, rollback), checkpoint.py (files,
RNG state), distributed.py (communicators), config.py (options), probe.py (model checks), augment.py
(DiffAugment / ADA of what D sees).
"""
from __future__ import annotations

import contextlib
import logging
import numbers
import random
import sys
import warnings

import torch
from torch import nn

from .. import backends, losses
from . import checkpoint as ckpt
from . import distributed as _dist
from .config import LossInputs, StepConfig, is_positive_int, micro_batches
from .monitor import StabilityMonitor, step_schedulers
from .augment import Augmenter
from .cpu_malloc import keep_freed_memory
from .ema import EMA
from .labels import ClassDistribution, is_pair, looks_labelled, missing_error, unconditional_error
from .penalty import PenaltyTerm
from .probe import (check_models, check_optimizer_holds, check_real_batch, checked_schedulers, describe_run,
                    infer_latent_shape, pack_samples, place_models, spectral_norm_module, uncompiled,
                    ProbabilityHeadCheck)

log = logging.getLogger("ganfast.train")


def cpu_runs_natively(amp: str) -> bool:
    """Whether PyTorch's oneDNN runs `amp` ("bf16" | "fp16") convolutions and matmuls natively on this
    CPU (AVX512-BF16 / AMX / AVX512-FP16); True when torch cannot say."""
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[amp]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):
        return True

STAT_NAMES = ("d_loss", "g_loss", "penalty", "real_mean", "fake_mean", "real_acc", "fake_acc",
              "d_grad_norm", "g_grad_norm")
__all__ = ["Trainer", "LossInputs", "infer_latent_shape"]
# The largest D input (numbers a side of a D step) that Trainer._joint calls jointly: no limit on any
# device. On an H200 (2026-12-04, `ganfast bench step --quick --device cuda`) one call took 0.92x the
# time of two on a DCGAN-32 D at B = 32, two calls 1.15x one on the MLP. On the 2-core CPU, with the
# trainer's malloc settings (cpu_malloc), trainer steps of a width-64 DCGAN without SN, five process
# pairs, medians in ms joint / separate (2026-12-04 22:42): 8x8 B=128 14.8 / 15.4, 16x16 B=64 40.6 / 48.8, 32x32 B=64
# 140.5 / 139.9; three pairs: 32x32 B=128 285 / 289, 64x64 B=32 400 / 409. Before those settings,
# 16x16 B=64 and 32x32 B=64 had run 1.06x and 1.01x slower jointly, so the CPU had a limit of 32768.
# A trainer's joint_d_max_elements sets one.
JOINT_D_MAX_ELEMENTS = sys.maxsize


@contextlib.contextmanager
def _without_donated_buffers():
    """torch.compile inside: AOTAutograd compiles backward graphs without donated buffers (since
    torch 2.6 it donates saved tensors the backward frees, and then refuses backward(retain_graph=True),
    which the D step's accumulation chunks need: `Trainer._keep_sn_graph`). Graphs compile lazily, on
    the first call with grad, so the trainer's steps are where D's training graphs compile; 13 us a
    step, in this configuration only."""
    import torch._functorch.config as functorch_config

    if not hasattr(functorch_config, "donated_buffer"):  # older torch: nothing donated
        yield
        return
    with functorch_config.patch(donated_buffer=False):
        yield


def _grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """‖every gradient‖₂, a 0-dim tensor. On the CPU one ganfast._C call (csrc/cpu/grad_norm.cpp: a
    sum of squares in double, deterministic): torch's _foreach_norm + stack + norm, ~10 ops, took ~50 us
    a model inside the MLP step of `ganfast bench step`; reading every stat of that 3.2 ms step cost
    180-208 us before, 117 us after (in-process A/B, 2026-12-05). Elsewhere (CUDA's _foreach_norm is one
    fused kernel) and for what the call does not take (sparse gradients, other dtypes), torch's."""
    if grads[0].is_cpu:
        fused = backends.extension_function("grad_norm_eager")
        gn = fused(grads) if fused is not None else None
        if gn is not None:
            return gn
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def _needs_grad(loss: torch.Tensor, model: str, weights=True) -> None:
    """A loss without a gradient means that no parameter of `model` requires grad (all of it frozen),
    which autograd would only report as 'element 0 of tensors does not require grad'."""
    if not loss.requires_grad or weights is None:
        raise ValueError(f"no parameter of the {model} requires grad (all of it frozen, e.g. by requires_grad_(False)),"
                         f" so its update has nothing to train: unfreeze at least one of its parameters")


class Trainer:
    """GAN training with the user's own G, D and optimizers (see the module docstring for the step).

    The step's options (loss, penalty, ..., accumulate) are StepConfig's: pass them one by one or as
    config=StepConfig(...). spectral_norm applies ganfast.nn.apply_spectral_norm to D (which replaces
    PyTorch's spectral norms there; the Parameter objects stay the same) and runs PyTorch's
    parametrization-style spectral norms in G, if any, on ganfast's kernels (replaced, G's layers and
    state_dict keys otherwise untouched); `sn_multi_tensor` (True for a D on the CPU or CUDA) computes
    all of D's layers in one multi-tensor call per step, with the same numbers. `joint_d_forward`
    (decided on the first batch: True when D judges each sample on its own, which a probe checks;
    False with BatchNorm, minibatch stddev or dropout) runs D once on cat(real, fake) in D steps
    without R1 / R2 whose inputs are small (`_joint`). latent_dim: int or the shape of
    one z (default: from G's first Linear / ConvTranspose). device: moves G and D there (default:
    theirs). seed: of the trainer's noise generator (z, penalty draws, data shuffling). monitor: a
    StabilityMonitor. schedulers: (g_scheduler, d_scheduler), either None: stepped after each step,
    checkpointed, composed with the monitor's learning-rate cut. extra_d_loss / extra_g_loss: called
    with a LossInputs, return a term added to that loss (the D step's backward computes gradients for
    D's parameters only: a module outside D that extra_d_loss uses gets none there). distributed: None
    runs data-parallel when launched on several processes (torchrun, distributed.launch), True requires
    it, False trains alone; step(real) then takes this rank's batch and the update is one process's on
    all ranks' batches concatenated.
    dist_timeout: seconds a collective waits for the other ranks. num_classes: K makes the run
    class-conditional (batches (x, y), G(z, y), D(x, y)); class_probs: the K probabilities of the
    fake labels (default uniform; e.g. the data's class frequencies).
    augment: a DiffAugment policy ("color,translation,cutout", ganfast.augment): every real and fake
    batch is augmented before D, in the D and G steps alike (independent draws for each batch, from
    the trainer's generator). augment_p: the probability a sample is augmented, or "ada" (ADA's
    adaptive p; ganfast.train.augment.Adaptive(...) to set its target, interval and speed); p is
    reported as the stat "augment_p". R1/R2 and the other penalties see the augmented batches: R1 is
    the gradient norm at the augmented real, D's actual input (StyleGAN2-ADA differentiates through
    its augmentation to the unaugmented image instead).
    G and D may be torch.compile wrappers: D's forwards that a penalty differentiates twice run the
    module inside (a compiled backward cannot be differentiated again), and checkpoints hold the
    modules' own state dicts (probe.uncompiled).
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, g_optimizer: torch.optim.Optimizer,
                 d_optimizer: torch.optim.Optimizer, loss: str = "ns", penalty: str | None = None,
                 penalty_weight: float = 10.0, penalty_interval: int = 1, d_steps: int = 1,
                 spectral_norm: bool = False, ema: float | None = None, amp: str | None = None,
                 grad_clip=None, weight_clip: float | None = None, latent_dim=None, device=None,
                 seed: int | None = None, monitor: StabilityMonitor | None = None,
                 distributed: bool | None = None, dist_timeout: float = _dist.DEFAULT_TIMEOUT, *,
                 ema_rampup: float | None = None, accumulate: int = 1, schedulers=None, extra_d_loss=None,
                 extra_g_loss=None, pack: int = 1, config: StepConfig | None = None,
                 num_classes: int | None = None, class_probs=None, augment: str | None = None, augment_p=1.0):
        # --- checks, all before anything is changed ---------------------------------------------
        if not isinstance(generator, nn.Module) or not isinstance(discriminator, nn.Module):
            raise TypeError("generator and discriminator must be torch.nn.Module instances")
        for name, opt in (("g_optimizer", g_optimizer), ("d_optimizer", d_optimizer)):
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"{name} must be a torch.optim.Optimizer, got {type(opt).__name__}")
        given = StepConfig(loss, penalty, penalty_weight, penalty_interval, d_steps, spectral_norm, ema, ema_rampup,
                           amp, grad_clip, weight_clip, accumulate, pack)
        if config is not None and given != StepConfig():
            raise ValueError("pass the step's options one by one or as config=StepConfig(...), not both")
        self.config = cfg = (config or given).checked()
        distributed = _dist.wanted(distributed)
        if class_probs is not None and num_classes is None:
            raise ValueError("class_probs needs num_classes (a conditional run)")
        if num_classes is not None and cfg.pack != 1:
            raise ValueError("pack (PacGAN) is for unconditional runs: a packed D would judge samples of several "
                             "classes against one label")
        self.classes = ClassDistribution(num_classes, class_probs) if num_classes is not None else None
        self.schedulers = checked_schedulers(schedulers, g_optimizer, d_optimizer)
        self.device = place_models(generator, discriminator, device, distributed)
        if self.device.type == "cpu":
            keep_freed_memory()  # the step's memory kept for the next step, not faulted back in (cpu_malloc.py)
        self.G, self.D = generator, discriminator
        # the modules inside torch.compile wrappers (themselves where not compiled): probe.uncompiled
        self._g_plain, self._d_plain = uncompiled(generator), uncompiled(discriminator)
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.extra_d_loss, self.extra_g_loss = extra_d_loss, extra_g_loss
        self.dtype = next(p.dtype for p in generator.parameters() if p.is_floating_point())
        self.latent_shape = infer_latent_shape(self._g_plain, latent_dim)
        self.monitor = monitor if monitor is not None else StabilityMonitor()
        check_optimizer_holds(g_optimizer, generator, "g_optimizer", "generator")
        check_optimizer_holds(d_optimizer, discriminator, "d_optimizer", "discriminator")
        self._nn = spectral_norm_module(self._g_plain, self._d_plain, cfg.spectral_norm)  # sn_step around D call groups
        self._compile_options = _without_donated_buffers if (
            cfg.accumulate > 1 and self._nn is not None and self._d_plain is not discriminator) else contextlib.nullcontext
        # D's spectral norm in one multi-tensor call per step on the CPU and CUDA (same numbers as one
        # op per layer; README, "Performance": the MLP step with SN + R1 1.08-1.15x faster on the CPU,
        # DCGAN-32 level; on an H200 every layer of a DCGAN-32 / ResNet-128 D in 0.60 / 1.11 ms instead
        # of 0.90 / 1.94 ms one op per layer, `python -m ganfast.bench.backend_order`).
        self.sn_multi_tensor = self.device.type in ("cpu", "cuda")
        # None: decided on the first batch, True when D judges each sample on its own (probe.batch_independent)
        self.joint_d_forward: bool | None = None
        self.joint_d_max_elements = JOINT_D_MAX_ELEMENTS  # `ganfast bench step` checks the joint call
        self._comm = _dist.communicator(distributed, self.device, dist_timeout)
        self._penalty = PenaltyTerm(cfg, self._comm, self._draw) if cfg.penalty else None
        # every rank starts from rank 0's weights, buffers (SN u, v) and seed
        self._sync_buffers = self._comm.share_models(generator, discriminator)
        # what a checkpoint must match to be resumed by this trainer (the optimizers as given)
        self.description = describe_run(cfg, self.latent_shape, self._g_plain, self._d_plain, g_optimizer,
                                        d_optimizer)
        if self.classes is not None:
            self.description.update(self.classes.describe())
        if self._penalty is not None:
            self._penalty.adjust_optimizer(d_optimizer)
        self.ema = EMA(self._g_plain, cfg.ema, cfg.ema_rampup) if cfg.ema is not None else None
        self._amp_dtype = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
        if cfg.amp is not None and self.device.type == "cpu" and not cpu_runs_natively(cfg.amp):
            warnings.warn(f"amp={cfg.amp!r} on a CPU without native {cfg.amp} support in oneDNN: PyTorch runs "
                          f"{cfg.amp} convolutions through its slow reference loops (a conditional DCGAN step on a "
                          f"2-core Zen 2 took 15x its float32 time); amp=None trains in float32", stacklevel=2)
        self.d_scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.g_scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        if seed is None:
            seed = random.SystemRandom().randrange(2 ** 62)
        elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.seed = self._comm.broadcast_int(int(seed))  # one noise stream, sliced per rank
        self._gen = torch.Generator(device=self.device).manual_seed(self.seed)
        self._sample_gen = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        self._augment = Augmenter(augment, augment_p, self.device, self._draw) if augment is not None else None
        self.description["augment"] = self._augment.describe() if self._augment is not None else None
        self._d_params = [p for p in discriminator.parameters() if p.requires_grad]
        self._d_all_params = list(discriminator.parameters())  # frozen ones too: one may be unfrozen later
        self._all_modules = [*generator.modules(), *discriminator.modules()]  # put in train mode by each step
        self._g_params = [p for p in generator.parameters() if p.requires_grad]
        self._stat_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self._zero = torch.zeros((), device=self.device, dtype=self._stat_dtype)
        self._last_pen = self._zero
        self.step_count, self.d_step_count = 0, 0  # d_step_count: lazy regularization's phase
        self._data_shape = None
        self._probability_head = ProbabilityHeadCheck()
        self.last_reals: list[torch.Tensor] = []  # the last step's batches (checked on a rollback)
        self.rolled_back = False  # set by a step that rolled back
        self.checkpoint_dir = None  # fit's: where a rollback without a snapshot looks
        self.pending_data_state = None  # a loaded checkpoint's batch-source position, for fit

    @property
    def ema_g(self) -> nn.Module | None:
        """The EMA copy of G (None without ema)."""
        return self.ema.model if self.ema is not None else None

    @property
    def num_classes(self) -> int | None:
        """K of a conditional run, None for an unconditional one."""
        return self.classes.num_classes if self.classes is not None else None

    rank = property(lambda self: self._comm.rank)
    world_size = property(lambda self: self._comm.world)

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return self.g_optimizer, self.d_optimizer

    # --- helpers ----------------------------------------------------------------------------------
    def _autocast(self):
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp_dtype)

    def _sn(self):
        if self._nn is None:
            return contextlib.nullcontext()
        return self._nn.sn_step(self._d_plain, multi_tensor=self.sn_multi_tensor)

    def _keep_sn_graph(self, chunk: int) -> bool:
        """Whether the backward of D-step accumulation chunk `chunk` must keep its graph: inside one
        sn_step every chunk uses the same W / sigma, so the spectral norm's part of the graph must
        outlive all but the last chunk's backward. The rest of a kept graph lives as long as the
        chunk's tensors: the accumulation loop drops them before the next chunk. (A compiled D's
        backward refuses retain_graph where AOTAutograd donated its buffers: `_compile_options`.)"""
        return self._nn is not None and chunk < self.config.accumulate - 1

    def _generate(self, model, z, y):
        return model(z) if y is None else model(z, y)

    def _disc(self, x, y, D=None):
        D = self.D if D is None else D
        return D(x) if y is None else D(x, y)

    def _noise(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randn((n,) + self.latent_shape, generator=gen, device=self.device, dtype=self.dtype)

    def _draw(self, fn, shape, dtype) -> torch.Tensor:
        """fn(shape) from the trainer's generator; with W ranks, rank r's rows [r·n, (r+1)·n) of one
        draw of W·n rows (the same generator state on every rank): the single-process draw for W·n."""
        n, w, r = shape[0], self._comm.world, self._comm.rank
        full = fn((n * w,) + tuple(shape[1:]), generator=self._gen, device=self.device, dtype=dtype)
        return full if w == 1 else full[r * n:(r + 1) * n]

    def _split(self, batch):
        """(x, y) of one batch; y None for an unconditional trainer, which refuses labels."""
        if self.classes is None:
            if looks_labelled(batch):
                raise unconditional_error("step")
            return batch, None
        if not is_pair(batch):
            raise missing_error("step", self.classes.num_classes)
        return batch[0], batch[1]

    def _d_input(self, x: torch.Tensor) -> torch.Tensor:
        """What D sees of a batch: x, augmented when the run augments (each sample on its own), then
        packed when pack > 1 (PacGAN)."""
        if self._augment is not None:
            x = self._augment(x)
        return pack_samples(x, self.config.pack)

    def _prepare(self, real, labels=None) -> torch.Tensor:
        check_real_batch(real, self.device, self.config.accumulate, self.config.pack)
        real = real.to(self.dtype)
        if labels is not None:  # values read on the CPU, and once on an accelerator (labels.py)
            self.classes.check(labels, real.shape[0], self.device,
                               read_values=labels.device.type == "cpu" or self._data_shape is None)
        if self._data_shape is None:
            independent = check_models(self._g_plain, self._d_plain, real, self._noise, self.latent_shape,
                                       self._autocast, labels, self.config.pack)
            if self.joint_d_forward is None:
                self.joint_d_forward = independent
            self._data_shape = real.shape[1:]
        elif real.shape[1:] != self._data_shape:
            raise ValueError(f"a real batch of per-sample shape {tuple(real.shape[1:])} differs from the first "
                             f"batch's {tuple(self._data_shape)}")
        return real

    def _update(self, opt, scaler, params, clip, want: bool, what: str):
        """Average the gradients over ranks, clip, step; returns the total gradient norm (pre-clipping,
        a device tensor) when wanted or clipping."""
        self._comm.average_grads_(params, what)  # the combined backward's gradients
        if self.config.amp == "fp16" and (want or clip is not None):
            scaler.unscale_(opt)
        gn = None
        if want or clip is not None:
            grads = [p.grad for p in params if p.grad is not None]
            if not grads:
                gn = self._zero
            elif clip is not None:
                gn = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
            else:
                gn = _grad_norm(grads)
        scaler.step(opt)
        scaler.update()
        return gn

    def _logit_pair(self, real_logits, fake_logits):
        """Relativistic losses average the other side's logits over the batch: with W ranks, over
        every rank's logits (gathered; the gather's backward sums the gradient over ranks)."""
        if self.config.loss not in losses.RELATIVISTIC:
            return real_logits, fake_logits
        return self._comm.gather_logits(real_logits, fake_logits)

    def _joint(self, real: torch.Tensor, apply_pen: bool) -> bool:
        """Whether this D step calls D once on cat(real, fake): when D judges each sample on its own
        (joint_d_forward), no penalty differentiates D(real) or D(fake) alone (R1 / R2 would double
        their cost), and D's input holds at most joint_d_max_elements numbers a side (no limit by
        default: JOINT_D_MAX_ELEMENTS). One call pays D's per-op overhead once: on the 2-core CPU the
        MLP step on 256 points took 0.93x the time of two calls, DCGAN steps 0.83-1.00x (see
        JOINT_D_MAX_ELEMENTS). `ganfast bench step` checks the choice."""
        return bool(self.joint_d_forward) and real.numel() <= self.joint_d_max_elements and not (
            apply_pen and (self._penalty.on_real or self._penalty.on_fake))

    def _trainable_d(self) -> list:
        """D's parameters that require grad now (a layer may be frozen or unfrozen between steps, as
        FreezeD does): the D step's backward computes gradients for these and nothing else, and the G
        step freezes them."""
        return [p for p in self._d_all_params if p.requires_grad]

    def _d_update(self, real, fake, want: bool, real_y=None, fake_y=None):
        cfg, k = self.config, self.config.accumulate
        self.d_optimizer.zero_grad(set_to_none=True)
        # the backward's inputs: D's weights, not the reals that R1 differentiates (nor WGAN-GP's x̂),
        # whose gradient nobody reads and costs D's first layer a grad-input pass (README, "Performance")
        weights = self._trainable_d() or None
        real, fake = self._d_input(real), self._d_input(fake)  # whole batches: the draws do not depend on k
        apply_pen = cfg.penalty is not None and self.d_step_count % cfg.penalty_interval == 0
        alphas, noises = self._penalty.draws(real) if apply_pen else ([None] * k, [None] * k)  # per packed sample
        loss_sum, stats, pen_sum = 0.0, {}, 0.0
        with self._sn():
            for i, (r, f, alpha, noise, ry, fy) in enumerate(zip(micro_batches(real, k), micro_batches(fake, k), alphas,
                                                                  noises, micro_batches(real_y, k),
                                                                  micro_batches(fake_y, k))):
                with self._autocast():
                    if apply_pen and self._penalty.on_real:
                        r = r.detach().requires_grad_(True)  # D(real) serves the loss and R1
                    if apply_pen and self._penalty.on_fake:
                        f = f.detach().requires_grad_(True)
                    if self._joint(r, apply_pen):  # one D call on real and fake
                        logits = self._disc(torch.cat([r, f]), None if ry is None else torch.cat([ry, fy]))
                        real_logits, fake_logits = logits.split([r.shape[0], f.shape[0]])
                    else:  # R1 / R2 differentiate D(real) or D(fake) alone, at half the cost of a joint call
                        # D(real) / D(fake) that R1 / R2 differentiate twice: uncompiled
                        D = self._d_plain if apply_pen and (self._penalty.on_real or self._penalty.on_fake) else self.D
                        real_logits, fake_logits = self._disc(r, ry, D), self._disc(f, fy, D)
                    self._probability_head.watch(self.step_count, real_logits, fake_logits)
                    if self._augment is not None:
                        self._augment.observe(real_logits)
                    pair = self._logit_pair(real_logits, fake_logits)
                    # the stats come out of the loss kernel's pass, but cost a few ops: only when read
                    loss, st = losses.d_loss(*pair, cfg.loss, return_stats=True) if want else (
                        losses.d_loss(*pair, cfg.loss), None)
                    total = loss
                    if apply_pen:
                        # uncompiled (a double backward); x̂ keeps the real label
                        D = self._d_plain if ry is None else (lambda x, y=ry: self._d_plain(x, y))
                        pen = self._penalty.value(D, r, f, real_logits, fake_logits, alpha, noise,
                                                  self.d_scaler if self.d_scaler.is_enabled() else None)
                        pen_sum = pen_sum + pen.detach() if k > 1 else pen.detach()
                        total = loss + pen * cfg.penalty_interval if cfg.penalty_interval > 1 else loss + pen
                    if self.extra_d_loss is not None:
                        inputs = LossInputs(self, r, f, real_logits, fake_logits, loss, ry, fy)
                        total = total + self.extra_d_loss(inputs)
                _needs_grad(total, "discriminator", weights)
                self.d_scaler.scale(total / k if k > 1 else total).backward(retain_graph=self._keep_sn_graph(i),
                                                                            inputs=weights)
                loss_sum = loss_sum + loss.detach() if k > 1 else loss.detach()
                if want:
                    stats = {n: stats.get(n, 0.0) + v for n, v in st.items()} if k > 1 else st
                if k > 1:  # a graph kept by retain_graph lives as long as its tensors: free it before the next chunk
                    real_logits = fake_logits = pair = loss = total = pen = inputs = None
        if apply_pen:
            self._last_pen = pen_sum / k if k > 1 else pen_sum
        self.d_step_count += 1
        gn = self._update(self.d_optimizer, self.d_scaler, self._d_params, cfg.grad_clip[1], want, "D")
        if cfg.weight_clip is not None:  # original WGAN: clip D's weights to [-c, c]
            with torch.no_grad():
                torch._foreach_clamp_min_(self._d_params, -cfg.weight_clip)
                torch._foreach_clamp_max_(self._d_params, cfg.weight_clip)
        if k > 1:
            loss_sum, stats = loss_sum / k, {n: v / k for n, v in stats.items()}
        return loss_sum, stats, gn

    def _g_loss(self, fake, real, fake_y=None, real_y=None):
        with self._autocast():
            fake_logits, real_logits = self._disc(self._d_input(fake), fake_y), None
            if self.config.loss in losses.RELATIVISTIC:
                with torch.no_grad():
                    real_logits = self._disc(self._d_input(real), real_y)
                real_logits, fake_logits = self._logit_pair(real_logits, fake_logits)
            loss = losses.g_loss(fake_logits, self.config.loss, real_logits)
            if self.extra_g_loss is None:
                return loss, loss
            return loss, loss + self.extra_g_loss(LossInputs(self, real, fake, real_logits, fake_logits, loss, real_y,
                                                             fake_y))

    def _g_update(self, fake, z, real, want: bool, fake_y=None, real_y=None):
        cfg, k = self.config, self.config.accumulate
        self.g_optimizer.zero_grad(set_to_none=True)
        frozen = self._trainable_d()  # no weight gradients for D in the G step
        for p in frozen:
            p.requires_grad_(False)
        try:
            with self._sn():
                if k == 1:  # the D step's fake, with its graph
                    loss, total = self._g_loss(fake, real, fake_y, real_y)
                    _needs_grad(total, "generator")
                    self.g_scaler.scale(total).backward()
                else:
                    loss = 0.0
                    for i, (z_i, r_i, fy, ry) in enumerate(zip(z.chunk(k), real.chunk(k), micro_batches(fake_y, k),
                                                               micro_batches(real_y, k))):
                        with self._autocast():
                            f = self._generate(self.G, z_i, fy)
                        part, total = self._g_loss(f, r_i, fy, ry)
                        _needs_grad(total, "generator")
                        # no retain_graph: D's parameters are frozen here, so its shared W / sigma has no graph
                        self.g_scaler.scale(total / k).backward()
                        loss = loss + part.detach() / k
                        f = part = total = None  # this chunk's tensors, freed before the next chunk's forward
        finally:
            for p in frozen:  # as they were: a layer the user froze stays frozen
                p.requires_grad_(True)
        gn = self._update(self.g_optimizer, self.g_scaler, self._g_params, cfg.grad_clip[0], want, "G")
        self._comm.average_(self._sync_buffers, "the BatchNorm buffers")
        if self.ema is not None:
            self.ema.update(self.step_count)
        return loss, gn

    # --- public API -----------------------------------------------------------------------------
    def step(self, real, return_stats: bool = True) -> dict | None:
        """d_steps D updates and one G update. `real`: a batch (reused by every D step) or a list of
        d_steps batches; a conditional trainer's batch is a pair (x, y). Returns the stats as plain
        floats (one host sync), or None. Distributed: `real` is this rank's batch, every rank passes
        the same return_stats, and an error aborts the group."""
        self._comm.step = self.step_count + 1
        try:
            with self._compile_options():
                return self._step(real, return_stats)
        except BaseException as e:
            self._comm.abort(e)
            raise

    def _step(self, real, return_stats: bool) -> dict | None:
        d_steps = self.config.d_steps
        # one batch, or a list of d_steps: an (x, y) pair is one batch (with float y too when d_steps is 1,
        # so that its check names the labels' dtype)
        one = not isinstance(real, (list, tuple)) or looks_labelled(real) or \
            (self.classes is not None and d_steps == 1 and is_pair(real))
        reals = [real] * d_steps if one else list(real)
        if len(reals) != d_steps:
            raise ValueError(f"step got {len(reals)} real batches; pass one batch or a list of d_steps={d_steps}")
        reals, labels = zip(*[self._split(r) for r in reals])
        reals = [self._prepare(r, y) for r, y in zip(reals, labels)]
        self._comm.check_batch_sizes([r.shape[0] for r in reals])
        self.monitor.ensure_snapshot(self)
        self.rolled_back, self.last_reals = False, reals
        if not all(m.training for m in self._all_modules):  # Module.train() costs ~0.1 ms: only when needed
            self.G.train()
            self.D.train()
        whole = self.config.accumulate == 1
        for i, (r, y) in enumerate(zip(reals, labels)):
            z = self._draw(torch.randn, (r.shape[0],) + self.latent_shape, self.dtype)
            fake_y = self.classes.draw(self._draw, r.shape[0]) if y is not None else None
            if i == len(reals) - 1 and whole:
                with self._autocast():
                    fake = self._generate(self.G, z, fake_y)  # kept with its graph for the G step
                fake_d = fake.detach()
            else:
                with torch.no_grad(), self._autocast():
                    fake = fake_d = self._generate(self.G, z, fake_y)
            d_loss, st, d_gn = self._d_update(r, fake_d, return_stats, y, fake_y)
        g_loss, g_gn = self._g_update(fake, z, reals[-1], return_stats, fake_y, labels[-1])
        self.step_count += 1
        if self._augment is not None:
            self._augment.after_step(self.step_count, reals[-1].shape[0] * self.world_size, self._comm.average_)
        step_schedulers(self.schedulers, self.optimizers, self.monitor.lr_scale)
        if not return_stats:
            return None
        vals = [d_loss, g_loss, self._last_pen, st["real_mean"], st["fake_mean"], st["real_acc"], st["fake_acc"],
                d_gn, g_gn]
        names = list(STAT_NAMES)
        if self._nn is not None and (extremes := self._nn.sigma_extremes(self._d_plain)) is not None:
            vals, names = vals + list(extremes), names + ["sigma_max", "sigma_min"]
        if self._augment is not None:
            vals, names = vals + [self._augment.p], names + ["augment_p"]
        if self._probability_head.flag is not None:
            vals.append(self._probability_head.flag)
        # under no_grad (g_loss has a graph) instead of a detach and a reshape per value: 18 fewer ops,
        # 21.8 -> 5.7 us with the .tolist() for 9 values (timeit); stack promotes mixed dtypes
        with torch.no_grad():
            packed = torch.stack([v if v.dim() == 0 else v.reshape(()) for v in vals]).to(self._stat_dtype)
        self._comm.average_([packed], "the step's stats")  # the global batch's (equal per-rank batches)
        values = packed.tolist()  # the one host-device sync of the step
        if self._probability_head.flag is not None:
            self._probability_head.judge(self.step_count, values.pop() == 1.0, self.config.loss)
        stats = dict(zip(names, values))
        self.rolled_back = self.monitor.after_read(self, stats, self.checkpoint_dir)
        return stats

    @torch.no_grad()
    def sample(self, n: int, z: torch.Tensor | None = None, labels=None, chunk: int = 1024) -> torch.Tensor:
        """n samples from G (the EMA copy when ema is set), in eval mode, with noise from a generator
        separate from the training noise (so sampling never changes training). Conditional runs:
        labels is a class index (all n of that class) or a LongTensor (n,); None draws them from the
        class probabilities with the sampling generator. The samples have the models' dtype, under amp
        too (autocast's bfloat16 would make `.numpy()` and image writers fail). G runs on `chunk`
        samples at a time, written into one output: 50,000 samples for an FID need G's activations
        for 1024 of them, not for all."""
        if not is_positive_int(chunk):
            raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        model = self.ema_g if self.ema_g is not None else self.G
        if z is None:
            z = self._noise(n, self._sample_gen)
        y = self._sample_labels(z.shape[0], labels)
        was_training = model.training
        model.eval()
        try:
            out = None
            for start in range(0, max(z.shape[0], 1), chunk):  # an empty z: one call, as G would be called
                part = slice(start, start + chunk)
                with self._autocast():
                    x = self._generate(model, z[part], None if y is None else y[part])
                if out is None:
                    if x.shape[0] == z.shape[0]:
                        return x.to(self.dtype)  # one chunk
                    out = x.new_empty((z.shape[0],) + x.shape[1:], dtype=self.dtype)
                out[part] = x
            return out
        finally:
            model.train(was_training)

    def _sample_labels(self, n: int, labels):
        if self.classes is None:
            if labels is not None:
                raise ValueError("sample got labels, but this trainer is unconditional (num_classes=None)")
            return None
        if labels is None:
            u = torch.rand((n,), generator=self._sample_gen, device=self.device, dtype=torch.float32)
            return self.classes.from_uniform(u)
        if isinstance(labels, int) and not isinstance(labels, bool):
            labels = torch.full((n,), labels, dtype=torch.long)
        if isinstance(labels, torch.Tensor):
            labels = labels.to(self.device)
        self.classes.check(labels, n, self.device, read_values=True, what="sample's labels")
        return labels

    # --- state and checkpoints ------------------------------------------------------------------
    def state_dict(self, data_state: dict | None = None, include_monitor: bool = True) -> dict:
        return {
            "format": 2, "step": self.step_count, "d_step_count": self.d_step_count, "seed": self.seed,
            "config": self.description,
            "generator": self._g_plain.state_dict(), "discriminator": self._d_plain.state_dict(),
            "ema": self.ema_g.state_dict() if self.ema_g is not None else None,
            "g_optimizer": self.g_optimizer.state_dict(), "d_optimizer": self.d_optimizer.state_dict(),
            "schedulers": [s.state_dict() if s is not None else None for s in self.schedulers],
            "g_scaler": self.g_scaler.state_dict(), "d_scaler": self.d_scaler.state_dict(),
            "rng": ckpt.rng_state(), "noise_generator": self._gen.get_state(),
            "sample_generator": self._sample_gen.get_state(), "last_penalty": self._last_pen.cpu(),
            "monitor": self.monitor.state_dict() if include_monitor else None, "data": data_state,
            "augment": self._augment.state_dict() if self._augment is not None else None,
        }

    def load_state(self, state: dict, restore_monitor: bool = True, force: bool = False, source: str = "") -> None:
        """Restore a state_dict. A state written by another configuration (parameter shapes, loss,
        penalty, optimizers) raises ckpt.ResumeMismatchError listing the differences, unless force."""
        ckpt.drop_compile_prefix(state)
        diff = ckpt.differences(state.get("config", {}), self.description)
        if diff and not force:
            raise ckpt.mismatch_error(diff, source or "the checkpoint")
        if diff:
            log.warning("loading %s despite: %s", source or "a checkpoint", "; ".join(diff))
        self._g_plain.load_state_dict(state["generator"])
        self._d_plain.load_state_dict(state["discriminator"])
        if self.ema_g is not None:
            self.ema_g.load_state_dict(state["ema"] if state.get("ema") is not None else self._g_plain.state_dict())
        self.g_optimizer.load_state_dict(state["g_optimizer"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        for s, saved in zip(self.schedulers, state.get("schedulers") or ()):
            if s is not None and saved is not None:
                s.load_state_dict(saved)
        for scaler, key in ((self.g_scaler, "g_scaler"), (self.d_scaler, "d_scaler")):
            if state.get(key):
                scaler.load_state_dict(state[key])
        ckpt.set_rng_state(state["rng"])
        self._gen.set_state(state["noise_generator"])
        self._sample_gen.set_state(state["sample_generator"])
        self._last_pen = state["last_penalty"].to(self.device, self._stat_dtype)
        if self._augment is not None and state.get("augment") is not None:
            self._augment.load_state_dict(state["augment"])
        self.step_count = int(state["step"])
        self.d_step_count = int(state["d_step_count"])
        if restore_monitor and state.get("monitor") is not None:
            self.monitor.load_state_dict(state["monitor"])

    def save_checkpoint(self, path, data_state: dict | None = None):
        """Write the training state to `path` atomically, signed with its SHA-256 (torch.load reads it)."""
        return ckpt.save(self.state_dict(data_state), path)

    def load_checkpoint(self, path, force: bool = False) -> dict:
        """Restore from a checkpoint file, or the newest valid one of a directory (a corrupt one is named
        in a warning); one of another configuration is refused unless force. Returns the state."""
        state, used = ckpt.load_latest_valid(path, map_location="cpu")
        self.load_state(state, force=force, source=f"checkpoint {used}")
        self.pending_data_state = state.get("data")
        self.monitor.forget_snapshot()
        log.info("resumed from %s at step %d", used, self.step_count)
        return state

    def fit(self, data, steps: int, batch_size: int | None = None, **options) -> list[dict]:
        """Train until `steps` steps in total have run; see ganfast.train.fit.fit for the options."""
        from .fit import fit
        return fit(self, data, steps, batch_size, **options)
