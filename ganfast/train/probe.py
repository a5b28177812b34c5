"""What the trainer learns about the user's models and optimizers before it trains: the latent shape,
that the optimizers hold the models' parameters, that G's output fits the data and D's output is one
logit per sample, and a description of all of it that a checkpoint records for resume."""
from __future__ import annotations

import importlib
import math
import sys
import warnings

import torch
from torch import nn

from . import distributed as _dist

_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# param-group keys that say how an optimizer runs, not what it computes (or that schedulers add)
_IMPLEMENTATION_KEYS = {"params", "foreach", "fused", "capturable", "differentiable", "initial_lr", "maximize"}


def _is_layer(m: nn.Module) -> bool:
    """A layer with weights of its own: no submodules but, for a parametrized layer (spectral norm,
    weight norm: torch.nn.utils.parametrize), the `parametrizations` that hold its weights."""
    children = {name for name, _ in m.named_children()}
    if children - {"parametrizations"}:
        return False
    return bool(children) or any(True for _ in m.parameters(recurse=False))


def infer_latent_shape(generator: nn.Module, latent_dim=None) -> tuple[int, ...]:
    """Shape of one z: (in_features,) for a first Linear, (in_channels, 1, ..., 1) for a first
    ConvTranspose; `latent_dim` (int or shape) overrides, shaped like the first layer wants."""
    first = next((m for m in generator.modules() if _is_layer(m)), None)
    if latent_dim is not None:
        if isinstance(latent_dim, (tuple, list, torch.Size)):
            shape = tuple(int(d) for d in latent_dim)
        else:
            shape = (int(latent_dim),)
        if any(d < 1 for d in shape):
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        if len(shape) == 1 and isinstance(first, _CONV_T) and first.in_channels == shape[0]:
            shape = shape + (1,) * len(first.kernel_size)
        return shape
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    if isinstance(first, _CONV_T):
        return (first.in_channels,) + (1,) * len(first.kernel_size)
    what = "no layer with parameters" if first is None else f"its first layer is {type(first).__name__}"
    hint = " (a convolution's input size is not known)" if isinstance(first, _CONV) else ""
    raise ValueError(f"cannot infer the latent size of the generator: {what}{hint}; pass latent_dim= "
                     f"(an int, or the shape of one z such as (128, 1, 1))")


def spectral_norm_module(G: nn.Module, D: nn.Module, apply: bool):
    """ganfast.nn when D carries its spectral norm, else None. With `apply`, D is normalized here and
    the parametrization-style spectral norms of PyTorch in G (SAGAN and BigGAN normalize G too) run
    on ganfast's kernels: replaced with their settings, u and v, the state_dict keys unchanged
    (replace_torch_spectral_norm). G's hook-based ones stay PyTorch's: replacing them would change
    the keys of G's state_dict, the weights users export."""
    if apply:
        sn = optional_module("nn", "spectral_norm=True")
        device = next(D.parameters()).device
        sn.apply_spectral_norm(D)
        D.to(device)
        from ..nn.spectral_norm import replace_torch_spectral_norm
        for m in list(G.modules()):
            replace_torch_spectral_norm(m, hook_based=False)
        return sn
    try:
        from .. import nn as sn
        return sn if len(sn.spectral_norms(D)) else None  # the user's D may carry it already
    except Exception:  # ganfast.nn missing, or D without normalized layers
        return None


