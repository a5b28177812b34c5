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
        time.sleep(0.004)  # outside any op

    shares = step_shares(step, [model], steps=5)
    assert abs(sum(shares.values()) - 1) < 1e-9
    assert all(v >= 0 for v in shares.values())
    for part in ("models", "optimizer", "ganfast ops", "other ops"):
        assert shares[part] > 0, (part, shares)
    assert shares["outside ops"] > 0.3, shares  # the sleep: 4 ms of a step of a few ms
    assert "neither models nor optimizer" in format_shares("case", "variant", shares)
    assert not model._forward_hooks and not model._forward_pre_hooks  # the marking hooks are removed
