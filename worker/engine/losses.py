"""The losses of Gatys et al., each made scale-free: content, Gram-matrix style, total variation.

The content and style terms are relative errors, ‖x - t‖² / ‖t‖²: the squared distance to
the target divided by the target's own squared norm. Multiplying a layer's activations by any
positive constant (as a different checkpoint, Caffe-style 0-255 input, or a rescaled layer
does) multiplies both by the same factor, so the term, its weight and the whole optimization
stay the same. Gatys et al. divide by fixed sizes instead (1/(4N²M²)), which leaves each
term's size tied to how large that checkpoint's activations happen to be.

All of them are computed in float32, whatever precision the convolutions ran in.
"""

from __future__ import annotations

import torch

# A target with no energy at all (a black image through a layer whose units are all off)
# would divide by zero; any positive floor far under real targets' norms keeps it finite.
_TINY = 1e-30


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C): feature correlations, divided by C*H*W, in float32 even
    inside an autocast region."""
    with torch.autocast(features.device.type, enabled=False):
        return _gram(features.float())


def _gram(features: torch.Tensor) -> torch.Tensor:
    b, c, h, w = features.shape
    if features.is_contiguous(memory_format=torch.channels_last) and c > 1:
        # VGGFeatures' channels-last features are (B, H*W, C) in memory: a view, no copy.
        flat = features.permute(0, 2, 3, 1).reshape(b, h * w, c)
        return flat.transpose(1, 2) @ flat / (c * h * w)
    flat = features.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def squared_norm(target: torch.Tensor) -> torch.Tensor:
    """‖t‖² in float32, floored away from zero: the denominator of a relative error."""
    return target.float().pow(2).sum().clamp_min(_TINY)


def relative_error(value: torch.Tensor, target: torch.Tensor, norm: torch.Tensor | None = None) -> torch.Tensor:
    """‖value - target‖² / ‖target‖² in float32 (`norm`: ‖target‖², when computed already)."""
    norm = squared_norm(target) if norm is None else norm
    return (value.float() - target.float()).pow(2).sum() / norm


def content_loss(features: torch.Tensor, target: torch.Tensor, norm: torch.Tensor | None = None) -> torch.Tensor:
    """The features' relative error against the content's features."""
    return relative_error(features, target, norm)


def style_loss(features: torch.Tensor, target_gram: torch.Tensor, norm: torch.Tensor | None = None) -> torch.Tensor:
    """The relative error of the features' Gram matrix against the style's."""
    return relative_error(gram_matrix(features), target_gram, norm)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Total variation: mean squared difference of vertical plus horizontal neighbours.

    It is taken on the image itself (pixels in [0, 1]), so it needs no normalising.
    """
    image = image.float()
    dy = image[..., 1:, :] - image[..., :-1, :]
    dx = image[..., :, 1:] - image[..., :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()
