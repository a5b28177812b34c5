"""Spectral normalization, a drop-in for torch.nn.utils.parametrizations.spectral_norm.

    ganfast.nn.spectral_norm(module, name="weight", n_power_iterations=1, eps=1e-12, dim=None)

Same parametrization (torch.nn.utils.parametrize), same state_dict keys
(parametrizations.weight.original, parametrizations.weight.0._u / ._v), same u/v updates, sigma and
gradients; the forward runs one fused kernel of the backend that takes the weight (ganfast.backends:
float64 weights fall through to a kernel that takes them, complex ones to the reference) and the
backward one fused kernel, dW = (G - <G, W/sigma> u v^T) / sigma. As in PyTorch, spectral norm can
be registered twice on one parameter (the second normalizes the output of the first). Additions:
u, v stay fp32 for fp16/bf16 weights, an all-zero weight gives 0 instead of NaN (sigma is clamped
at eps), the last sigma is kept for monitoring (`spectral_norms`), and `sn_step(model)` computes
each normalized weight once per step.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module_hooks
from torch.nn.modules.module import (register_module_module_registration_hook,
                                     register_module_parameter_registration_hook)
from torch.nn.utils import parametrize

from .. import backends
from ..ops import spectral_norm as _ops
from ..reference import spectral_norm as _reference

CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
DEFAULT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d) + CONV_TRANSPOSE + (nn.Embedding,)


class SpectralNorm(nn.Module):
    """The parametrization: weight -> weight / sigma (see the module docstring)."""

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12) -> None:
        super().__init__()
        ndim = weight.ndim
        if dim >= ndim or dim < -ndim:
            raise IndexError(f"Dimension out of range (expected to be in range of [-{ndim}, {ndim - 1}] but got {dim})")
        if n_power_iterations <= 0:
            raise ValueError(f"Expected n_power_iterations to be positive, but got n_power_iterations={n_power_iterations}")
        if not eps > 0:  # (NaN fails too) the kernels divide by max(sigma, eps) and refuse eps <= 0 at the forward
            raise ValueError(f"spectral_norm: eps must be > 0, got {eps!r}")
        if weight.numel() == 0:
            raise ValueError(f"spectral_norm: the weight has a zero dimension (shape {tuple(weight.shape)})")
        if not (weight.is_floating_point() or weight.is_complex()):
            raise TypeError(f"spectral_norm: the weight must be floating point or complex, got {weight.dtype}")
        self.dim = dim if dim >= 0 else dim + ndim
        self.eps = eps
        self.n_power_iterations = n_power_iterations
        acc = _reference.opmath_dtype(weight.dtype)
        # The sigma of the last forward, for spectral_norms() (not in the state_dict; real).
        self.register_buffer("_sigma", torch.zeros((), dtype=acc.to_real(), device=weight.device), persistent=False)
        self._step_cache: torch.Tensor | None = None
        self._in_step = False
        # True: registered on an all-zero weight; None: state just loaded, not yet looked at; see
        # _start_when_nonzero
        self._waiting: bool | None = False
        if ndim > 1:
            outer, h, inner = _reference.split_dims(weight.shape, self.dim)
            w = outer * inner
            # Same draws as PyTorch's (new_empty(h).normal_(), then w), normalized, then 15 iterations.
            u = weight.new_empty(h, dtype=acc).normal_(0, 1)
            v = weight.new_empty(w, dtype=acc).normal_(0, 1)
            self.register_buffer("_u", F.normalize(u, dim=0, eps=eps))
            self.register_buffer("_v", F.normalize(v, dim=0, eps=eps))
            if weight.device.type != "meta" and not bool(weight.detach().any()):
                self._waiting = True
            else:
                self._warm_up(weight)

    def _warm_up(self, weight: torch.Tensor) -> None:
        """The 15 power iterations of registration (PyTorch's), from the stored u, v."""
        with torch.no_grad():
            u, v = _reference.power_method(weight.detach(), self._u, self._v, self.dim, 15, self.eps)
            self._u.copy_(u)
            self._v.copy_(v)

    def _start_when_nonzero(self, weight: torch.Tensor) -> torch.Tensor | None:
        """A weight that was all zero at registration (a zero-initialized embedding, such as
        conditional batch norm's shifts) has no direction for the power iteration to start from:
        u = normalize(W v) would be 0, and so would every later u, v, so that once training moved
        the weight, W / max(sigma, eps) would be W / eps (PyTorch's spectral norm gives NaN from the
        start). Such a layer waits: while its weight is all zero it passes W (= 0) on with sigma 0,
        and a gradient as if sigma were 1 (W / eps's would be 1e12 x the upstream one); at the first
        forward that finds it nonzero, the 15 iterations of registration run from the random u, v
        kept, and the layer is normalized from then on. After a load_state_dict the first forward
        looks once: a zero weight waits, a nonzero one goes on from the loaded u, v (warmed up only
        where they had collapsed to 0). Returns the output while waiting, else None. One host read
        of `any` a forward while waiting."""
        if bool(weight.detach().any()):
            warm_up = self._waiting is True
            for buf in ("_u", "_v"):  # vectors that collapsed on a zero weight (another spectral norm's)
                if not bool(self._buffers[buf].any()):
                    self._buffers[buf].normal_(0, 1)
                    self._buffers[buf].div_(torch.linalg.vector_norm(self._buffers[buf]))
                    warm_up = True
            if warm_up:
                self._warm_up(weight)
            object.__setattr__(self, "_waiting", False)
            return None
        object.__setattr__(self, "_waiting", True)
        self._sigma.zero_()
        return weight.clone()

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        object.__setattr__(self, "_waiting", None)  # the loaded weight is looked at on the next forward

    def _apply(self, fn, recurse=True):
        # model.half() / .to(bfloat16) must not round u, v and sigma: keep them fp32.
        super()._apply(fn, recurse)
        for name in ("_u", "_v", "_sigma"):
            t = getattr(self, name, None)
            if t is not None and t.dtype in (torch.float16, torch.bfloat16):
                setattr(self, name, t.float())
        return self

    def _compute(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:  # a vector: its norm is its spectral norm, nothing to approximate
            out = F.normalize(weight, dim=0, eps=self.eps)
            with torch.no_grad():
                w = weight.detach()
                self._sigma.copy_(torch.linalg.vector_norm(w) if w.is_complex()
                                  else torch.linalg.vector_norm(w, dtype=self._sigma.dtype))
            return out
        if self._waiting is not False:
            out = self._start_when_nonzero(weight)
            if out is not None:
                return out
        n_iter = self.n_power_iterations if self.training else 0
        b = self._buffers  # nn.Module.__getattr__ costs ~1 us a read
        return _ops.spectral_norm_update(weight, b["_u"], b["_v"], b["_sigma"], self.dim, n_iter, self.eps)

    def _set_step(self, in_step: bool, cache: torch.Tensor | None = None) -> None:
        # plain attributes (no parameter, buffer or submodule): object.__setattr__ skips
        # nn.Module.__setattr__'s registry checks, which cost ~4 us a call and sn_step runs every step
        object.__setattr__(self, "_in_step", in_step)
        object.__setattr__(self, "_step_cache", cache)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self._in_step:  # inside sn_step: once per step, the cached tensor stays in the graph
            if self._step_cache is None:
                self._set_step(True, self._compute(weight))
            return self._step_cache
        return self._compute(weight)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_power_iterations={self.n_power_iterations}, eps={self.eps}"


def _calls_forward_directly(m: nn.Module) -> bool:
    """True when m(x) would be m.forward(x) outside torch.jit.trace: nn.Module.__call__'s own test (no
    hooks of m, no global module hooks, not compiled with m.compile())."""
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or _module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks
                or _module_hooks._global_backward_hooks or _module_hooks._global_backward_pre_hooks
                or m._compiled_call_impl is not None)


def _install_getter(cls: type, tensor_name: str) -> None:
    """Replace the property that parametrize put on the parametrized module's class (one class per
    module) for `tensor_name` by one that, while our SpectralNorm is the tensor's only
    parametrization, calls its forward on the original directly. That is what parametrize's getter
    does through the ParametrizationList's and the SpectralNorm's nn.Module.__call__, its indexing
    and a hasattr that raises: 11 us of Python a read, paid at each use of the weight (in sn_step 12
    times a step of an MLP GAN with R1). Anything else (a stacked parametrization, parametrize.cached(),
    hooks, torch.jit.trace, torch.compile) goes to parametrize's getter."""
    parametrized = getattr(cls, tensor_name)

    def get(module):
        plist = module._modules["parametrizations"]._modules[tensor_name]
        if len(plist._modules) == 1 and not parametrize._cache_enabled and not torch.compiler.is_compiling():
            p = plist._modules["0"]
            original = plist._parameters.get("original")
            if (type(p) is SpectralNorm and original is not None and torch._C._get_tracing_state() is None
                    and _calls_forward_directly(plist) and _calls_forward_directly(p)):
                return p.forward(original)
        return parametrized.fget(module)

    setattr(cls, tensor_name, property(get, parametrized.fset))


def _find(module: nn.Module, name: str) -> SpectralNorm | None:
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, SpectralNorm):
            return p
    return None


