"""The vectorized CPU loss kernel on every capability copy this machine runs (default, avx2,
avx512): vector tails, chunk edges, denormals, ±inf and NaN, non-contiguous inputs, gradients with a
random upstream, determinism over thread counts, and the capability switch itself."""
import os
import subprocess
import sys

import pytest
import torch

import ganfast
from ganfast import losses
from ganfast.reference import losses as reference
from ganfast.validate import relative_error

from ..cpu_paths import CAPABILITIES, cpu_capability
from .test_losses import check_against_reference, draw

KINDS = losses.KINDS
# every tail length of a 4-, 8- and 16-lane vector, block and chunk edges (vec_utils.h, parallel.h)
TAIL_SIZES = list(range(1, 18)) + [31, 33, 63, 65, 1023, 1025, 1041, 16383, 16385, 33000]


def cpu_loss(kind, r, f, generator=False, upstream=1.0):
    """loss and gradients of d_loss (g_loss) on the CPU backend."""
    r = r.detach().clone().requires_grad_()
    f = f.detach().clone().requires_grad_()
    with ganfast.use_backend("cpu"):
        if generator:
            loss = losses.g_loss(f, kind, real_logits=r if kind in losses.RELATIVISTIC else None)
        else:
            loss = losses.d_loss(r, f, kind)
    (loss * upstream).backward()
    return loss.detach(), r.grad, f.grad


@pytest.mark.parametrize("n", TAIL_SIZES)
def test_vector_tails(capability, n):
    for kind in KINDS:
        drawn = draw(kind, (n,), seed=n)
        check_against_reference(kind, drawn, torch.float32, "cpu", "cpu")
        check_against_reference(kind, drawn, torch.float32, "cpu", "cpu", generator=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_other_dtypes_tails(capability, dtype):
    for n in (1, 5, 17, 33, 1025):
        for kind in KINDS:
            drawn = draw(kind, (n,), seed=n + 1)
            check_against_reference(kind, drawn, dtype, "cpu", "cpu")
            check_against_reference(kind, drawn, dtype, "cpu", "cpu", generator=True)


def test_noncontiguous(capability):
    for kind in KINDS:
        drawn = draw(kind, (19, 3), seed=4, noncontiguous=True)
        check_against_reference(kind, drawn, torch.float32, "cpu", "cpu")
        check_against_reference(kind, drawn, torch.float32, "cpu", "cpu", generator=True)


def _compare_with_reference(kind, r, f, generator):
    """Loss and gradients against the float64 reference, non-finite positions included."""
    upstream = float(torch.empty(()).uniform_(0.5, 3.0))
    got = cpu_loss(kind, r, f, generator, upstream)
    r64, f64 = r.double().requires_grad_(), f.double().requires_grad_()
    if generator:
        want = reference.g_loss(f64, kind, r64 if kind in losses.RELATIVISTIC else None)
    else:
        want = reference.d_loss(r64, f64, kind)
    (want * upstream).backward()
    wanted = (want.detach(), r64.grad if r64.grad is not None else torch.zeros_like(r64), f64.grad)
    for name, a, b, x in zip(("loss", "grad_real", "grad_fake"), got, wanted, (None, r, f)):
        if a is None:  # a non-relativistic g_loss does not reach real
            continue
        if x is not None and (r.isnan().any() or f.isnan().any()):
            # relu'(NaN) is arbitrary (torch passes the gradient, the kernels give 0), and in rahinge
            # a NaN mean makes every term NaN: compare hinge gradients away from NaN logits only
            if "hinge" in kind:
                continue
            a, b = a[~x.isnan()], b[~x.isnan()]
        err = relative_error(a, b)
        assert err <= 1e-5, f"{kind} {'g' if generator else 'd'}: {name} error {err} ({a} vs {b})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_counts_of_the_stats_are_exact(capability, dtype):
    """real_acc (r > 0) and fake_acc (f < 0) are counted exactly (compare + popcount in the vector
    copies, lane sums in the scalar one): ±0, NaN, ±inf and denormals count as their comparisons say,
    in vector bodies, tails, blocks and chunks, for plain, paired (rpgan) and relativistic kinds."""
    tiny = torch.finfo(torch.float32).tiny
    specials = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), tiny * 1e-3, -tiny * 1e-3])
    for n in (5, 17, 1025, 33001):
        g = torch.Generator().manual_seed(n)
        r, f = torch.randn(n, generator=g), torch.randn(n, generator=g)
        r[::7] = specials[torch.arange(0, n, 7) % 7]
        f[3::5] = specials[torch.arange(3, n, 5) % 7]
        r, f = r.to(dtype), f.to(dtype)
        want = {"real_acc": float(torch.tensor(int((r > 0).sum()) / n, dtype=torch.float32)),
                "fake_acc": float(torch.tensor(int((f < 0).sum()) / n, dtype=torch.float32))}
        for kind in KINDS:
            with ganfast.use_backend("cpu"):
                _, stats = losses.d_loss(r, f, kind, return_stats=True)
            for name, value in want.items():
                assert stats[name].item() == value, (kind, n, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_means_do_not_lose_digits_when_they_cancel(capability, dtype):
    """real_mean and fake_mean are summed in double, so a mean that cancels to a small fraction of its
    logits' magnitudes still comes out as the fp32 rounding of the exact mean; so does the wasserstein
    loss (a difference of two means) and each side's shift of the relativistic kinds. Float block sums
    were off by 3e-5 of a mean of 123 logits."""
    for n in (123, 1025, 33001, 100003):
        g = torch.Generator().manual_seed(n)
        r, f = 4 * torch.randn(n, generator=g, dtype=torch.float64), 4 * torch.randn(n, generator=g, dtype=torch.float64)
        r, f = (r - r.mean() + 1e-3).to(dtype), (f - f.mean() - 2e-3).to(dtype)  # means of 1e-3 against |x| ~ 4
        exact = {"real_mean": r.double().mean().item(), "fake_mean": f.double().mean().item()}
        for kind in KINDS:
            with ganfast.use_backend("cpu"):
                loss, stats = losses.d_loss(r, f, kind, return_stats=True)
            for name, value in exact.items():
                assert stats[name].item() == pytest.approx(value, rel=2 ** -23), (kind, n, name)
        want_loss = exact["fake_mean"] - exact["real_mean"]
        eps = torch.finfo(dtype).eps
        with ganfast.use_backend("cpu"):
            assert losses.d_loss(r, f, "wasserstein").item() == pytest.approx(want_loss, rel=2 * eps), n
            assert losses.g_loss(f, "wasserstein").item() == pytest.approx(-exact["fake_mean"], rel=2 * eps), n


def test_denormal_logits(capability):
    tiny = torch.finfo(torch.float32).tiny
    for n in (7, 16, 37):
        g = torch.Generator().manual_seed(n)
        # denormals of both signs, ±0, and the smallest normals, mixed with ordinary logits
        r = torch.randn(n, generator=g) * tiny * 0.01
        f = torch.randn(n, generator=g)
        f[::3] = tiny * 1e-3
        f[1::5] = -0.0
        r[2::4] = -tiny
        assert (r.abs() < tiny).any() and (r != 0).any()
        for kind in KINDS:
            _compare_with_reference(kind, r, f, generator=False)
            _compare_with_reference(kind, r, f, generator=True)


def test_extreme_logits(capability):
    # |x| where exp(-|x|) underflows to a denormal or to 0, in the vector body and in the tail
    r = torch.tensor([-88.5, 87.0, -104.0, 120.0, -30.0, 0.25, 95.0, -95.0, 17.0, -17.0, 88.0])
    f = torch.tensor([88.5, -87.0, 104.0, -120.0, 30.0, -0.25, -95.0, 95.0, -17.0, 17.0, -88.0])
    for kind in KINDS:
        _compare_with_reference(kind, r, f, generator=False)
        _compare_with_reference(kind, r, f, generator=True)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["+inf", "-inf", "nan"])
