"""Colour control from Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style
Transfer": luminance-only transfer (in YIQ) and colour statistics matching.
"""

from __future__ import annotations

import torch

# NTSC YIQ, the space the 2017 paper uses for luminance-only transfer.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 3, H, W) YIQ."""
    matrix = _RGB_TO_YIQ.to(image.device, image.dtype)
    return torch.einsum("ij,bjhw->bihw", matrix, image)


def yiq_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) YIQ -> (B, 3, H, W) RGB."""
    matrix = torch.linalg.inv(_RGB_TO_YIQ).to(image.device, image.dtype)
    return torch.einsum("ij,bjhw->bihw", matrix, image)


def match_luminance(luma: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Shift and scale `luma` so its mean and deviation match `reference`'s (both (B, 1, H, W))."""
    std = luma.std().clamp_min(1e-5)
    return ((luma - luma.mean()) / std * reference.std() + reference.mean()).clamp(0, 1)


def match_color(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Recolour `image` by the affine map that gives its pixels `reference`'s mean and covariance.

    Uses symmetric matrix square roots (the 2017 paper's "image analogies" variant), which
    keeps the map rotation-free. Both are (1, 3, H, W) in [0, 1].
    """
    x = image.reshape(3, -1).double()
    r = reference.reshape(3, -1).double()
    mu_x, mu_r = x.mean(1, keepdim=True), r.mean(1, keepdim=True)
    eye = torch.eye(3, dtype=torch.float64, device=image.device)
    cov_x = torch.cov(x) + eps * eye
    cov_r = torch.cov(r) + eps * eye
    transform = _sqrtm(cov_r) @ torch.linalg.inv(_sqrtm(cov_x))
    out = transform @ (x - mu_x) + mu_r
    return out.reshape(image.shape).to(image.dtype).clamp(0, 1)


def _sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