def _load_old_format_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Renames the keys of torch.nn.utils.spectral_norm (weight_orig, weight_u, weight_v) to ours.
    A tensor whose ganfast parametrization is gone (removed with torch's remove_parametrizations,
    say) is left alone: load_state_dict then reports the keys missing/unexpected, as torch does."""
    for name in getattr(module, "_ganfast_sn_names", ()):
        old = prefix + name + "_orig"
        if old not in state_dict or _find(module, name) is None:
            continue
        new = f"{prefix}parametrizations.{name}."
        idx = next(i for i, p in enumerate(module.parametrizations[name]) if isinstance(p, SpectralNorm))
        state_dict[new + "original"] = state_dict.pop(old)
        for vec in ("u", "v"):
            key = f"{prefix}{name}_{vec}"
            if key in state_dict:
                state_dict[f"{new}{idx}._{vec}"] = state_dict.pop(key)
        state_dict.pop(prefix + name, None)  # very old checkpoints also stored W / sigma itself


def spectral_norm(module: nn.Module, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12,
                  dim: int | None = None) -> nn.Module:
    """Normalize `module.<name>` by its spectral norm (see torch.nn.utils.parametrizations.spectral_norm)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"spectral_norm expects an nn.Module, got {type(module).__name__}")
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"Module '{type(module).__name__}' has no parameter or buffer with name '{name}'")
    if hasattr(module, name + "_orig"):
        raise ValueError(f"'{name}' of {type(module).__name__} is already spectral-normalized by "
                         f"torch.nn.utils.spectral_norm (the old hook-based one); remove that one first")
    if dim is None:
        dim = 1 if isinstance(module, CONV_TRANSPOSE) else 0
    # Registered on a normalized weight, this stacks a second normalization, as PyTorch's does.
    parametrize.register_parametrization(module, name, SpectralNorm(weight, n_power_iterations, dim, eps))
    _track(module, name)
    return module


