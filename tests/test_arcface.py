"""ArcFace head, SupCon loss and the kNN vote: the properties the model relies on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moaspace.model import ArcFace, count_margins, supcon_loss

torch.set_num_threads(2)


def _unit(v):
    return F.normalize(torch.as_tensor(v, dtype=torch.float32), dim=-1)


def _at_angle(theta: torch.Tensor) -> torch.Tensor:
    """Unit vectors in 2-D at angle ``theta`` from the x axis (class 0's centre)."""
    return torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)


def _head(margin=0.25, scale=30.0, **kw):
    head = ArcFace(2, 2, margin=margin, scale=scale, **kw)
    with torch.no_grad():  # class 0 along x, class 1 along y
        head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))  # norms are ignored
    return head


def test_zero_margin_gives_scaled_cosine():
    torch.manual_seed(0)
    head = ArcFace(8, 5, margin=0.0, scale=30.0)
    z = _unit(torch.randn(16, 8))
    labels = torch.randint(0, 5, (16,))
    expected = 30.0 * z @ _unit(head.weight).T
    torch.testing.assert_close(head(z, labels), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head(z), expected, atol=1e-5, rtol=1e-5)


def test_margin_only_on_true_class():
    torch.manual_seed(1)
    head = ArcFace(8, 5, margin=0.3, scale=10.0)
    z = _unit(torch.randn(32, 8))
    labels = torch.randint(0, 5, (32,))
    cos = z @ _unit(head.weight).T
    logits = head(z, labels)
    true = F.one_hot(labels, 5).bool()
    torch.testing.assert_close(logits[~true], 10.0 * cos[~true], atol=1e-5, rtol=1e-5)
    theta = torch.arccos(cos[true].clamp(-1, 1))
    expected = torch.where(theta + 0.3 <= math.pi, torch.cos(theta + 0.3),
                           torch.cos(theta) - 0.3 * math.sin(0.3))
    torch.testing.assert_close(logits[true], 10.0 * expected, atol=1e-4, rtol=1e-4)
    assert (logits[true] < 10.0 * cos[true]).all()  # the margin always penalises


def test_fix_beyond_pi_and_monotonic():
    m = 0.5
    head = _head(margin=m, scale=1.0)
    theta = torch.linspace(0, math.pi, 2001)
    logits = head(_at_angle(theta), torch.zeros_like(theta, dtype=torch.long))[:, 0]
    beyond = theta + m > math.pi + 1e-4
    torch.testing.assert_close(logits[beyond], torch.cos(theta[beyond]) - m * math.sin(m),
                               atol=1e-5, rtol=0)
    inside = theta + m < math.pi - 1e-4
    # sin(theta) is floored at sqrt(1e-7) so gradients stay finite: ~1e-4 error at theta = 0
    torch.testing.assert_close(logits[inside], torch.cos(theta[inside] + m), atol=5e-4, rtol=0)
    assert (logits[1:] <= logits[:-1] + 1e-6).all(), "true-class logit must fall as theta grows"


@pytest.mark.parametrize("theta", [0.0, 1e-6, 1e-3, math.pi - 1e-3, math.pi - 1e-6, math.pi])
def test_gradients_finite_at_extreme_angles(theta):
    head = _head(margin=0.25)
    z = _at_angle(torch.tensor([theta])).requires_grad_(True)
    loss = F.cross_entropy(head(z, torch.tensor([0])), torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(head.weight.grad).all()


def test_per_class_margins_and_count_margins():
    margins = count_margins([100, 10, 1], margin=0.4)
    assert margins.max().item() == pytest.approx(0.4)
    assert margins[2] > margins[1] > margins[0]  # rare classes get larger margins
    torch.manual_seed(0)
    head = ArcFace(4, 3, class_margins=margins, scale=1.0)
    z = _unit(torch.randn(6, 4))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    cos = (z @ _unit(head.weight).T).gather(1, labels[:, None]).squeeze(1)
    got = head(z, labels).gather(1, labels[:, None]).squeeze(1)
    theta = torch.arccos(cos)
    torch.testing.assert_close(got, torch.cos(theta + margins[labels]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError):
        ArcFace(4, 3, class_margins=torch.tensor([0.1, 0.2]))


def test_sub_centres_take_the_closest():
    torch.manual_seed(0)
    head = ArcFace(6, 3, margin=0.0, scale=1.0, sub_centers=4)
    z = _unit(torch.randn(10, 6))
    cos = (z @ _unit(head.weight).T).view(10, 3, 4).amax(2)
    torch.testing.assert_close(head(z), cos, atol=1e-6, rtol=0)


def test_easy_margin_leaves_obtuse_angles():
    head = _head(margin=0.3, scale=1.0, easy_margin=True)
    theta = torch.tensor([0.5, 2.0])
    logits = head(_at_angle(theta), torch.tensor([0, 0]))[:, 0]
    torch.testing.assert_close(logits, torch.stack([torch.cos(theta[0] + 0.3),
                                                    torch.cos(theta[1])]), atol=1e-5, rtol=0)


def test_arcface_trains_to_separate_classes():
    torch.manual_seed(0)
    centres = _unit(torch.randn(4, 16))
    labels = torch.arange(4).repeat_interleave(50)
    x = centres[labels] + 0.3 * torch.randn(200, 16)
    enc = torch.nn.Linear(16, 16)
    head = ArcFace(16, 4, margin=0.3)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(head(_unit(enc(x)), labels), labels).backward()
        opt.step()
    assert (head(_unit(enc(x))).argmax(1) == labels).float().mean() > 0.95


def test_supcon_prefers_clustered_labels():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(8)
    clustered = _unit(F.one_hot(labels, 8).float() + 0.05 * torch.randn(32, 8))
    shuffled = clustered[torch.randperm(32)]
    assert supcon_loss(clustered, labels) < supcon_loss(shuffled, labels)
    # no positive pair at all: zero loss that still has a graph
    z = _unit(torch.randn(3, 4)).requires_grad_(True)
    loss = supcon_loss(z, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    loss.backward()


