"""The scenarios of PyTorch's own spectral-norm tests, written anew for ganfast.

Each test names the PyTorch test it mirrors (test/nn/test_parametrization.py: test_new_spectral_norm*;
test/test_stateless.py: the spectral-norm cases) and keeps its tolerances: torch's assertEqual
defaults, which are torch.testing.assert_close's, and gradcheck's defaults. Every test runs against
ganfast.nn.spectral_norm on each backend (selected explicitly) and against torch's own
torch.nn.utils.parametrizations.spectral_norm as a control, so that no test encodes a behaviour of
ganfast alone. Removal always uses torch's parametrize.remove_parametrizations, as a user would.
"""
import contextlib
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import ganfast
from ganfast import backends

from ..conftest import kernel_backends


@dataclasses.dataclass(frozen=True)
class Impl:
    name: str  # "torch", or the ganfast backend
    device: torch.device

    def spectral_norm(self, module, name="weight", **kw):
        fn = parametrizations.spectral_norm if self.name == "torch" else ganfast.nn.spectral_norm
        return fn(module, name, **kw)

    def takes(self, dtype: torch.dtype) -> bool:
        return self.name == "torch" or dtype in backends.TAKES[self.name]["spectral_norm"]

    def need(self, dtype: torch.dtype) -> None:
        if not self.takes(dtype):
            pytest.skip(f"backend {self.name!r} takes no {dtype} for spectral_norm (under 'auto' such weights fall "
                        f"through to a backend that does: tests/test_backends.py)")


IMPLS = [("torch", "cpu"), ("reference", "cpu")] + kernel_backends()


@pytest.fixture(params=IMPLS, ids=lambda p: p[0] if p[0] in ("torch", "reference") else f"{p[0]}-{p[1]}")
def impl(request):
    name, device = request.param
    selection = contextlib.nullcontext() if name == "torch" else ganfast.use_backend(name)
    with selection:
        yield Impl(name, torch.device(device))


def close(actual, expected):
    """torch's assertEqual for tensors: assert_close with the default tolerances of the dtype."""
    torch.testing.assert_close(actual, expected)


# --- test_new_spectral_norm -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_registration_stacking_and_removal(impl, dtype):
    """test_new_spectral_norm, its first half: what registration creates, stacking two spectral norms
    on one parameter and one on the bias, and removing them one tensor at a time. (PyTorch runs it
    in double; float32 too, so that backends without float64 run it.)"""
    impl.need(dtype)
    torch.manual_seed(0)
    m = impl.spectral_norm(nn.Linear(5, 7, device=impl.device, dtype=dtype))
    sn = m.parametrizations.weight[0]
    assert sn._u.shape == (m.weight.shape[0],)
    assert "original" in m.parametrizations.weight._parameters  # the trainable tensor
    assert "_u" in sn._buffers and "_v" in sn._buffers
    assert "weight" not in m._buffers and "weight" not in m._parameters  # a computed attribute
    original = m.parametrizations.weight.original
    assert original.shape == m.weight.shape and original.stride() == m.weight.stride()

    m = parametrize.remove_parametrizations(m, "weight")
    assert not hasattr(m, "parametrizations") and "weight" in m._parameters

    # twice on the same parameter (the second normalizes the first's output), once on the bias
    m = impl.spectral_norm(m, "weight")
    m = impl.spectral_norm(m, "weight")
    m = impl.spectral_norm(m, "bias")
    assert len(m.parametrizations.weight) == 2 and len(m.parametrizations.bias) == 1
    x = torch.randn(3, 5, device=impl.device, dtype=dtype)
    m(x).sum().backward()
    assert torch.isfinite(m.parametrizations.weight.original.grad).all()
    # sigma of W / sigma is 1: the stacked one leaves it (nearly) unchanged, and the bias has norm 1
    assert torch.linalg.matrix_norm(m.weight.detach(), ord=2).item() == pytest.approx(1.0, rel=1e-3)
    assert torch.linalg.vector_norm(m.bias.detach()).item() == pytest.approx(1.0, rel=1e-5)

    m = parametrize.remove_parametrizations(m, "bias")  # the bias alone: weight stays parametrized
    assert "bias" in m._parameters and hasattr(m, "parametrizations") and "weight" not in m._parameters
    m = parametrize.remove_parametrizations(m, "weight")
    assert not hasattr(m, "parametrizations") and "weight" in m._parameters
    assert not parametrize.is_parametrized(m)


