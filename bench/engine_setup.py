"""What bench/engine.py evaluates: the sample images, the engine's objective and the reference
built on them with the same weights, and one evaluation of each as a closure. A library module
of bench/ (not a package): the scripts put the repository root on sys.path."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from reference import ReferenceObjective
from timing import SEED, Evaluation

from shared.params import StyleParams
from worker.engine import StyleObjective, VGGFeatures, load_weights, resolve_precision
from worker.engine.descent import Descent
from worker.engine.images import to_tensor

REPO_ROOT = Path(__file__).resolve().parent.parent
# The sample images live beside the repository (../shared/images) in the project's
# workspace; a user's clone may not have them, and then seeded random images stand in.
DEFAULT_IMAGES = REPO_ROOT.parent / "shared" / "images"
CONTENT_FILE = "tubingen.jpg"
STYLE_FILE = "starry_night.jpg"


def load_image(path: Path, long_side: int, fallback_shape: tuple[int, int], seed: int) -> tuple[torch.Tensor, str]:
    """(1, 3, H, W) in [0, 1] with the long side `long_side`, or a seeded random stand-in."""
    if path.is_file():
        with Image.open(path) as image:
            width, height = image.size
            scale = long_side / max(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            return to_tensor(image, size), path.name
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, 3, *fallback_shape), generator=generator), f"random (no {path})"


def load_pair(images: Path, size: int) -> tuple[torch.Tensor, str, torch.Tensor, str]:
    """The content and style images at `size`, and where each came from."""
    content, content_src = load_image(images / CONTENT_FILE, size, (round(size * 3 / 4), size), SEED)
    style, style_src = load_image(images / STYLE_FILE, size, (size, size), SEED + 1)
    if min(*content.shape[-2:], *style.shape[-2:]) < 16:
        raise SystemExit(f"--size {size} is too small: conv5_1 needs at least 16 px on the short side")
    return content, content_src, style, style_src


def reference_for(weights, params: StyleParams, content: torch.Tensor, style: torch.Tensor) -> ReferenceObjective:
    return ReferenceObjective(
        {k: v.clone() for k, v in weights.state.items()},
        content,
        style,
        params.content_layers,
        params.style_layers,
        params.content_weight,
        params.style_weight,
        params.tv_weight,
        params.style_layer_weights,
    )


def start_image(content: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Near the content image, as the optimisation is, but not on it: exactly at the content
    image the content loss is 0 and its agreement would prove nothing."""
    generator = torch.Generator().manual_seed(SEED + 2)
    noise = 0.05 * torch.randn(content.shape, generator=generator)
    return (content.cpu() + noise).clamp(0, 1).to(device).requires_grad_(True)


def build(size: int, device: torch.device, images: Path, precision: str = "fp32") -> dict:
    """Both objectives, their inputs, and the image tensor they are evaluated on."""
    params = StyleParams(weights="random", precision=precision)
    precision = resolve_precision(precision, device)
    weights = load_weights(params.weights)
    content, content_src, style, style_src = load_pair(images, size)
    content, style = content.to(device), style.to(device)
    layers = (*params.content_layers, *params.style_layers)
    net = VGGFeatures(weights, layers, params.pooling).to(device)
    engine = StyleObjective(net, params, content, [style], params.style_blend_for(1), precision=precision)
    image = start_image(content, device)
    return {
        "engine": engine,
        "reference": reference_for(weights, params, content, style),
        "image": image,
        "content": content,
        "content_src": content_src,
        "style_src": style_src,
        "shape": tuple(image.shape[-2:]),
        "precision": precision,
    }


def evaluation(objective, image: torch.Tensor) -> Evaluation:
    """One forward + backward to the pixels, ending with the loss read on the host, as torch's
    L-BFGS closure does it (the reference)."""

    def run() -> torch.Tensor:
        image.grad = None
        content, style, tv = objective(image)
        total = content + style + tv
        total.backward()
        float(total.detach())
        return total

    return run


def engine_evaluation(objective: StyleObjective, image: torch.Tensor) -> Evaluation:
    """One evaluation exactly as the engine's optimizers make it: `Descent.evaluate`."""
    descent = Descent(objective, lambda x: x)

    def run() -> torch.Tensor:
        return descent.evaluate(image)[1]

    return run