def _track(module: nn.Module, name: str) -> None:
    """After ganfast's SpectralNorm joined module.parametrizations[name]: the direct property getter
    (while it is the only parametrization) and the loading of torch's old-format keys."""
    if len(module.parametrizations[name]) == 1:
        _install_getter(type(module), name)
    if not hasattr(module, "_ganfast_sn_names"):
        module._ganfast_sn_names = []
        module._register_load_state_dict_pre_hook(_load_old_format_hook, with_module=True)
    if name not in module._ganfast_sn_names:
        module._ganfast_sn_names.append(name)


def _continue_from(ours: SpectralNorm, u: torch.Tensor | None, v: torch.Tensor | None) -> SpectralNorm:
    """`ours` with another spectral norm's u and v (None for a 1-D weight, which has none): the same
    power iteration goes on."""
    with torch.no_grad():
        for buf, theirs in (("_u", u), ("_v", v)):
            if theirs is not None:
                ours._buffers[buf].copy_(theirs)
    return ours


def replace_torch_spectral_norm(module: nn.Module, hook_based: bool = True) -> None:
    """Replace PyTorch's spectral norms on `module`'s own tensors by ganfast's, with their settings
    (dim, n_power_iterations, eps) and u, v, so that the numbers go on as they were:
    torch.nn.utils.parametrizations.spectral_norm in place in its ParametrizationList (the original
    Parameter and the state_dict keys stay the same), and, with `hook_based`, the old hook-based
    torch.nn.utils.spectral_norm by a parametrization on its `<name>_orig` Parameter (the same
    object: optimizers keep it; its state_dicts still load, with their old keys, but the module's own
    state_dict then has the parametrization's keys). The hook-based one updates v before u in its
    power iteration, ganfast (as the parametrization) u first: from its u, v the iteration converges
    to the same sigma, but its steps are not the same numbers."""
    plists = module._modules.get("parametrizations")
    for name, plist in (plists.items() if isinstance(plists, nn.ModuleDict) else ()):
        for i, p in enumerate(plist):
            if isinstance(p, torch.nn.utils.parametrizations._SpectralNorm):
                ours = SpectralNorm(plist.original, p.n_power_iterations if plist.original.ndim > 1 else 1,
                                    p.dim, p.eps)
                plist[i] = _continue_from(ours, getattr(p, "_u", None), getattr(p, "_v", None)).train(p.training)
                _track(module, name)
    if not hook_based:
        return
    old_style = sys.modules["torch.nn.utils.spectral_norm"]
    for hook in [h for h in module._forward_pre_hooks.values() if isinstance(h, old_style.SpectralNorm)]:
        name = hook.name
        original = module._parameters[name + "_orig"]
        u, v = module._buffers[name + "_u"], module._buffers[name + "_v"]
        torch.nn.utils.remove_spectral_norm(module, name)  # its hooks; `name` becomes a new Parameter W / sigma
        module.register_parameter(name, original)  # the weight before normalization, the same object
        spectral_norm(module, name, hook.n_power_iterations, hook.eps, hook.dim)
        _continue_from(_find(module, name), u, v)