def test_stacked_values_match_torch(impl):
    """test_new_spectral_norm: the stacked registration computes what torch's computes, from the same
    random draws (u, v of both layers, the weight after a training step)."""
    dtype = torch.float64 if impl.takes(torch.float64) else torch.float32

    def build(spectral_norm):
        torch.manual_seed(3)
        m = nn.Linear(6, 4, device=impl.device, dtype=dtype)
        return spectral_norm(spectral_norm(m))

    ours = build(impl.spectral_norm)
    theirs = build(parametrizations.spectral_norm)
    x = torch.randn(2, 6, device=impl.device, dtype=dtype)
    for m in (ours, theirs):
        m(x).square().sum().backward()
        with torch.no_grad():
            m.parametrizations.weight.original -= 0.1 * m.parametrizations.weight.original.grad
    close(ours(x), theirs(x))
    for i in range(2):
        close(ours.parametrizations.weight[i]._u, theirs.parametrizations.weight[i]._u)
        close(ours.parametrizations.weight[i]._v, theirs.parametrizations.weight[i]._v)


def _linear(impl, dtype, requires_grad):
    """get_modules of test_new_spectral_norm: a normalized Linear(3, 4), weight frozen or not."""
    m = nn.Linear(3, 4, device=impl.device, dtype=dtype)
    m.weight.requires_grad_(requires_grad)
    m = impl.spectral_norm(m)
    return m, m.parametrizations.weight[0]


