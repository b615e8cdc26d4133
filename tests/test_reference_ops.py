"""The pure-PyTorch reference ops: the method's invariants, float64 gradients, a hand-computed ELR step."""

import math

import pytest
import torch
from torch import nn

from smec_fast.kernels import (
    cam,
    elr_cross_entropy,
    merge_piece_maps,
    split_merge_consistency,
)
from smec_fast.model import FerResNet18
from smec_fast.split_merge import split_and_flip

GRIDS = [(1, 1), (1, 2), (2, 1), (2, 2), (4, 4)]


class PixelwiseNet(nn.Module):
    """A backbone that mixes no pixels: 1x1 convolutions, so each feature depends on one pixel only."""

    def __init__(self, channels=16, classes=7):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, channels, 1), nn.ReLU())
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        feat = self.body(x)
        return self.fc(feat.mean((2, 3))), feat


@pytest.mark.parametrize("grid", GRIDS)
def test_consistency_is_exactly_zero_without_pixel_mixing(grid):
    net = PixelwiseNet()
    images = torch.randn(3, 3, 16, 24)
    _, feat = net(images)
    _, feat_pieces = net(split_and_flip(images, grid))
    loss = split_merge_consistency(feat, feat_pieces, net.fc.weight, grid)
    # Zero in exact arithmetic. A piece's narrower width can make the CPU's convolution pick another kernel,
    # whose fp32 rounding differs from the whole image's (measured 1.3e-16 for the 4x4 grid on an AMD Zen 5, 0
    # on Zen 4): a few fp32 roundoffs of the CAM's size, squared. A broken merge gives about 1 (below).
    cam_size = torch.einsum("bchw,kc->bkhw", feat, net.fc.weight).abs().max().item()
    assert loss.item() <= (8 * 2.0 ** -24 * cam_size) ** 2


@pytest.mark.parametrize("grid", GRIDS)
def test_consistency_is_positive_for_a_resnet(grid):
    net = FerResNet18(7).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _, feat = net(images)
        _, feat_pieces = net(split_and_flip(images, grid))
        loss = split_merge_consistency(feat, feat_pieces, net.cam_weight, grid)
    assert loss.item() > 1e-6


def test_a_broken_merge_would_be_caught():
    """Not flipping the piece maps back breaks the invariant: the zero test above can fail."""
    net = PixelwiseNet()
    images = torch.randn(2, 3, 8, 8)
    _, feat = net(images)
    _, feat_pieces = net(split_and_flip(images, (1, 2)))
    unflipped = feat_pieces.flip(-1)  # maps placed without the re-flip
    assert split_merge_consistency(feat, unflipped, net.fc.weight, (1, 2)).item() > 1e-4


def test_width_split_merge_equals_concatenate_then_flip_back():
    """For 1x2, merging equals the paper's description: concatenate in the flipped image's order, flip back."""
    maps = torch.randn(2 * 5, 7, 3, 4)  # (P*B, K, h', w')
    left, right = maps[:5], maps[5:]
    expected = torch.cat([right, left], dim=-1).flip(-1)
    torch.testing.assert_close(merge_piece_maps(maps, (1, 2), (3, 8)), expected, rtol=0, atol=0)


def test_merge_resizes_bilinearly_when_sizes_differ():
    maps = torch.randn(2 * 3, 7, 7, 4)
    merged = merge_piece_maps(maps, (1, 2), (7, 7))
    mosaic = merge_piece_maps(maps, (1, 2), (7, 8))
    expected = torch.nn.functional.interpolate(mosaic, size=(7, 7), mode="bilinear", align_corners=False)
    torch.testing.assert_close(merged, expected, rtol=0, atol=0)


def test_cam_matches_its_definition():
    feat, weight = torch.randn(2, 5, 3, 4), torch.randn(7, 5)
    expected = torch.zeros(2, 7, 3, 4)
    for j in range(7):
        for k in range(5):
            expected[:, j] += weight[j, k] * feat[:, k]
    torch.testing.assert_close(cam(feat, weight), expected)