def remove_spectral_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Bake W / sigma into a plain parameter (with the stored u, v: no power iteration). Removes every
    parametrization of `name`, stacked ones included, as torch's remove_parametrizations does."""
    if _find(module, name) is None:
        raise ValueError(f"'{name}' of {type(module).__name__} is not spectral-normalized by ganfast")
    layers = [p for p in module.parametrizations[name] if isinstance(p, SpectralNorm)]
    training = [p.training for p in layers]
    for p in layers:
        p.eval()
    try:
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    finally:
        for p, mode in zip(layers, training):
            p.train(mode)
    return module


def apply_spectral_norm(model: nn.Module, types=DEFAULT_TYPES, name: str = "weight", n_power_iterations: int = 1,
                        eps: float = 1e-12) -> nn.Module:
    """Spectral-normalize every submodule of `types` not yet normalized, after replacing PyTorch's
    spectral norms anywhere in the model by ganfast's (replace_torch_spectral_norm: same settings,
    u, v and Parameters); returns the model."""
    for m in list(model.modules()):
        replace_torch_spectral_norm(m)
    targets = [m for m in model.modules() if isinstance(m, tuple(types)) and _find(m, name) is None]
    for m in targets:
        spectral_norm(m, name, n_power_iterations, eps)
    return model


# sn_step and spectral_norms run every step; walking the model's modules costs ~1 us a module. The
# layers found are cached per model and dropped whenever any module anywhere registers a submodule or
# a parameter (PyTorch's global registration hooks: register_parametrization, add_module,
# `model.x = module` and remove_parametrizations all pass there). A layer dropped without one (`del
# model.x`) stays listed until the next: sn_step(multi_tensor=True) then also normalizes that orphan,
# whose result nothing uses (the model's numbers do not change), and spectral_norms reports it.
_layers_cache: "weakref.WeakKeyDictionary[nn.Module, tuple[int, list]]" = weakref.WeakKeyDictionary()
_generation = 0
_registration_hooks = None


def _invalidate(*_args) -> None:
    global _generation
    _generation += 1