@pytest.mark.parametrize("requires_grad", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_training_updates_u_and_v(impl, dtype, requires_grad):
    """test_new_spectral_norm, "TEST TRAINING BEHAVIOR": a forward in training mode updates u and v,
    the gradient reaches the original weight, and two forwards in one graph differentiate (gradcheck
    of a function that resets u and v first, in double)."""
    impl.need(dtype)
    torch.manual_seed(1)
    m, sn = _linear(impl, dtype, requires_grad)
    x = torch.randn(2, 3, device=impl.device, dtype=dtype)
    u0, v0 = sn._u.clone(), sn._v.clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    opt.zero_grad()
    m(x).sum().backward()
    opt.step()
    out = m(x)
    if requires_grad:  # the weight moved, so the iteration moves u and v
        assert not torch.equal(u0, sn._u) and not torch.equal(v0, sn._v)
        (g,) = torch.autograd.grad(out.sum(), m.parametrizations.weight.original)
        assert torch.isfinite(g).all()

    saved_u, saved_v = sn._u.clone(), sn._v.clone()

    def two_forwards(inp):
        sn._u.data.copy_(saved_u)
        sn._v.data.copy_(saved_v)
        return m(inp) + m(inp)

    two_forwards(x.clone().requires_grad_()).sum().backward()  # gradients of every parameter
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(two_forwards, (x.clone().requires_grad_(),), check_batched_grad=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_removal_keeps_the_output(impl, dtype):
    """test_new_spectral_norm, "test removing": removed in eval mode (no further iteration), the plain
    weight gives the output of the last forward; again after re-registering and three forwards."""
    impl.need(dtype)
    torch.manual_seed(2)
    m, _ = _linear(impl, dtype, True)
    x = torch.randn(2, 3, device=impl.device, dtype=dtype)
    before = m(x).detach()
    m.eval()
    m = parametrize.remove_parametrizations(m, "weight")
    close(m(x), before)

    impl.spectral_norm(m)
    for _ in range(3):
        before = m(x).detach()
    m.eval()
    m = parametrize.remove_parametrizations(m, "weight")
    close(m(x), before)


@pytest.mark.parametrize("requires_grad", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_eval_mode(impl, dtype, requires_grad):
    """test_new_spectral_norm, "TEST EVAL BEHAVIOR": eval gives the last training output and leaves u
    and v alone; gradcheck (double) through mixed train/eval forwards, and w.r.t. the original
    weight in eval mode."""
    impl.need(dtype)
    torch.manual_seed(4)
    m, sn = _linear(impl, dtype, requires_grad)
    x = torch.randn(2, 3, device=impl.device, dtype=dtype)
    m(x)
    last_train_out = m(x)
    last_u, last_v = sn._u.clone(), sn._v.clone()
    m.zero_grad()
    m.eval()
    eval_out = m(x)
    close(eval_out, last_train_out)
    close(m(x), eval_out)
    close(sn._u, last_u)
    close(sn._v, last_v)
    if dtype != torch.float64:
        return

    saved_u, saved_v = sn._u.clone(), sn._v.clone()

    def mixed_modes(inp):
        sn._u.data.copy_(saved_u)
        sn._v.data.copy_(saved_v)
        outs = []
        for training in (True, False, True, False):
            m.train(training)
            outs.append(m(inp))
        return sum(outs)

    assert torch.autograd.gradcheck(mixed_modes, (x.clone().requires_grad_(),))
    if requires_grad:  # m is left in eval mode: the function of the weight is fixed
        assert torch.autograd.gradcheck(lambda w: m(x), (m.parametrizations.weight.original,))


# --- test_new_spectral_norm_load_state_dict --------------------------------------------------------

@pytest.mark.parametrize("activate_times", [0, 3])
def test_load_state_dict(impl, activate_times):
    """test_new_spectral_norm_load_state_dict: the keys; non-strict loading with keys extra or missing
    (and without the parametrization's metadata); strict loading into a module re-registered after
    removal reproduces the outputs of eval/train/train/eval."""
    torch.manual_seed(5)
    x = torch.randn(2, 3, device=impl.device)
    m = impl.spectral_norm(nn.Linear(3, 5, device=impl.device))
    m.train()
    for _ in range(activate_times):
        m(x)
    state = copy.deepcopy(m.state_dict())
    assert set(state) == {"parametrizations.weight.original", "bias", "parametrizations.weight.0._u",
                          "parametrizations.weight.0._v"}

    loose = copy.deepcopy(state)
    loose["nonsense"] = "nonsense"
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "nonsense"'):
        m.load_state_dict(loose, strict=True)
    m.load_state_dict(loose, strict=False)
    for key in ("parametrizations.weight.original", "parametrizations.weight.0._u", "parametrizations.weight.0._v"):
        del loose[key]
        m.load_state_dict(loose, strict=False)
    loose["weight"] = m.weight.detach().clone()  # W / sigma under its plain name, as an extra key
    m.load_state_dict(loose, strict=False)
    del loose._metadata["parametrizations.weight.0"]
    m.load_state_dict(loose, strict=False)
    del loose["weight"]
    m.load_state_dict(loose, strict=False)
    del loose["bias"]
    m.load_state_dict(loose, strict=False)

    def outputs_after_loading(module):
        module = impl.spectral_norm(parametrize.remove_parametrizations(module, "weight"))  # re-wrapped
        module.load_state_dict(state)
        outs = []
        with torch.no_grad():
            for training in (False, True, True, False):
                module.train(training)
                outs.append(module(x))
        return module, outs

    m, first = outputs_after_loading(m)
    m, second = outputs_after_loading(m)
    for a, b in zip(second, first):
        close(a, b)


def test_load_state_dict_across_implementations(impl):
    """The state dict of torch's spectral norm loads strictly into this implementation and gives
    torch's outputs (the keys and their meaning are the same)."""
    torch.manual_seed(6)
    theirs = parametrizations.spectral_norm(nn.Linear(3, 5, device=impl.device))
    x = torch.randn(2, 3, device=impl.device)
    theirs(x)
    ours = impl.spectral_norm(nn.Linear(3, 5, device=impl.device))
    ours.load_state_dict(theirs.state_dict())
    for training in (False, True, False):
        ours.train(training)
        theirs.train(training)
        close(ours(x), theirs(x))


def test_old_format_after_torch_removal(impl):
    """A state dict of the old hook-based torch.nn.utils.spectral_norm (weight_orig, weight_u,
    weight_v), loaded after the parametrization was removed with torch's remove_parametrizations:
    the keys are reported missing/unexpected (non-strict) or raise (strict), as with torch."""
    old = torch.nn.utils.spectral_norm(nn.Linear(3, 5))
    m = impl.spectral_norm(nn.Linear(3, 5, device=impl.device))
    m = parametrize.remove_parametrizations(m, "weight")
    result = m.load_state_dict(old.state_dict(), strict=False)
    assert set(result.missing_keys) == {"weight"}
    assert set(result.unexpected_keys) == {"weight_orig", "weight_u", "weight_v"}
    with pytest.raises(RuntimeError, match="Missing key"):
        m.load_state_dict(old.state_dict())


# --- test_new_spectral_norm_dim, _forward, _value --------------------------------------------------

def test_dim_of_conv_transpose(impl):
    """test_new_spectral_norm_dim: a ConvTranspose2d is normalized along dim 1 (its output channels),
    so u has the length of that dimension and the forward runs."""
    torch.manual_seed(7)
    m = impl.spectral_norm(nn.ConvTranspose2d(3, 4, (5, 6), device=impl.device))
    m(torch.randn(2, 3, 10, 12, device=impl.device))
    assert m.parametrizations.weight[0]._u.shape == m.parametrizations.weight.original[0, :, 0, 0].shape


def test_forward_values(impl):
    """test_new_spectral_norm_forward: the module's output equals a linear layer with the weight
    divided by u^T W v after one power iteration from the stored v, computed by hand."""
    torch.manual_seed(8)
    m = impl.spectral_norm(nn.Linear(5, 7, device=impl.device))
    x = torch.randn(3, 5, device=impl.device)
    w = m.parametrizations.weight.original.detach()
    u = F.normalize(w @ m.parametrizations.weight[0]._v, dim=0, eps=1e-12)
    v = F.normalize(w.t() @ u, dim=0, eps=1e-12)
    expected = F.linear(x, w / torch.dot(u, w @ v), m.bias)
    close(m(x), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64], ids=str)
def test_value_of_diagonal_weight(impl, dtype):
    """test_new_spectral_norm_value: a diagonal weight is divided by its largest |entry| (its top
    singular value), real and complex. A backend that takes no complex weights says so when selected
    by name, and 'auto' sends complex weights to one that does."""
    # PyTorch's test seeds every test (common_utils.TestCase.setUp). The 16 power iterations converge
    # as (d_2 / d_1)^32: with a random diagonal they can leave sigma 0.2 % off (seen on a GPU, where the
    # draws differ), so the diagonal is drawn with |d_2| <= |d_1| / 2.
    torch.manual_seed(9)
    m = nn.Linear(2, 2, device=impl.device, dtype=dtype)
    with torch.no_grad():
        d = torch.diagonal(m.weight) / torch.diagonal(m.weight).abs() * torch.tensor([0.4, 1.0], device=impl.device)
        m.weight = nn.Parameter(torch.diag(d.to(dtype)))
    expected = torch.diag(d / d.abs().max())
    if not impl.takes(dtype):
        with pytest.raises(backends.UnsupportedInputError, match=f"'{impl.name}' does not take complex64 tensors "
                                                                 f"for spectral_norm"):
            impl.spectral_norm(copy.deepcopy(m))
        with ganfast.use_backend("auto"):
            close(impl.spectral_norm(m).weight.data, expected)
    else:
        close(impl.spectral_norm(m).weight.data, expected)


# --- test_stateless: functional_call with the parametrization -------------------------------------

class _Mock(nn.Module):
    """test_stateless's MockModule: Linear(1, 1) plus a buffer, here with the linear normalized."""

    def __init__(self, impl):
        super().__init__()
        self.l1 = impl.spectral_norm(nn.Linear(1, 1, device=impl.device))
        self.buffer = nn.Buffer(torch.ones(1, device=impl.device))

    def forward(self, x):
        return self.l1(x) + self.buffer


FUNCTIONAL_CALLS = pytest.mark.parametrize(
    "functional_call", [torch.func.functional_call, torch.nn.utils.stateless.functional_call],
    ids=["torch_func", "stateless"])


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.stateless.functional_call` is deprecated:FutureWarning")
@FUNCTIONAL_CALLS
def test_functional_call_replaces_the_original(impl, functional_call):
    """test_reparametrized_module_change_parametrization_original: functional_call with a new
    original weight applies the parametrization to it (a 1x1 weight [[1]] normalizes to itself, so
    the module becomes the identity) and leaves the module's own weight as it was."""
    module = _Mock(impl)
    assert "l1.parametrizations.weight.original" in dict(module.named_parameters())
    before = module.l1.weight.clone()
    x = torch.rand(1, 1, device=impl.device)
    params = {"l1.parametrizations.weight.original": nn.Parameter(torch.tensor([[1.0]], device=impl.device)),
              "l1.bias": torch.tensor([0.0], device=impl.device), "buffer": torch.tensor([0.0], device=impl.device)}
    close(functional_call(module, params, x), x)
    assert "l1.parametrizations.weight.original" in dict(module.named_parameters())
    close(module.l1.weight, before)


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.stateless.functional_call` is deprecated:FutureWarning")
@FUNCTIONAL_CALLS
def test_functional_call_failure_restores_the_module(impl, functional_call):
    """test_reparametrize_module_fail_reset_to_original: a call that fails inside the forward (wrong
    input shape) still puts the module's own tensors back."""
    module = _Mock(impl)
    before = module.l1.weight.clone()
    params = {"l1.parametrizations.weight.original": nn.Parameter(torch.tensor([[1.0]], device=impl.device)),
              "l1.bias": torch.tensor([0.0], device=impl.device), "buffer": torch.tensor([0.0], device=impl.device)}
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        functional_call(module, params, torch.rand(4, 5, device=impl.device))
    assert "l1.parametrizations.weight.original" in dict(module.named_parameters())
    close(module.l1.weight, before)
