"""`ganfast bench step`'s breakdown of a step (step_shares): the parts partition the wall time, and
each kind of work lands in its part."""
import copy
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


def test_joint_check_names_the_faster_choice():
    from ganfast.bench import Row
    from ganfast.bench.step import joint_check
    rows = [Row("step", "c", "trainer-nostats", 1.0), Row("step", "c", "trainer-nostats-two-d-calls", 1.2),
            Row("step", "d", "trainer-nostats", 1.0), Row("step", "d", "trainer-nostats-one-d-call", 0.9)]
    ok = joint_check("c", rows, "trainer-nostats-two-d-calls")
    assert "makes one D call" in ok and "1.20x" in ok and "faster" not in ok
    miss = joint_check("d", rows, "trainer-nostats-one-d-call")
    assert "makes two D calls" in miss and "0.90x" in miss and "JOINT_D_MAX_ELEMENTS" in miss


def test_the_other_choice_of_d_calls():
    """The bench's alternative trainer makes the other choice: two calls where the trainer makes one,
    one where the size limit keeps it at two, none where D mixes the samples of a batch."""
    from ganfast.bench.step import _other_call_count

    def make(d):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)), d

    def trainer(G, D, limit=None):
        t = ganfast.Trainer(G, D, torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters()), seed=0)
        if limit is not None:
            t.joint_d_max_elements = limit
        return t

    for n, name, joint, limit in ((64, "trainer-nostats-two-d-calls", False, None),
                                  (65, "trainer-nostats-one-d-call", True, 128)):
        G, D = make(nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1)))
        real = torch.randn(n, 2)
        variant, other = _other_call_count(trainer(G, D, limit), real,
                                           lambda: trainer(*make(copy.deepcopy(D)), limit))
        assert variant == name
        other.step(real[:4])  # the probe
        assert other._joint(real, False) is joint
    G, D = make(nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)))
    assert _other_call_count(trainer(G, D), torch.randn(64, 2), lambda: trainer(*make(copy.deepcopy(D)))) is None


def test_the_suite_has_a_conditional_augmented_case():
    from ganfast.bench.step import cases

    cond = [c for c in cases(quick=True) if c.num_classes is not None]
    assert [c.name for c in cond] == ["DCGAN 32x32 w=32 B=32 cond+aug"]
    real, labels = cond[0].batch("cpu")
    assert real.shape == (32, 3, 32, 32) and labels.shape == (32,) and 0 <= labels.min() <= labels.max() < 10
    assert cond[0].augment == "color,translation,cutout"


def test_plain_step_conditional_and_augmented():
    """The plain loop of the cond+aug case: every D call gets its batch's labels (the reals' own, fake
    labels drawn in range), the images D sees are augmented (R1 at the augmented reals), both models
    learn, and D's parameters are trainable again afterwards."""
    from ganfast.bench.step import _optims, _torch_sn, plain_step
    from ganfast.models import DCGANDiscriminator, DCGANGenerator

    torch.manual_seed(0)
    G, D = DCGANGenerator(16, 32, 3, 8, num_classes=5), _torch_sn(DCGANDiscriminator(32, 3, 8, num_classes=5))
    g_opt, d_opt = _optims(G, D)
    real, labels = torch.rand(6, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 3, 4, 0])
    calls = []
    D.register_forward_pre_hook(lambda m, args: calls.append(args))
    g0, d0 = copy.deepcopy(G.state_dict()), [p.detach().clone() for p in D.parameters()]
    plain_step(G, D, g_opt, d_opt, real, (16, 1, 1), 10.0, labels, 5, "color,translation,cutout")
    assert len(calls) == 3  # D(real), D(fake.detach()) in the D step, D(fake) in the G step
    (x_real, y_real), (_, y_fake), (_, y_fake_g) = calls
    assert torch.equal(y_real, labels) and torch.equal(y_fake, y_fake_g) and 0 <= y_fake.min() <= y_fake.max() < 5
    assert not torch.equal(x_real, real) and x_real.requires_grad  # augmented, and differentiated by R1
    assert all(not torch.equal(a, b) for a, b in zip(d0, D.parameters()))
    assert any(not torch.equal(v, G.state_dict()[k]) for k, v in g0.items())
    assert all(p.requires_grad for p in D.parameters())