def test_logits_are_the_spatial_mean_of_the_cam_plus_bias():
    net = FerResNet18(7).eval()
    with torch.no_grad():
        logits, feat = net(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(cam(feat, net.cam_weight).mean((2, 3)) + net.fc.bias, logits, rtol=1e-4, atol=1e-5)


def _feat(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("grid,org,piece", [
    ((1, 1), (4, 5), (4, 5)),
    ((1, 2), (3, 4), (3, 2)),
    ((1, 2), (7, 7), (7, 4)),  # 224-wide case: merged 7x8 resized to 7x7
    ((2, 1), (4, 3), (2, 3)),
    ((2, 2), (3, 3), (2, 2)),  # merged 4x4 resized to 3x3
    ((4, 4), (4, 4), (1, 1)),
])
def test_consistency_gradcheck_float64(grid, org, piece):
    b, c, k = 2, 6, 3
    p = grid[0] * grid[1]
    feat_org, feat_pieces = _feat(b, c, *org), _feat(p * b, c, *piece)
    weight = _feat(k, c)

    def loss(fo, fp, w):
        return split_merge_consistency(fo, fp, w, grid, detach_weight=False)

    assert torch.autograd.gradcheck(loss, (feat_org, feat_pieces, weight))


def test_detach_weight_keeps_gradient_from_the_weight():
    feat_org, feat_pieces, weight = _feat(2, 4, 2, 2), _feat(4, 4, 2, 1), _feat(3, 4)
    split_merge_consistency(feat_org, feat_pieces, weight, (1, 2), detach_weight=True).backward()
    assert weight.grad is None and feat_org.grad.abs().sum() > 0 and feat_pieces.grad.abs().sum() > 0


def test_cam_gradcheck_float64():
    assert torch.autograd.gradcheck(cam, (_feat(2, 4, 3, 2), _feat(5, 4)))


def test_elr_gradcheck_float64():
    logits = _feat(6, 7)
    labels = torch.randint(0, 7, (6,))
    targets = torch.rand(20, 7, dtype=torch.float64)
    targets /= targets.sum(1, keepdim=True)
    index = torch.randperm(20)[:6]

    def loss(z):  # the op updates targets in place, so every call gets a fresh copy
        return elr_cross_entropy(z, labels, targets.clone(), index, 1.0, 3.0)

    # beta = 1 keeps the targets fixed: with beta < 1 the targets move with the (detached) probabilities,
    # which finite differences see and autograd by design does not. The hand-computed case below checks
    # the gradient with a moving target.

    assert torch.autograd.gradcheck(loss, (logits,))


def test_elr_hand_computed_step():
    # softmax(log p) = p exactly, so every number below is worked out by hand from the formulas.
    p = [0.2, 0.3, 0.5]
    logits = torch.tensor([[math.log(x) for x in p]], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[9.0, 9.0, 9.0], [0.5, 0.25, 0.25], [1.0, 2.0, 3.0]], dtype=torch.float64)
    index = torch.tensor([1])
    loss = elr_cross_entropy(logits, torch.tensor([2]), targets, index, beta=0.7, lam=3.0)
    # t <- 0.7 * [0.5, 0.25, 0.25] + 0.3 * [0.2, 0.3, 0.5] = [0.41, 0.265, 0.325]
    assert targets[1].tolist() == pytest.approx([0.41, 0.265, 0.325], abs=1e-12)
    assert targets[0].tolist() == [9.0, 9.0, 9.0] and targets[2].tolist() == [1.0, 2.0, 3.0]
    # <t, p> = 0.082 + 0.0795 + 0.1625 = 0.324; CE = -log 0.5
    expected = -math.log(0.5) + 3.0 * math.log(1 - 0.324)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    # d/dz_j: CE gives p_j - y_j; ELR gives lam * (-(t_j p_j - <t,p> p_j)) / (1 - <t,p>)
    loss.backward()
    t = [0.41, 0.265, 0.325]
    tp = 0.324
    grad = [p[j] - (j == 2) - 3.0 * (t[j] * p[j] - tp * p[j]) / (1 - tp) for j in range(3)]
    assert logits.grad[0].tolist() == pytest.approx(grad, abs=1e-12)


def test_elr_clamps_probabilities_before_the_update():
    logits = torch.tensor([[30.0, 0.0]], dtype=torch.float64)  # softmax ~ [1, 9e-14]
    targets = torch.zeros(1, 2, dtype=torch.float64)
    elr_cross_entropy(logits, torch.tensor([0]), targets, torch.tensor([0]), beta=0.0, lam=1.0)
    clamped = torch.tensor([1 - 1e-4, 1e-4], dtype=torch.float64)
    torch.testing.assert_close(targets[0], clamped / clamped.sum(), rtol=0, atol=1e-15)
