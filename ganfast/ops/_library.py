"""The ganfast:: op library: every schema is defined here in Python (one place), the C++/CUDA
kernels of ganfast._C register themselves against these schemas when the extension loads, and the
Triton ops get their Python implementations registered here too.

An op family defines, for one fused kernel:
  ganfast::<name>_fused         C++ (CPU) and CUDA kernels; fake (meta) kernel registered here
  ganfast::<name>               its autograd wrapper, in C++ (csrc/<name>.cpp): backward rescales
                                the gradients the fused forward saved
  ganfast::<name>_fused_triton  the Triton kernel, same schema; autograd registered here in Python
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


def ganfast_ops() -> Sequence[str]:
    """Qualified names of every ganfast:: op defined so far."""
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("ganfast::"))