@pytest.mark.parametrize("where", [2, 20], ids=["body", "tail"])
def test_nonfinite_propagates_like_reference(capability, value, where):
    g = torch.Generator().manual_seed(where)
    r, f = torch.randn(21, generator=g), torch.randn(21, generator=g)
    for side in ("real", "fake"):
        rr, ff = r.clone(), f.clone()
        (rr if side == "real" else ff)[where] = value
        for kind in KINDS:
            _compare_with_reference(kind, rr, ff, generator=False)
            _compare_with_reference(kind, rr, ff, generator=True)


def test_capabilities_agree():
    """Every copy gives the same loss and gradients within float32 rounding."""
    g = torch.Generator().manual_seed(0)
    r, f = 3 * torch.randn(40_001, generator=g), 3 * torch.randn(40_001, generator=g)
    for kind in KINDS:
        results = {}
        for cap in CAPABILITIES:
            with cpu_capability(cap):
                results[cap] = cpu_loss(kind, r, f, upstream=2.5)
        first = results[CAPABILITIES[0]]
        for cap, res in results.items():
            for a, b in zip(first, res):
                assert relative_error(b, a) <= 1e-5, (kind, cap)


def test_deterministic_over_thread_counts(capability):
    g = torch.Generator().manual_seed(1)
    r, f = torch.randn(100_003, generator=g), torch.randn(100_003, generator=g)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append([cpu_loss(kind, r, f) for kind in KINDS])
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        for kind, a, b in zip(KINDS, runs[0], other):
            for x, y in zip(a, b):
                assert torch.equal(x, y), kind


