"""Conversions between Pillow images and (1, C, H, W) tensors in [0, 1], and sizing."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def fit_long_side(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is `long_side`, keeping the aspect ratio."""
    width, height = size
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_tensor(image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Pillow RGB image, optionally resized to (width, height) -> (1, 3, H, W) float32 in [0, 1]."""
    image = image.convert("RGB")
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)
    return tensor.contiguous().float().div_(255)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [0, 1] on any device -> Pillow RGB image. Synchronises with the device."""
    array = image[0].detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)
    return Image.fromarray(array.cpu().numpy(), "RGB")
