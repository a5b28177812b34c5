"""ganfast.nn's conditional blocks: the projection head equals its formula (values and gradients),
spectral norm on its embedding normalizes it, and conditional batch norm is a per-class affine over
an affine-free batch norm (γ = 1, β = 0 at the start)."""
import pytest
import torch
from torch import nn

import ganfast.nn as gnn


@pytest.mark.parametrize("batch, features, classes", [(1, 7, 3), (7, 5, 1), (33, 16, 10)])
def test_projection_head_equals_the_formula_with_gradients(batch, features, classes):
    torch.manual_seed(0)
    head = gnn.ProjectionHead(features, classes).double()
    h = torch.randn(2 * batch, features, dtype=torch.float64)[::2].requires_grad_()  # non-contiguous
    y = torch.randint(0, classes, (batch,))
    out = head(h, y)
    assert out.shape == (batch, 1)
    V, w, b = head.embed.weight, head.linear.weight, head.linear.bias
    expected = h @ w.T + b + (V[y] * h).sum(1, keepdim=True)   # ψ(h) + ⟨V_y, h⟩
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    up = torch.randn_like(out)
    got = torch.autograd.grad(out, (h, V, w), up)
    want = torch.autograd.grad(expected, (h, V, w), up)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)
    # the analytic input gradient: ∂out_i/∂h_i = w + V_{y_i}
    torch.testing.assert_close(got[0], up * (w + V[y]), rtol=0, atol=1e-12)
    # only the rows of the classes present receive a gradient
    absent = sorted(set(range(classes)) - set(y.tolist()))
    assert torch.count_nonzero(got[1][absent]) == 0


def test_projection_head_class_term_changes_with_the_label():
    torch.manual_seed(1)
    head = gnn.ProjectionHead(8, 4)
    h = torch.randn(1, 8).expand(4, 8)
    out = head(h, torch.arange(4)).squeeze(1)
    assert len(set(out.tolist())) == 4  # one feature vector, four classes, four scores


def test_spectral_norm_on_the_embedding_normalizes_it():
    torch.manual_seed(2)
    head = gnn.ProjectionHead(12, 5, spectral_norm=True)
    with torch.no_grad():
        head.embed.parametrizations.weight.original.mul_(30.0)  # far from norm 1
    for _ in range(30):  # power iterations run in training-mode forwards
        head(torch.randn(3, 12), torch.tensor([0, 1, 4]))
    for layer in (head.embed, head.linear):
        sigma = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=1e-3)
    assert set(gnn.spectral_norms(head)) == {"linear", "embed"}
    plain = gnn.ProjectionHead(12, 5)
    assert not hasattr(plain.embed, "parametrizations")


def test_conditional_batch_norm_is_a_per_class_affine_of_batch_norm():
    torch.manual_seed(3)
    cbn = gnn.ConditionalBatchNorm2d(6, 3).double()
    assert torch.equal(cbn.gamma.weight, torch.ones(3, 6, dtype=torch.float64))
    assert torch.equal(cbn.beta.weight, torch.zeros(3, 6, dtype=torch.float64))
    x = torch.randn(7, 6, 5, 3, dtype=torch.float64).requires_grad_()
    y = torch.tensor([0, 2, 2, 1, 0, 1, 2])
    plain = nn.BatchNorm2d(6, affine=False).double()
    torch.testing.assert_close(cbn(x, y), plain(x), rtol=0, atol=1e-12)  # at initialization
    torch.testing.assert_close(cbn.bn.running_mean, plain.running_mean)
    with torch.no_grad():
        cbn.gamma.weight.normal_()
        cbn.beta.weight.normal_()
    out = cbn(x, y)
    xhat = nn.functional.batch_norm(x, None, None, training=True, eps=cbn.bn.eps)
    expected = xhat * cbn.gamma.weight[y][:, :, None, None] + cbn.beta.weight[y][:, :, None, None]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    up = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (x, cbn.gamma.weight, cbn.beta.weight), up),
                         torch.autograd.grad(expected, (x, cbn.gamma.weight, cbn.beta.weight), up)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    cbn.eval()  # running statistics, as BatchNorm2d
    assert cbn(x, y).shape == x.shape


@pytest.mark.parametrize("y, error, match", [
    (torch.tensor([0.0, 1.0]), TypeError, "LongTensor"),
    (torch.tensor([0, 1], dtype=torch.int32), TypeError, "LongTensor"),
    (torch.tensor([[0, 1]]), ValueError, r"shape \(2,\)"),
    (torch.tensor([0, 1, 2]), ValueError, r"shape \(2,\)"),
    ([0, 1], TypeError, "tensor"),
])
def test_bad_labels_are_named(y, error, match):
    head = gnn.ProjectionHead(4, 3)
    cbn = gnn.ConditionalBatchNorm2d(2, 3)
    with pytest.raises(error, match=match):
        head(torch.randn(2, 4), y)
    with pytest.raises(error, match=match):
        cbn(torch.randn(2, 2, 3, 3), y)
    with pytest.raises(ValueError, match="num_classes"):
        gnn.ProjectionHead(4, 0)