def _sn_layers(model: nn.Module) -> list:
    """[(name, SpectralNorm, its ParametrizationList)] of every normalized tensor of `model` (cached)."""
    global _registration_hooks
    if _registration_hooks is None:
        _registration_hooks = (register_module_module_registration_hook(_invalidate),
                               register_module_parameter_registration_hook(_invalidate))
    cached = _layers_cache.get(model)
    if cached is not None and cached[0] == _generation:
        return cached[1]
    layers = []
    for mod_name, m in model.named_modules():
        # parametrize.is_parametrized(m), read from m._modules: nn.Module.__getattr__ is slow
        plists = m._modules.get("parametrizations")
        if isinstance(plists, nn.ModuleDict):
            for tensor_name, plist in plists.items():
                for p in plist:
                    if isinstance(p, SpectralNorm):
                        layers.append((mod_name if tensor_name == "weight" else f"{mod_name}.{tensor_name}", p, plist))
    _layers_cache[model] = (_generation, layers)
    return layers


def spectral_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name -> sigma of its last forward (0-dim tensor, no computation, no host sync)."""
    return {name: p._buffers["_sigma"].detach().clone() for name, p, _ in _sn_layers(model)}


def sigma_extremes(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(max, min) over the layers of the sigma of their last forward, as 0-dim device tensors (three
    ops, no host sync; a training step's monitoring reads them), or None without normalized layers."""
    sigmas = [p._buffers["_sigma"] for _, p, _ in _sn_layers(model)]
    if not sigmas:
        return None
    dtype = sigmas[0].dtype
    if any(s.dtype != dtype for s in sigmas):  # float64 and float32 layers in one model
        dtype = functools.reduce(torch.promote_types, (s.dtype for s in sigmas))
        sigmas = [s.to(dtype) for s in sigmas]
    stacked = torch.stack(sigmas)
    return stacked.max(), stacked.min()


def _precompute_multi(entries) -> None:
    """W / sigma of every layer that a multi-tensor kernel can take, in one call per (backend, n_iter,
    eps) group, which also writes u, v and sigma back (spectral_norm_multi_update); the results become
    the layers' step caches. Tensors are read from _parameters / _buffers:
    nn.Module.__getattr__ costs ~1 us a read, and this runs twice a training step."""
    groups: dict[tuple[str, int, float], list] = {}
    for p, plist in entries:
        w = plist._parameters.get("original")
        if w is None:
            w = plist.original  # an original registered as a buffer
        if plist._modules["0"] is not p or w.ndim < 2 or p._waiting is not False:
            continue  # computed lazily on first use, one layer at a time
        backend = backends.backend_for(_ops.FAMILY, w)
        if backend not in _ops.MULTI_BACKENDS or (backend == "cuda" and not _ops.has_cuda_multi()):
            continue
        groups.setdefault((backend, p.n_power_iterations if p.training else 0, p.eps), []).append((p, w))
    for (backend, n_iter, eps), items in groups.items():
        layers = [p for p, _ in items]
        bufs = [p._buffers for p in layers]
        us, vs = [b["_u"] for b in bufs], [b["_v"] for b in bufs]
        outs = _ops.spectral_norm_multi_update([w for _, w in items], us, vs, [b["_sigma"] for b in bufs],
                                               [p.dim for p in layers], n_iter, eps, backend)
        for p, out in zip(layers, outs):
            p._set_step(True, out)


@contextlib.contextmanager
def sn_step(model: nn.Module, multi_tensor: bool = False):
    """Inside, each normalized layer of `model` computes W / sigma (and updates u, v) once, however
    often the model is called; every use shares that tensor, so gradients accumulate into the
    original weight. Leaving the block drops the cached weights.

    multi_tensor=True computes every layer on entry in one call of the multi-tensor kernel of its
    backend (CPU: one parallel loop per phase over all layers; CUDA and Triton: one launch per phase
    for all layers; one fused backward); layers on the reference, 1-D weights and stacked
    parametrizations stay lazy. On entry means layers unused in the step are updated too.
    As with parametrize.cached(), call backward once per step (sum the losses), or retain_graph=True.
    """
    entries = [(p, plist) for _, p, plist in _sn_layers(model)]
    for p, _ in entries:
        p._set_step(True)
    try:
        if multi_tensor:
            _precompute_multi(entries)
        yield model
    finally:
        for p, _ in entries:
            p._set_step(False)