def pack_samples(x: torch.Tensor, pack: int) -> torch.Tensor:
    """PacGAN's packing: (B, C, ...) -> (B / pack, pack * C, ...), each group of `pack` consecutive
    samples concatenated on the channel axis."""
    if pack == 1:
        return x
    return x.reshape(x.shape[0] // pack, pack * x.shape[1], *x.shape[2:])


# where a run's batches come from a loader, an odd size is usually the incomplete last batch of an epoch
_LAST_BATCH_HINT = " (a data loader's incomplete last batch? pass it drop_last=True)"


def check_real_batch(real, device: torch.device, accumulate: int, pack: int = 1) -> None:
    if not isinstance(real, torch.Tensor):
        raise TypeError(f"a real batch must be a tensor, got {type(real).__name__}")
    if real.device != device:
        raise ValueError(f"device mismatch: the real batch is on {real.device} but the models are on "
                         f"{device}; move it there (fit does this for you)")
    if not real.is_floating_point():
        hint = " (8-bit images: x.float() / 127.5 - 1 scales them to a Tanh generator's [-1, 1])" \
            if real.dtype == torch.uint8 else ""
        raise TypeError(f"the real batch must be floating point (scaled like the generator's output), "
                        f"got {real.dtype}{hint}")
    if real.dim() < 2 or real.shape[0] == 0:
        raise ValueError(f"a real batch must have a batch dimension and at least one feature dimension, "
                         f"got shape {tuple(real.shape)}")
    if real.shape[0] % accumulate:
        raise ValueError(f"accumulate={accumulate} splits each batch into {accumulate} equal micro-batches: the "
                         f"batch size {real.shape[0]} is not a multiple of {accumulate}{_LAST_BATCH_HINT}")
    if real.shape[0] % (pack * accumulate):
        what = f"pack={pack}" + (f" x accumulate={accumulate}" if accumulate > 1 else "")
        raise ValueError(f"pack={pack} has D judge groups of {pack} samples: the batch size {real.shape[0]} must be a "
                         f"multiple of {what} = {pack * accumulate}{_LAST_BATCH_HINT}")


def uncompiled(module: nn.Module) -> nn.Module:
    """The module that a torch.compile wrapper (OptimizedModule) runs, or `module` itself. The trainer
    keeps both: the wrapper for the step's forwards, the module for state (checkpoints without the
    wrapper's `_orig_mod.` key prefix) and for the gradient penalties' forwards, whose double backward
    a compiled graph's backward does not support."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # not imported: nothing was compiled
    while eval_frame is not None and isinstance(module, eval_frame.OptimizedModule):
        module = module._orig_mod
    return module


def check_optimizer_holds(opt: torch.optim.Optimizer, module: nn.Module, oname: str, mname: str) -> None:
    ids = {id(p) for p in module.parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            if id(p) not in ids:
                raise ValueError(f"{oname} optimizes a parameter (shape {tuple(p.shape)}) that is not in the "
                                 f"{mname}: pass the optimizers in the order (g_optimizer, d_optimizer), built on "
                                 f"the models' parameters")


def _plain(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def describe_optimizer(opt: torch.optim.Optimizer) -> dict:
    """Type and hyperparameters (per param group) of an optimizer, as plain values."""
    groups = [{k: _plain(v) for k, v in sorted(g.items()) if k not in _IMPLEMENTATION_KEYS}
              for g in opt.param_groups]
    return {"type": type(opt).__name__, **({"hyperparameters": groups[0]} if len(groups) == 1 else
                                             {f"group {i}": g for i, g in enumerate(groups)})}


def parameter_shapes(module: nn.Module) -> dict:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def describe_run(config, latent_shape, G, D, g_optimizer, d_optimizer) -> dict:
    """What a checkpoint must match to be resumed: the step's options, the models' parameter shapes
    and the optimizers' types and hyperparameters (as given, before any lazy-regularization change)."""
    return {**config.describe(), "latent_shape": list(latent_shape), "generator_shapes": parameter_shapes(G),
            "discriminator_shapes": parameter_shapes(D), "g_optimizer": describe_optimizer(g_optimizer),
            "d_optimizer": describe_optimizer(d_optimizer)}


@torch.no_grad()
def check_models(G: nn.Module, D: nn.Module, real: torch.Tensor, noise, latent_shape, autocast,
                 labels: torch.Tensor | None = None, pack: int = 1) -> bool:
    """Run G and D once on a few samples, before any update, and say clearly what does not fit.
    noise(n, generator) draws z. With labels (a conditional run) G is called as G(z, y) and D as
    D(x, y). pack: D takes groups of `pack` samples (pack_samples). Buffers (BatchNorm statistics,
    spectral-norm u/v) and the global RNG are restored after. Returns whether D judges each sample of
    a batch on its own (`batch_independent`), which lets the trainer run D once on real and fake
    together."""
    n = min(real.shape[0], 4 * pack)  # up to 4 (packed) samples: BatchNorm1d fails on one
    mods = [G, D]
    saved = [[b.clone() for b in m.buffers()] for m in mods]
    devices = [real.device] if real.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), autocast():
            z = noise(n, torch.Generator(device=real.device).manual_seed(0))
            y = labels[:n] if labels is not None else None
            call = "G(z, y)" if y is not None else "G(z)"
            try:
                fake = G(z) if y is None else G(z, y)
            except Exception as e:
                raise ValueError(f"the generator failed on noise of shape {tuple(z.shape)} (latent shape "
                                 f"{latent_shape}; pass latent_dim= if that is wrong), called as {call}: {e}") from e
            if not isinstance(fake, torch.Tensor):
                raise TypeError(f"the generator must return a tensor, got {type(fake).__name__}")
            if fake.shape[1:] != real.shape[1:]:
                raise ValueError(f"the generator's output shape {tuple(fake.shape[1:])} (per sample) does "
                                 f"not match the data's {tuple(real.shape[1:])}")
            warn_if_data_out_of_range(G, real)
            packed = pack_samples(real[:n], pack)
            try:
                out = D(packed) if y is None else D(packed, y)
            except Exception as e:
                how = (f", packed by pack={pack} into {tuple(packed.shape)}: D must take {pack} x "
                       f"{real.shape[1]} channels" if pack > 1 else "")
                raise ValueError(f"the discriminator failed on a real batch of shape {tuple(real[:n].shape)} "
                                 f"(per sample {tuple(real.shape[1:])}{how})"
                                 + (", called as D(x, y)" if y is not None else "") + f": {e}") from e
            if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != packed.shape[0]:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"the discriminator must return one logit (or patch map) per sample: "
                                 f"for a batch of {packed.shape[0]} it returned {got}")
            return batch_independent(D, packed, pack_samples(fake[:n].detach().to(real.dtype), pack), y, out)
    finally:
        for m, bufs in zip(mods, saved):
            for b, s in zip(m.buffers(), bufs):
                b.copy_(s)


