"""`ganfast bench sweep`: the cases it builds and the rows it returns (timings shortened)."""
import torch

from ganfast import backends, bench
from ganfast.bench import sn, sweep


def test_quick_sweep_times_eager_and_marks_auto_in_every_case(monkeypatch):
    monkeypatch.setattr(sweep, "ROUNDS", 1)
    monkeypatch.setattr(sweep, "ROUND_TIME", 0.0)
    available = backends.available_backends  # not Triton's interpreter (the tests turn it on): minutes a case
    monkeypatch.setattr(backends, "available_backends", lambda device_type=None: [
        b for b in available(device_type) if b != "triton"])
    rows = sweep.run(quick=True)
    cases = {r.case for r in rows}
    for case in cases:
        variants = [r.variant for r in rows if r.case == case]
        assert "eager" in variants and len(variants) >= 2, case  # the reference and a ganfast backend
        assert sum(r.auto for r in rows if r.case == case) == 1, case
        assert all(r.seconds > 0 for r in rows if r.case == case)
    # every family, float32 and another dtype
    for part in ("d_loss[ns] B=1", "g_loss[hinge] B=64 bfloat16", "sn Linear 2->16", "sn Linear 128->1 bfloat16",
                 "tail[two-sided] g=4096x2", "interpolate g=4096x12", "apply B=1 3x32x32", "draw+apply B=4096 1x8x8"):
        assert part in cases, (part, sorted(cases))
    assert "auto check" in bench.format_rows(bench.add_ratios(rows))


def test_sn_read_step_updates_u_and_accumulates_nothing():
    from ganfast.nn import spectral_norm
    layer = spectral_norm(torch.nn.Linear(5, 3))
    u0 = layer.parametrizations.weight[0]._u.clone()
    upstream = torch.randn(3, 5)
    step = sn.weight_read_step(layer, upstream)
    step()
    first = layer.parametrizations.weight.original.grad.clone()
    step()
    assert not torch.equal(layer.parametrizations.weight[0]._u, u0)  # a power iteration each read
    # the gradient of one read, not two summed (it is reset before each step)
    torch.testing.assert_close(layer.parametrizations.weight.original.grad, first, rtol=1e-3, atol=1e-4)


def test_the_cli_knows_the_suite():
    assert "sweep" in bench.SUITES
