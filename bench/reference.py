"""The textbook reference objective that bench/engine.py and bench/quality.py measure the engine
against: Gatys et al.'s loss written out the obvious way, sharing no engine code but the weights.

A library module of bench/ (not a package): the scripts put the repository root on sys.path.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from shared.params import vgg19_layer_names


class ReferenceObjective:
    """Gatys et al.'s loss the textbook way: normalise, run VGG, Gram = F Fᵀ / (C·H·W), each
    term a relative squared error ‖x - t‖² / ‖t‖² (the engine's normalisation), the style
    layers weighted by `layer_weights` normalised to sum to 1."""

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(
        self,
        state: dict[str, torch.Tensor],
        content: torch.Tensor,
        style: torch.Tensor,
        content_layers: tuple[str, ...],
        style_layers: tuple[str, ...],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
        layer_weights: tuple[float, ...] | None = None,
    ):
        layer_weights = layer_weights or (1.0,) * len(style_layers)
        self.layer_weights = [w / sum(layer_weights) for w in layer_weights]
        # Named by shared.params (derived from the block sizes), not by the engine, so that
        # an off-by-one in either shows up as a loss mismatch.
        names = vgg19_layer_names()
        wanted = set(content_layers) | set(style_layers)
        depth = max(names.index(n) for n in wanted) + 1  # cut after the deepest wanted layer
        device = content.device
        self.net = textbook_vgg(state, depth).to(device).eval().requires_grad_(False)
        self.names = names[:depth]
        self.content_layers = content_layers
        self.style_layers = style_layers
        self.content_weight, self.style_weight, self.tv_weight = content_weight, style_weight, tv_weight
        self.mean = torch.tensor(self.MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.STD, device=device).view(1, 3, 1, 1)
        with torch.no_grad():
            feats = self.features(content)
            self.content_targets = {n: feats[n] for n in content_layers}
            feats = self.features(style)
            self.style_targets = {n: self.gram(feats[n]) for n in style_layers}

    def features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (image - self.mean) / self.std
        out = {}
        for name, layer in zip(self.names, self.net):
            x = layer(x)
            out[name] = x
        return out

    @staticmethod
    def relative(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((x - target) ** 2).sum() / (target**2).sum()

    @staticmethod
    def gram(f: torch.Tensor) -> torch.Tensor:
        _, c, h, w = f.shape
        flat = f.view(c, h * w)
        return flat @ flat.t() / (c * h * w)

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.features(image)
        content = sum(self.relative(feats[n], self.content_targets[n]) for n in self.content_layers)
        style = sum(
            w * self.relative(self.gram(feats[n]), self.style_targets[n])
            for n, w in zip(self.style_layers, self.layer_weights)
        )
        dy = image[..., 1:, :] - image[..., :-1, :]
        dx = image[..., :, 1:] - image[..., :, :-1]
        tv = (dy**2).mean() + (dx**2).mean()
        return self.content_weight * content, self.style_weight * style, self.tv_weight * tv


def textbook_vgg(state: dict[str, torch.Tensor], depth: int) -> nn.Sequential:
    """torchvision's VGG-19 features with `state`, cut after `depth` layers, non-inplace ReLU
    and average pooling."""
    features = make_layers(cfgs["E"])
    features.load_state_dict(state)
    modules: list[nn.Module] = []
    for module in list(features)[:depth]:
        if isinstance(module, nn.ReLU):
            module = nn.ReLU(inplace=False)
        elif isinstance(module, nn.MaxPool2d):
            module = nn.AvgPool2d(kernel_size=2, stride=2)
        modules.append(module)
    return nn.Sequential(*modules)
