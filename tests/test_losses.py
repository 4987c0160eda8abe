"""Each loss against its formula, computed by hand."""

import itertools

import pytest
import torch

from worker.engine.losses import content_loss, gram_matrix, style_loss, tv_loss


def test_gram_matrix_of_a_hand_computed_example():
    # Two channels over a 2x2 image: f0 = [1, 2, 3, 4], f1 = [0, 1, 0, 1].
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    # f0.f0 = 30, f0.f1 = 6, f1.f1 = 2, divided by C*H*W = 8.
    expected = torch.tensor([[[30.0, 6.0], [6.0, 2.0]]]) / 8
    assert torch.equal(gram_matrix(features), expected)


def test_gram_matrix_is_float32_for_half_precision_features():
    features = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    assert gram_matrix(features).dtype == torch.float32


def test_content_loss_is_the_relative_squared_error():
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(1, 3, 4, 5, generator=generator), torch.randn(1, 3, 4, 5, generator=generator)
    pairs = list(zip(a.flatten().tolist(), b.flatten().tolist()))
    by_hand = sum((x - y) ** 2 for x, y in pairs) / sum(y**2 for _, y in pairs)
    assert content_loss(a, b).item() == pytest.approx(by_hand, rel=1e-5)


def test_style_loss_is_the_relative_squared_error_of_gram_matrices():
    generator = torch.Generator().manual_seed(2)
    features, other = torch.randn(1, 3, 4, 4, generator=generator), torch.randn(1, 3, 4, 4, generator=generator)
    target = gram_matrix(other)
    f = features.reshape(3, 16).tolist()
    gram = [[sum(f[i][k] * f[j][k] for k in range(16)) / 48 for j in range(3)] for i in range(3)]
    cells = list(itertools.product(range(3), range(3)))
    by_hand = sum((gram[i][j] - target[0, i, j].item()) ** 2 for i, j in cells) / sum(
        target[0, i, j].item() ** 2 for i, j in cells
    )
    assert style_loss(features, target).item() == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("factor", [1e-3, 0.25, 8.0, 255.0])
def test_content_and_style_losses_do_not_change_when_the_activations_are_scaled(factor):
    """The point of the relative errors: a layer's activations scaled by any positive constant
    (another checkpoint, 0-255 input) leave both losses as they were."""
    generator = torch.Generator().manual_seed(3)
    features, content, style = (torch.rand(1, 6, 5, 5, generator=generator) for _ in range(3))
    target = gram_matrix(style)
    scaled_target = gram_matrix(style * factor)
    assert content_loss(features * factor, content * factor).item() == pytest.approx(
        content_loss(features, content).item(), rel=1e-5
    )
    assert style_loss(features * factor, scaled_target).item() == pytest.approx(
        style_loss(features, target).item(), rel=1e-5
    )


def test_a_target_of_zeros_gives_a_finite_loss():
    features = torch.ones(1, 2, 3, 3)
    assert torch.isfinite(content_loss(features, torch.zeros_like(features)))
    assert torch.isfinite(style_loss(features, torch.zeros(1, 2, 2)))


def test_tv_loss_is_the_mean_squared_neighbour_difference():
    image = torch.randn(1, 2, 3, 4, generator=torch.Generator().manual_seed(4))
    x = image[0].tolist()
    vertical = [(x[c][i + 1][j] - x[c][i][j]) ** 2 for c in range(2) for i in range(2) for j in range(4)]
    horizontal = [(x[c][i][j + 1] - x[c][i][j]) ** 2 for c in range(2) for i in range(3) for j in range(3)]
    by_hand = sum(vertical) / len(vertical) + sum(horizontal) / len(horizontal)
    assert tv_loss(image).item() == pytest.approx(by_hand, rel=1e-5)


def test_losses_vanish_on_identical_inputs():
    features = torch.rand(1, 8, 5, 5, generator=torch.Generator().manual_seed(6))
    assert content_loss(features, features).item() == 0
    assert style_loss(features, gram_matrix(features)).item() == 0
    assert tv_loss(torch.full((1, 3, 6, 6), 0.3)).item() == 0