@pytest.mark.parametrize("sizes", [(20_000, 9_000), (7, 40_000), (40_000, 7), (16_385, 1)], ids=str)
def test_unequal_sides(capability, sizes):
    """The two sides of a loss share one parallel region (chunked_sum_pair): sides of very different
    sizes, below and above a chunk, against the reference and over thread counts."""
    g = torch.Generator().manual_seed(sum(sizes))
    r64, f64 = (2 * torch.randn(n, generator=g, dtype=torch.float64) for n in sizes)
    threads = torch.get_num_threads()
    for kind in (k for k in KINDS if k != "rpgan"):  # rpgan pairs the logits: equal sizes only
        check_against_reference(kind, (r64, f64, lambda x: x), torch.float32, "cpu", "cpu")
        check_against_reference(kind, (r64, f64, lambda x: x), torch.float32, "cpu", "cpu", generator=True)
        try:
            runs = []
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                runs.append(cpu_loss(kind, r64.float(), f64.float()))
        finally:
            torch.set_num_threads(threads)
        for other in runs[1:]:
            assert all(torch.equal(x, y) for x, y in zip(runs[0], other)), kind


def test_kernels_run_on_several_threads():
    """at::parallel_for in ganfast._C must be the parallel one torch uses: with ATen's OpenMP
    backend, an extension compiled without -fopenmp gets a serial loop and no error."""
    if not CAPABILITIES:
        pytest.skip("no ganfast._C")
    info = torch.__config__.parallel_info()
    if "parallel backend: OpenMP" in info or "parallel backend: native thread pool" in info:
        assert torch.ops.ganfast_cpu.intra_op_parallel()


def test_set_capability_rejects_unknown_names():
    if not CAPABILITIES:
        pytest.skip("no ganfast._C")
    with pytest.raises(RuntimeError, match="unknown capability 'sse9'.*default, avx2, avx512"):
        torch.ops.ganfast_cpu.set_capability("sse9")
    assert torch.ops.ganfast_cpu.capability() in CAPABILITIES


def _capability_in_subprocess(env_value):
    env = dict(os.environ, GANFAST_CPU_CAPABILITY=env_value, PYTHONPATH=os.getcwd())
    code = "import ganfast, torch; print(torch.ops.ganfast_cpu.capability())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1], out.stderr


def test_environment_variable_forces_a_path():
    if not CAPABILITIES:
        pytest.skip("no ganfast._C")
    assert _capability_in_subprocess("default")[0] == "default"
    assert _capability_in_subprocess(CAPABILITIES[-1])[0] == CAPABILITIES[-1]
    chosen, err = _capability_in_subprocess("sse9")
    assert chosen == CAPABILITIES[-1] and "GANFAST_CPU_CAPABILITY=sse9" in err


def test_softplus_error_bound(capability):
    """The kernel's own float exp/log1p (gan_loss_kernel.cpp): softplus within 5 ulp and sigmoid
    within 4 ulp of the float64 values. g_loss[ns] over 16 copies of one logit is exactly that
    logit's softplus(-x) (the copies sum exactly), and its gradient times -16 is sigmoid(-x)."""
    xs = torch.cat([torch.linspace(-100, 100, 801), torch.logspace(-30, 1.94, 400), -torch.logspace(-30, 1.94, 400)])
    for x in xs.tolist():
        f = torch.full((16,), x, requires_grad=True)
        with ganfast.use_backend("cpu"):
            loss = losses.g_loss(f, "ns")
        loss.backward()
        got = {"softplus": loss.double(), "sigmoid": -16 * f.grad[0].double()}
        x64 = torch.tensor(x, dtype=torch.float32).double()
        want = {"softplus": torch.nn.functional.softplus(-x64), "sigmoid": torch.sigmoid(-x64)}
        for name, bound in (("softplus", 5), ("sigmoid", 4)):
            w = want[name]
            if w < 1e-37:
                continue
            ulp = torch.finfo(torch.float32).eps * 2.0 ** torch.floor(torch.log2(w.abs()))
            assert (got[name] - w).abs() <= bound * ulp, (name, x, float(got[name]), float(w))


def test_backward_twice_with_retained_graph():
    """backward passes the saved gradient on as it is when the upstream gradient is 1 (csrc/autograd.h):
    a retained graph must still give the same gradient again, accumulated."""
    if not CAPABILITIES:
        pytest.skip("no ganfast._C")
    r = torch.randn(37, requires_grad=True)
    f = torch.randn(37, requires_grad=True)
    with ganfast.use_backend("cpu"):
        loss = losses.d_loss(r, f, "rans")
    loss.backward(retain_graph=True)
    first = r.grad.clone(), f.grad.clone()
    loss.backward(retain_graph=True)
    (loss * 0.5).backward()
    torch.testing.assert_close((r.grad, f.grad), (2.5 * first[0], 2.5 * first[1]))
