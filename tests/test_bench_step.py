"""`ganfast bench step`'s breakdown of a step (step_shares): the parts partition the wall time, and
each kind of work lands in its part."""
import time

import torch
from torch import nn

import ganfast
from ganfast.bench.step import format_shares, step_shares


def test_step_shares_sort_the_work():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))
    opt = torch.optim.SGD(model.parameters(), 1e-3)
    x, other = torch.randn(512, 64), torch.randn(256, 256)

    def step():
        opt.zero_grad()
        logits = model(x)
        ganfast.losses.d_loss(logits[:256], logits[256:], "ns").backward()
        opt.step()
        other.mm(other)  # a top-level aten op outside the model
        time.sleep(0.01)  # outside any op

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy 2-core machine made the ops take 30 ms
    try:
        shares = step_shares(step, [model], steps=5)
    finally:
        torch.set_num_threads(threads)
    assert abs(sum(shares.values()) - 1) < 1e-9
    assert all(v >= 0 for v in shares.values())
    for part in ("models", "optimizer", "ganfast ops", "other ops"):
        assert shares[part] > 0, (part, shares)
    assert shares["outside ops"] > 0.3, shares  # the sleep: 10 ms of a step of about 11 ms
    assert "neither models nor optimizer" in format_shares("case", "variant", shares)
    assert not model._forward_hooks and not model._forward_pre_hooks  # the marking hooks are removed


def test_step_shares_count_the_engine_running_a_models_backward_as_the_models():
    """A backward of many tiny nodes is mostly the autograd engine's own work between them: that is
    running the model's backward, not overhead of the step (it was 29 % "outside ops" before the
    backward calls were marked; 2-4 % after)."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(50)])
    x = torch.randn(8, 4, requires_grad=True)
    backward, grad = torch.autograd.backward, torch.autograd.grad

    def step():
        model(x).sum().backward()
        torch.autograd.grad(model(x).sum(), x)

    shares = step_shares(step, [model], steps=5)
    assert shares["models"] > 0.8 and shares["outside ops"] < 0.15, shares
    assert torch.autograd.backward is backward and torch.autograd.grad is grad  # unpatched afterwards
