"""The losses of Gatys et al.: content, Gram-matrix style, and total variation.

All of them are computed in float32, whatever precision the convolutions ran in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C): feature correlations, divided by C*H*W."""
    b, c, h, w = features.shape
    features = features.float()
    if features.is_contiguous(memory_format=torch.channels_last) and c > 1:
        # VGGFeatures' channels-last features are (B, H*W, C) in memory: a view, no copy.
        flat = features.permute(0, 2, 3, 1).reshape(b, h * w, c)
        return flat.transpose(1, 2) @ flat / (c * h * w)
    flat = features.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the features and the content's features."""
    return F.mse_loss(features.float(), target.float())


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the features' Gram matrix and the style's."""
    return F.mse_loss(gram_matrix(features), target_gram)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Total variation: mean squared difference of vertical plus horizontal neighbours."""
    image = image.float()
    dy = image[..., 1:, :] - image[..., :-1, :]
    dx = image[..., :, 1:] - image[..., :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()
