"""The launch counter of `ganfast bench launches` (Triton path, under the interpreter), and the
issue-17 targets on that path: a loss 1 launch, a penalty tail <= 2, spectral norm of one layer <= 3
forward and <= 2 backward, every layer of a D <= 4. Counts are deterministic, so they are asserted."""
import pytest
import torch

from ganfast import backends
from ganfast.bench import launches
from ganfast.bench.launches import LaunchCounter, Origin

triton = pytest.importorskip("triton")
if "cpu" not in backends.status("triton").device_types:
    pytest.skip("the Triton interpreter is off (TRITON_INTERPRET=1 before importing triton)", allow_module_level=True)
tl = triton.language


@triton.jit
def _add_one(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=m) + 1.0, mask=m)


def test_counts_a_known_case():
    x = torch.randn(40)
    with LaunchCounter() as c:
        _add_one[(3,)](x, 40, BLOCK=16)  # 1 kernel (the interpreter's own copies are not launches)
        _add_one[(3,)](x, 40, BLOCK=16)  # 2
        y = x + 1  # aten::add: 1
        y.view(4, 10).t()  # views: none
        torch.empty(7)  # an allocation: none
        y.mul_(2).sum()  # mul_, sum: 2
        y.detach()  # none
        y[0].item()  # a host read, not a launch
    assert c.counts.triton == {"_add_one": 2}
    assert dict(c.counts.aten) == {(Origin.MODEL, "aten::add.Tensor"): 1, (Origin.MODEL, "aten::mul_.Tensor"): 1,
                                   (Origin.MODEL, "aten::sum"): 1}
    assert c.counts.total() == 5 and c.counts.syncs == 1
    # the hook is gone after the block
    with torch.no_grad():
        _add_one[(3,)](x, 40, BLOCK=16)
    assert c.counts.triton == {"_add_one": 2}


def test_ops_inside_ganfast_ops_are_counted_as_ganfast():
    from ganfast.ops import spectral_norm as ops

    w, u, v = torch.randn(5, 7), torch.randn(5), torch.randn(7)
    x = torch.randn(40)
    with LaunchCounter() as c:
        out = ops.spectral_norm(w, u, v, 0, 1, 1e-12, "triton")[0]
        out.sum()  # the caller's op: not ganfast's
        _add_one[(3,)](x, 40, BLOCK=16)  # still counted after the op (the mode re-entered and left)
    assert c.counts.triton == {"_mv_kernel": 1, "_mtv_kernel": 1, "_finish_kernel": 1, "_add_one": 1}
    assert dict(c.counts.aten) == {(Origin.MODEL, "aten::sum"): 1}


@pytest.fixture(scope="module")
def rows():
    return {name: (target, counts) for name, target, counts, _, error in launches.triton_rows(torch.device("cpu"))}


def test_every_case_ran(rows):
    assert all(counts is not None for _, counts in rows.values()), [n for n, (_, c) in rows.items() if c is None]


@pytest.mark.parametrize("target", sorted(launches.TARGETS))
def test_targets_on_the_triton_path(rows, target):
    limit = launches.TARGETS[target].limit
    cases = {name: counts.total() for name, (t, counts) in rows.items() if t == target}
    assert cases, f"no case for target {target}"
    assert all(n <= limit for n in cases.values()), (target, limit, cases)


def test_exact_triton_counts(rows):
    """What the kernels take per call (a regression here is a launch someone added)."""
    total = {name: counts.total() for name, (_, counts) in rows.items()}
    assert total["loss d ns"] == total["loss g rahinge"] == 1
    assert total["penalty tail r1/r2"] == 2
    assert total["SN forward, training (1 iteration)"] == 3
    assert total["SN forward, eval"] == 2
    assert total["SN backward"] == 2
    assert total["SN multi-tensor forward, 4 layers"] == 4  # the table upload + 3 kernels
    assert total["SN multi-tensor backward, 4 layers"] == 3


def test_trainer_step_is_split_by_origin():
    ((name, c),) = launches.step_counts(torch.device("cpu"), limit=1)
    assert "MLP" in name
    assert sum(c.triton.values()) > 0 and c.total(Origin.GANFAST) >= sum(c.triton.values())
    model_ops = {op for (origin, op) in c.aten if origin == Origin.MODEL}
    assert "aten::addmm" in model_ops or "aten::mm" in model_ops  # the Linear layers
    assert not any(op.startswith("aten::addmm") for (origin, op) in c.aten if origin == Origin.GANFAST)