def _output_range(m: nn.Module) -> tuple[float, float] | None:
    """The range of a bounded final activation (ReLU6 is a Hardtanh), or None."""
    if isinstance(m, nn.Tanh):
        return -1.0, 1.0
    if isinstance(m, nn.Sigmoid):
        return 0.0, 1.0
    if isinstance(m, nn.Hardtanh):
        return float(m.min_val), float(m.max_val)
    return None


def warn_if_data_out_of_range(G: nn.Module, real: torch.Tensor) -> None:
    """Warn when G's last module is a bounded activation and the real batch lies outside its range
    by more than 5 % of it: G can never produce such data (images in [0, 255] against a Tanh's
    [-1, 1] is the usual case), D tells real from fake by range alone, and the run learns nothing
    while its losses look like training. One host read, on the first batch."""
    last = list(G.modules())[-1]
    bounds = _output_range(last)
    if bounds is None or real.numel() == 0:
        return
    lo, hi = bounds
    r_lo, r_hi = (float(v) for v in torch.aminmax(real.detach()))
    margin = 0.05 * (hi - lo)
    if r_lo < lo - margin or r_hi > hi + margin:
        warnings.warn(f"the real data lie in [{r_lo:.4g}, {r_hi:.4g}], but the generator ends in "
                      f"{type(last).__name__}, whose outputs lie in [{lo:g}, {hi:g}]: G cannot produce such data, "
                      f"and D tells real from fake by their range alone. Scale the data to [{lo:g}, {hi:g}] "
                      f"(images: x / 127.5 - 1 for [-1, 1], x / 255 for [0, 1])")


