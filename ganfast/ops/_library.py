"""The ganfast:: op library: every schema is defined here in Python (one place), the C++/CUDA
kernels of ganfast._C register themselves against these schemas when the extension loads, and the
Triton ops get their Python implementations registered here too.

An op family defines, for one fused kernel:
  ganfast::<name>_fused         C++ (CPU) and CUDA kernels; fake (meta) kernel registered here
  ganfast::<name>               its autograd wrapper, in C++ (csrc/<name>.cpp): backward rescales
                                the gradients the fused forward saved
  ganfast::<name>_fused_triton  the Triton kernel, same schema; autograd registered here in Python

Which backend runs is decided once per op family, in the `dispatch_*` function of its module
(ganfast/ops/<family>.py), by the rule of ganfast.backends; the public modules only check inputs.

The autograd rule, the same for every family: the fused forward computes everything its backward
needs (the loss's or the penalty's gradient w.r.t. its input; spectral norm's u', v' and sigma), and
the backward is a rescale by grad_output (losses, penalties; none when grad_output is a plain CPU 1
and no graph is built: the saved gradient is passed on, csrc/autograd.h) or one more fused kernel
(spectral norm's dW). Where that autograd is written follows one rule: ops with C++/CUDA kernels that run on
every step, once per call site, have C++ autograd; ops whose launcher is Python have Python autograd.
- C++ autograd: gan_loss and grad_penalty (a wrapper op ganfast::<name>, csrc/<name>.cpp, whose
  backward rescales the gradients the fused forward saved), spectral_norm_fused and
  spectral_norm_multi (Autograd kernels on the ops themselves, csrc/spectral_norm.cpp). At GAN sizes
  only dispatch and autograd are left in these calls: with Python autograd (register_autograd) a
  d_loss fwd+bwd at B = 64 measured 172 us vs 101 us, a spectral norm fwd+bwd of a 16x64 weight
  113 us vs 91 us (30 us of kernels), and the multi-tensor forward of 3 small layers 115 us vs 25 us;
  its Python objects also set off garbage collections, which made the multi-tensor op slower than
  three single-layer calls on large layers too (0.3-0.4 ms of a 2 ms forward).
- Three entries skip torch.ops for plain eager tensors, calling the op's C++ autograd function
  directly: ganfast._C.gan_loss_eager (2.5 of a 5 us forward at B = 64 is the torch.ops layer:
  OpOverload, argument parsing, the boxed call), and for spectral norm's update of a layer's weight,
  which also copies u', v' and sigma into its buffers (no boxing, no second Python call),
  ganfast._C.spectral_norm_eager (a normalized module's weight) and spectral_norm_multi_eager
  (sn_step's update of every layer). They return None for anything that needs the dispatcher
  (subclasses, modes, functorch, tracing, autocast, inference mode), which then calls the op.
- Python autograd: the Triton kernels (register_autograd on *_triton), whose launcher is Python
  anyway, so a C++ wrapper would call back into it; and the ops called once or twice per step or
  off the backward path, where a few tens of us are below 1% of the step: DiffAugment (one call per
  D input) and gp_interpolate (on detached data).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

LIBRARY = torch.library.Library("ganfast", "DEF")


def define_fused(name: str, schema: str, fake: Callable, triton_impl: Callable,
                 setup_context: Callable, backward: Callable, wrapper_schema: str) -> None:
    """Define the ops of one fused kernel (see the module docstring)."""
    LIBRARY.define(f"{name}_fused{schema}")
    LIBRARY.define(f"{name}{wrapper_schema}")
    LIBRARY.define(f"{name}_fused_triton{schema}")
    torch.library.register_fake(f"ganfast::{name}_fused", fake, lib=LIBRARY)
    torch.library.register_fake(f"ganfast::{name}_fused_triton", fake, lib=LIBRARY)
    for device in ("CPU", "CUDA"):  # CPU: under TRITON_INTERPRET=1
        LIBRARY.impl(f"{name}_fused_triton", triton_impl, device)
    torch.library.register_autograd(f"ganfast::{name}_fused_triton", backward, setup_context=setup_context,
                                    lib=LIBRARY)


def define_forward_backward(forward: str, forward_schema: str, forward_fake: Callable, backward: str,
                            backward_schema: str, backward_fake: Callable, triton_forward: Callable,
                            triton_backward: Callable) -> None:
    """Define a forward op and its backward op, each with a Triton twin (<name>_triton, the same
    schema): the fakes of all four, the Triton implementations on CPU (under TRITON_INTERPRET=1) and
    CUDA. The C++/CUDA kernels of the plain ops register themselves from ganfast._C; the autograd
    registration is the family's."""
    for suffix in ("", "_triton"):
        LIBRARY.define(f"{forward}{suffix}{forward_schema}")
        LIBRARY.define(f"{backward}{suffix}{backward_schema}")
        torch.library.register_fake(f"ganfast::{forward}{suffix}", forward_fake, lib=LIBRARY)
        torch.library.register_fake(f"ganfast::{backward}{suffix}", backward_fake, lib=LIBRARY)
    for device in ("CPU", "CUDA"):
        LIBRARY.impl(f"{forward}_triton", triton_forward, device)
        LIBRARY.impl(f"{backward}_triton", triton_backward, device)


def ganfast_ops() -> Sequence[str]:
    """Qualified names of every ganfast:: op defined so far."""
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("ganfast::"))
