"""The weighted, scale-free loss of an image against one scale's content and style targets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from .errors import EngineError
from .losses import content_loss, squared_norm, style_loss, tv_loss
from .masks import GuidedStyleLoss
from .targets import NetworkKey, TargetCache, style_grams
from .vgg import VGGFeatures

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# fp16 gradients of relative errors underflow below 2^-24: the total is multiplied by this
# before the backward pass and the pixel gradient divided by it after (a static loss scale;
# the descent checks the gradient is finite).
FP16_LOSS_SCALE = 2.0**12


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on a CUDA GPU that has it, else fp32; fp16 needs a GPU."""
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise EngineError("fp16 needs a CUDA GPU; on the CPU use fp32 (or bf16)")
    return precision


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The context the convolutions run in: autocast to bf16/fp16, or nothing for fp32."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class StyleObjective:
    """content_weight * Σ content relative errors + style_weight * Σ_l w_l style relative errors
    + tv_weight * total variation, with the layer weights w_l normalised to sum to 1.

    Each relative error is divided by its target's squared norm, computed once here, so the
    balance of the terms does not depend on the scale of the network's activations.
    """

    def __init__(
        self,
        net: VGGFeatures,
        params: Any,
        content: torch.Tensor,
        styles: Sequence[torch.Tensor],
        blend: Sequence[float],
        *,
        targets_cache: TargetCache | None = None,
        network: NetworkKey | None = None,
        precision: str = "fp32",
        style_masks: Sequence[torch.Tensor] | None = None,
        extra: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        """`targets_cache` with `network` (what `net` was built from) reuses style Gram matrices.
        `style_masks` (one (1, 1, H, W) per style, at the image's size) makes the style losses
        regional (masks.GuidedStyleLoss) instead of one loss against the blended Gram matrices.
        `extra` is a weighted term of the image added to the tv loss (a video frame's temporal loss)."""
        self.net = net
        self.precision = precision
        self.device = content.device
        self.content_weight = params.content_weight
        self.style_weight = params.style_weight
        self.tv_weight = params.tv_weight
        self.extra = extra
        total = sum(params.style_layer_weights)
        self.layer_weights = {n: w / total for n, w in zip(params.style_layers, params.style_layer_weights)}
        with torch.no_grad():
            features = self.features(content)
            self.content_targets = {name: features[name].float() for name in params.content_layers}
            self.style_targets = {name: 0.0 for name in params.style_layers}
            per_style = []
            for style in styles:
                with autocast(precision, self.device):
                    per_style.append(style_grams(net, style, params.style_layers, targets_cache, network))
            self.guided = None
            if style_masks is None:
                for grams, weight in zip(per_style, blend):
                    for name in params.style_layers:
                        self.style_targets[name] = self.style_targets[name] + weight * grams[name]
            else:
                shapes = {name: tuple(features[name].shape[-2:]) for name in params.style_layers}
                self.guided = GuidedStyleLoss(per_style, blend, style_masks, self.layer_weights, shapes)
                self.style_targets = {}
            self.content_norms = {n: squared_norm(t) for n, t in self.content_targets.items()}
            self.style_norms = {n: squared_norm(t) for n, t in self.style_targets.items()}

    def features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(self.precision, self.device):
            return self.net(image)

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(1, 3, H, W) -> weighted (content, style, tv) losses, float32 scalars."""
        features = self.features(image)
        content = sum(content_loss(features[n], t, self.content_norms[n]) for n, t in self.content_targets.items())
        if self.guided is not None:
            style = self.guided(features)
        else:
            style = sum(
                self.layer_weights[n] * style_loss(features[n], t, self.style_norms[n])
                for n, t in self.style_targets.items()
            )
        smooth = self.tv_weight * tv_loss(image)
        if self.extra is not None:
            smooth = smooth + self.extra(image)
        return (self.content_weight * content, self.style_weight * style, smooth)

    @property
    def loss_scale(self) -> float:
        return FP16_LOSS_SCALE if self.precision == "fp16" else 1.0