def batch_independent(D: nn.Module, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor | None,
                      out_a: torch.Tensor) -> bool:
    """Whether D(cat(a, b)) is D(a) followed by D(b), to 1e-5 of the logits' scale: D judges each
    sample on its own. BatchNorm in training mode, minibatch-stddev layers, batch means and dropout
    (a fresh mask per call) fail it, as does a D that fails on the joint batch. out_a = D(a)."""
    def call(x, labels):
        return D(x) if labels is None else D(x, labels)

    try:
        out_b = call(b, y)
        joint = call(torch.cat([a, b]), None if y is None else torch.cat([y, y]))
    except Exception:  # noqa: BLE001 - a D that cannot take the joint batch is simply run twice
        return False
    if not (isinstance(out_b, torch.Tensor) and isinstance(joint, torch.Tensor) and out_b.shape == out_a.shape
            and joint.shape == (a.shape[0] + b.shape[0],) + tuple(out_a.shape[1:])):
        return False
    expected = torch.cat([out_a, out_b]).detach().float()
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    if not math.isfinite(scale):
        return False
    return bool(torch.allclose(joint.detach().float(), expected, rtol=1e-5, atol=1e-5 * scale))


def optional_module(name: str, what: str):
    try:
        return importlib.import_module(f"ganfast.{name}")
    except ImportError as e:
        raise ImportError(f"{what} needs ganfast.{name}, which is not available: {e}") from e


def place_models(G: nn.Module, D: nn.Module, device, distributed: bool) -> torch.device:
    """The device of the models: `device` (moving them there), else theirs (which must agree)."""
    g_dev = {p.device for p in G.parameters()}
    d_dev = {p.device for p in D.parameters()}
    if not g_dev or not d_dev:
        raise ValueError("the generator and the discriminator must both have parameters")
    if device is None:
        if len(g_dev | d_dev) > 1:
            raise ValueError(f"device mismatch: the generator is on {sorted(map(str, g_dev))} and the "
                             f"discriminator on {sorted(map(str, d_dev))}; move both to one device or pass device=")
        return next(iter(g_dev))
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        # one GPU per process under torchrun: cuda:LOCAL_RANK
        device = _dist.default_device() if distributed else torch.device("cuda", torch.cuda.current_device())
    G.to(device)  # keeps the Parameter objects, so the optimizers stay valid
    D.to(device)
    return device


def checked_schedulers(schedulers, g_optimizer, d_optimizer) -> tuple:
    if schedulers is None:
        return (None, None)
    if not isinstance(schedulers, (tuple, list)) or len(schedulers) != 2:
        raise ValueError("schedulers must be a (g_scheduler, d_scheduler) pair (either may be None)")
    for s, opt, name in zip(schedulers, (g_optimizer, d_optimizer), ("g", "d")):
        if s is None:
            continue
        if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau) or not hasattr(s, "optimizer"):
            raise TypeError(f"the {name} scheduler must be a torch.optim.lr_scheduler stepped once per step "
                            f"(ReduceLROnPlateau needs a metric: step it in a callback), got {type(s).__name__}")
        if s.optimizer is not opt:
            raise ValueError(f"the {name} scheduler drives another optimizer than {name}_optimizer: pass "
                             f"(g_scheduler, d_scheduler) in that order")
    return tuple(schedulers)


class ProbabilityHeadCheck:
    """Over the first `window` steps, whether every output of D lies in [0, 1] (a device flag, read
    with the step's stats): D then likely ends in a Sigmoid, while the losses take logits. A few steps
    are not enough: a freshly initialized D of logits can put every output in [0, 1] too (ganfast's
    own MLP D does, for its first steps); training pushes a D of logits out of [0, 1] within tens of
    steps, and never a Sigmoid."""

    def __init__(self, window: int = 50):
        self.window, self.flag, self.done = window, None, False

    def watch(self, step: int, *outputs: torch.Tensor) -> None:
        if self.done or step >= self.window:
            return
        with torch.no_grad():
            flag = torch.stack([((o >= 0) & (o <= 1)).all() for o in outputs]).all()
        self.flag = flag if self.flag is None else self.flag & flag

    def judge(self, steps_done: int, all_in_unit_interval: bool, loss: str) -> None:
        if steps_done < self.window and all_in_unit_interval:
            return  # not decided yet
        self.flag, self.done = None, True
        if all_in_unit_interval:
            warnings.warn(f"every output of the discriminator lay in [0, 1] over the first {steps_done} steps: "
                          f"D seems to end in a Sigmoid (a probability), but loss={loss!r} takes logits (any real "
                          f"number) and applies the sigmoid itself, so training optimizes the wrong objective. "
                          f"Remove the final nn.Sigmoid() from D", stacklevel=4)
