"""Spatial control: a style for each region of the output (Gatys et al. 2017, section 4).

Each style image may come with a mask over the output: white where the style applies, grey
where it partly does, black where it does not. The style target stays the Gram matrix of the
whole style image (as the paper does for a style that fills its region); the output's Gram
matrix for style i is taken over its features weighted by mask i at that layer's resolution
(a guided Gram matrix), divided by the mask's mass, so a region's Gram is an average over the
region however small it is. Where no mask is white only the content loss (and TV) applies,
so the photo is kept.

Each region's relative error is weighted by the share of the layer the mask covers (its mean),
so a pixel is pulled towards its style as hard as in a run with that style alone, and a mask
of uniform grey 0.5 is a style at half strength. The blend weights (normalised to mean 1 here)
still scale the styles against each other.

Cost: each guided Gram matrix is taken over the positions its mask covers only, and its
backward pass is one matrix product, so masks that share the picture out cost about one plain
Gram matrix in all (bench/engine.py --masks: 1.0x at 512 px on the CPU, against 1.24x when
every position was weighted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import EngineError
from .losses import relative_error, squared_norm

# Pillow modes a mask may come in: one channel each ("F" holds floats in [0, 1]).
MASK_MODES = ("1", "L", "F")


def check_masks(masks: Sequence[Image.Image | None] | None, styles: int) -> list[Image.Image | None] | None:
    """The masks, one per style (None: the style applies everywhere), or None when no style has one."""
    if masks is None:
        return None
    masks = list(masks)
    if len(masks) != styles:
        raise EngineError(f"{len(masks)} style masks for {styles} style images; give one mask per style, in order")
    for index, mask in enumerate(masks, start=1):
        if mask is not None and mask.mode not in MASK_MODES:
            raise EngineError(
                f"style mask {index} is a {mask.mode} image; give a single-channel (grey-scale) mask, "
                f"white where the style applies"
            )
    return masks if any(mask is not None for mask in masks) else None


def mask_tensor(mask: Image.Image | None, dims: tuple[int, int]) -> torch.Tensor:
    """A mask resized to the output's (width, height) -> (1, 1, H, W) float32 in [0, 1]."""
    width, height = dims
    if mask is None:
        return torch.ones(1, 1, height, width)
    if mask.mode == "F":
        array = np.asarray(mask, dtype=np.float32).clip(0, 1)
    else:
        array = np.asarray(mask.convert("L"), dtype=np.float32) / 255
    tensor = torch.from_numpy(array.copy())[None, None]
    if tensor.shape[-2:] != (height, width):
        # antialias: a mask shrunk to a coarse scale averages its pixels instead of sampling them.
        tensor = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return tensor.clamp_(0, 1)


def guided_gram(
    features: torch.Tensor, weights: torch.Tensor, mass: torch.Tensor, index: torch.Tensor | None = None
) -> torch.Tensor:
    """(1, C, H, W) features and (H*W,) weights of total `mass` -> (1, C, C) Gram matrix of the
    weighted region in float32: Σ_p m_p f_p f_pᵀ / (C · Σ_p m_p). All-ones weights give `gram_matrix`.

    With `index` (the positions where the weights are not 0), `weights` holds only those
    positions' weights and only they are gathered: a style painted on a third of the picture
    costs a third of a Gram matrix, so masks that share the picture out cost about one in all.
    """
    with torch.autocast(features.device.type, enabled=False):
        f = features.float()
        b, c, h, w = f.shape
        root = weights.sqrt()  # Σ m_p f_p f_pᵀ = XᵀX with X = √m · f
        if f.is_contiguous(memory_format=torch.channels_last) and c > 1:
            rows = f.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, HW, C): a view of channels-last memory
            if index is not None:
                rows = rows.index_select(1, index)
            return _SymmetricGram.apply(rows * root[:, None]) / (c * mass)
        rows = f.reshape(b, c, h * w)
        if index is not None:
            rows = rows.index_select(2, index)
        return _SymmetricGram.apply((rows * root).transpose(1, 2)) / (c * mass)


class _SymmetricGram(torch.autograd.Function):
    """(B, N, C) -> (B, C, C) XᵀX, whose backward is one product, X(G' + G'ᵀ), where autograd's
    matmul would make two (one for each operand, though both are X)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.transpose(1, 2) @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return x @ (grad + grad.transpose(1, 2))


# Below this share of a layer's positions a mask's Gram matrix is taken over its positions
# alone (gathered); above it, the gather (and its scatter in the backward pass) saves little.
GATHER_BELOW = 0.9


class GuidedStyleLoss:
    """Σ_l w_l Σ_i a_il · relative error of style i's guided Gram against its whole-image Gram.

    a_il = blend_i · (number of styles) · (mean of mask i at layer l): see the module docstring.
    """

    def __init__(
        self,
        targets: Sequence[Mapping[str, torch.Tensor]],
        blend: Sequence[float],
        masks: Sequence[torch.Tensor],
        layer_weights: Mapping[str, float],
        shapes: Mapping[str, tuple[int, int]],
    ):
        """`targets[i]`: {layer: Gram} of style i; `masks[i]`: (1, 1, H, W) at the output's size;
        `shapes`: each style layer's (h, w) for that output."""
        # (layer weight, [(weights, their positions or None for all, mass, target, its squared norm, a_il)])
        self.terms: dict[str, tuple[float, list[tuple]]] = {}
        for name, layer_weight in layer_weights.items():
            regions = []
            for grams, share, mask in zip(targets, blend, masks):
                small = F.adaptive_avg_pool2d(mask, shapes[name]).reshape(-1)  # (h*w,)
                mass = small.sum()
                coverage = float(mass) / small.numel()  # host syncs, once per term at set-up
                if coverage <= 0:
                    continue  # an all-black mask: this style has no region
                index = small.nonzero().reshape(-1)
                if index.numel() < GATHER_BELOW * small.numel():
                    small = small[index]
                else:
                    index = None
                weight = share * len(targets) * coverage
                regions.append((small, index, mass, grams[name], squared_norm(grams[name]), weight))
            self.terms[name] = (layer_weight, regions)

    def __call__(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), device=next(iter(features.values())).device)
        for name, (layer_weight, regions) in self.terms.items():
            for weights, index, mass, target, norm, share in regions:
                gram = guided_gram(features[name], weights, mass, index)
                total = total + layer_weight * share * relative_error(gram, target, norm)
        return total
