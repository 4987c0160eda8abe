"""The job parameters: every engine option with its default and its limits, written once.

The command line derives its flags from this model, the web form and the API validate
against it, and the engine reads it. Nothing here imports torch.

Where each default comes from, and where Impasto departs from it:
- Layers: content relu4_2, style relu1_1, relu2_1, relu3_1, relu4_1, relu5_1, the rectified
  outputs that Gatys, Ecker and Bethge's own PyTorch code (leongatys/PytorchNeuralStyleTransfer:
  r42; r11, r21, r31, r41, r51), jcjohnson/neural-style and crowsonkb/style-transfer-pytorch
  read. (PyTorch's tutorial reads the convolutions before the ReLU; conv* and pool* names
  stay selectable.)
- Style layer weights 256:64:16:4:1, shallow to deep, are crowsonkb/style-transfer-pytorch's
  (normalised here to sum to 1); Gatys et al. weight the five layers equally.
- Loss normalisation departs from the paper: every content and style term is a relative
  error, ‖x - t‖² / ‖t‖² (worker/engine/losses.py), where the paper divides by fixed sizes.
  That makes the terms, hence these weights, independent of how large a checkpoint's
  activations are (torchvision's, Caffe's fed 0-255 input, or the random test weights).
  The content:style ratio, 1 : STYLE_WEIGHT, is therefore Impasto's own: no published
  configuration uses these units (docs/benchmarks.md, "Issue 12", says how it was chosen).
- Departures beside the losses: a light total-variation term (not in the paper), two scales
  coarse to fine (the paper optimises at one size), pixels kept in [0, 1] by projection (the
  paper leaves them free), average pooling (as the paper recommends; max stays selectable),
  and the optimization starts from the content image (the paper starts from noise).
"""

from __future__ import annotations

import math
import types
from typing import Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# VGG-19 ("configuration E"): convolutions per block, each followed by a ReLU, each block
# closed by a pooling layer. The engine derives the same names from torchvision's own
# module list; tests/test_vgg.py checks that the two agree.
VGG19_BLOCKS = (2, 2, 4, 4, 4)


def vgg19_layer_names() -> tuple[str, ...]:
    """Names of VGG-19's feature layers in order: conv1_1, relu1_1, conv1_2, ..., pool5."""
    names: list[str] = []
    for block, convs in enumerate(VGG19_BLOCKS, start=1):
        for i in range(1, convs + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return tuple(names)


VGG19_LAYERS = vgg19_layer_names()

# The learning rate used when none is given: L-BFGS takes unit steps scaled by its own
# curvature estimate; Adam moves pixels in [0, 1], and 0.02 is the step of
# crowsonkb/style-transfer-pytorch.
DEFAULT_LEARNING_RATES = {"lbfgs": 1.0, "adam": 0.02}

WEIGHT_CHOICES = ("auto", "imagenet", "random")

# What the VGG convolutions run in (Gram matrices and losses are always float32): auto is bf16
# on a CUDA GPU that has it, fp32 otherwise.
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")

DEFAULT_CONTENT_LAYERS = ("relu4_2",)
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def default_layer_weights(count: int) -> tuple[float, ...]:
    """crowsonkb/style-transfer-pytorch's layer weights, each layer 4x the next deeper one:
    256:64:16:4:1 for five (the engine normalises them to sum to 1)."""
    return tuple(4.0 ** (count - 1 - i) for i in range(count))


# The content:style:tv balance in the units of the relative losses (see the module docstring
# and docs/benchmarks.md, "Issue 12").
STYLE_WEIGHT = 1.0
TV_WEIGHT = 0.02
# The temporal loss is a mean squared pixel difference (values in [0, 1]), so its weight is
# large beside the relative errors: bench/video.py measures the flicker it removes.
TEMPORAL_WEIGHT = 100.0

# Relative weights (per style layer, per style image) are normalised or multiplied by the
# absolute ones; the cap keeps their sum finite.
MAX_RELATIVE_WEIGHT = 1e6

# What the validators below check, said in the model's JSON schema too (the API's OpenAPI
# document is built from it). Tuple elements stay plain so the command line can parse them.
_LAYER_LIST_SCHEMA = {"items": {"type": "string", "enum": list(VGG19_LAYERS)}, "uniqueItems": True}
_WEIGHT_LIST_SCHEMA = {"items": {"type": "number", "minimum": 0, "maximum": MAX_RELATIVE_WEIGHT}, "minItems": 1}


class StyleParams(BaseModel):
    """Everything that shapes one stylization, with defaults that work without tuning."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    size: int = Field(512, ge=16, le=8192, description="long side of the output in pixels")
    iterations: int = Field(
        500,
        ge=1,
        le=100_000,
        description="optimizer iterations in all: three quarters at the final size, the rest at the coarser scales",
    )
    optimizer: Literal["lbfgs", "adam"] = Field("lbfgs", description="the optimizer over the pixels")
    learning_rate: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="step size (default: 1.0 for lbfgs, 0.02 for adam)",
    )
    init: Literal["content", "style", "noise"] = Field("content", description="the image the optimization starts from")
    pooling: Literal["avg", "max"] = Field("avg", description="VGG pooling; the paper prefers average pooling")
    content_weight: float = Field(
        1.0, ge=0, le=1e12, description="weight of the content loss (a relative error: 1 is the content's own size)"
    )
    style_weight: float = Field(
        STYLE_WEIGHT, ge=0, le=1e12, description="weight of the style loss (relative errors of the Gram matrices)"
    )
    # Not in the paper; a light smoothing of the speckle the optimizer leaves.
    tv_weight: float = Field(TV_WEIGHT, ge=0, le=1e12, description="weight of the total-variation smoothing")
    # Ruder, Dosovitskiy and Brox's temporal loss, in this engine's units (docs/benchmarks.md, "Issue 15").
    temporal_weight: float = Field(
        TEMPORAL_WEIGHT,
        ge=0,
        le=1e12,
        description="clips only: weight of the temporal loss holding each frame to the previous stylized "
        "frame, warped by the optical flow, where that stays visible (0: frames stylized alone)",
    )
    content_layers: tuple[str, ...] = Field(
        DEFAULT_CONTENT_LAYERS,
        min_length=1,
        max_length=8,
        description="layers that carry the content",
        json_schema_extra=_LAYER_LIST_SCHEMA,
    )
    style_layers: tuple[str, ...] = Field(
        DEFAULT_STYLE_LAYERS,
        min_length=1,
        max_length=16,
        description="layers whose Gram matrices carry the style",
        json_schema_extra=_LAYER_LIST_SCHEMA,
    )
    style_layer_weights: tuple[float, ...] | None = Field(
        None,
        description="one weight per style layer, as many as style_layers; normalised to sum to 1 "
        "(default: each layer 4x the next deeper one, 256:64:16:4:1 for five)",
        json_schema_extra={**_WEIGHT_LIST_SCHEMA, "maxItems": 16},
    )
    style_blend: tuple[float, ...] | None = Field(
        None,
        description="one weight per style image, as many as there are style images (default: equal)",
        json_schema_extra=_WEIGHT_LIST_SCHEMA,
    )
    style_scale: float = Field(1.0, ge=0.1, le=4.0, description="size of the style image relative to the output")
    preserve_colors: Literal["none", "luminance", "histogram"] = Field(
        "none",
        description="keep the content's colours: luminance-only transfer, or match the "
        "style's colour statistics to the content's first",
    )
    scales: int = Field(
        2,  # bench/quality.py: two scales reach a given loss in the fewest evaluations
        ge=1,
        le=8,
        description="coarse-to-fine: number of sizes, each half the next (none under 64 px)",
    )
    snapshot_every: int | None = Field(
        None,
        ge=0,
        le=100_000,
        description="report the current image every N iterations (default: about 10 in all; 0: only at the end)",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed for noise init; a CPU run repeats bit for bit")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="what the VGG convolutions run in: auto is bf16 on a CUDA GPU that has it, "
        "fp32 on the CPU; Gram matrices and losses are always float32",
    )
    weights: str = Field(
        "auto",
        min_length=1,
        max_length=4096,
        description="VGG-19 weights: auto, imagenet, random, or a path to a .pth file",
    )

    @field_validator("content_layers", "style_layers")
    @classmethod
    def _known_layers(cls, layers: tuple[str, ...]) -> tuple[str, ...]:
        for name in layers:
            if name not in VGG19_LAYERS:
                raise ValueError(
                    f"unknown VGG-19 layer {name!r}; use names like conv4_2, relu4_2 or pool4 (conv1_1 to conv5_4)"
                )
        if len(set(layers)) != len(layers):
            raise ValueError(f"a layer is named twice in {' '.join(layers)}; name each once")
        return layers

    @field_validator("style_layer_weights", "style_blend")
    @classmethod
    def _non_negative(cls, values: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if values is None:
            return None
        if not values:
            raise ValueError("give at least one number")
        if any(not math.isfinite(v) or not 0 <= v <= MAX_RELATIVE_WEIGHT for v in values):
            raise ValueError(f"every weight must be a finite number >= 0 and at most {MAX_RELATIVE_WEIGHT:,.0f}")
        if sum(values) <= 0:
            raise ValueError("at least one weight must be positive")
        return values

    @field_validator("style_layer_weights")
    @classmethod
    def _one_weight_per_layer(cls, values: tuple[float, ...] | None, info: ValidationInfo):
        layers = info.data.get("style_layers")  # absent when the layers were invalid
        if values is not None and layers is not None and len(values) != len(layers):
            raise ValueError(f"{len(values)} numbers for {len(layers)} style layers; give one weight per layer")
        return values

    @model_validator(mode="after")
    def _fill_dependent_defaults(self) -> StyleParams:
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATES[self.optimizer]
        if self.style_layer_weights is None:
            self.style_layer_weights = default_layer_weights(len(self.style_layers))
        if self.snapshot_every is None:
            self.snapshot_every = max(1, round(self.iterations / 10))
        return self

    def style_blend_for(self, count: int) -> tuple[float, ...]:
        """The blend weights for `count` style images, normalised to sum to 1."""
        blend = self.style_blend if self.style_blend is not None else (1.0,) * count
        if len(blend) != count:
            raise ValueError(f"{len(blend)} numbers for {count} style images; give one weight per style image")
        total = sum(blend)
        return tuple(b / total for b in blend)

    def min_short_side(self) -> int:
        """The shortest image side whose features still exist at the deepest layer used: each
        pooling layer up to it (pool5 included: it needs a 2x2 input) halves the image."""
        layers = (*self.content_layers, *self.style_layers)
        deepest = max(VGG19_LAYERS.index(name) for name in layers)
        return 2 ** sum(1 for name in VGG19_LAYERS[: deepest + 1] if name.startswith("pool"))

    def output_size_problem(self, content_size: tuple[int, int]) -> str | None:
        """Why a content image of `content_size` (width, height) cannot be painted at this
        size (its short side, scaled with the long side to `size`, is under
        `min_short_side`), or None. The web checks it at submission, the engine before it runs."""
        width, height = content_size
        scale = self.size / max(width, height)
        out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
        need = self.min_short_side()
        if min(out_w, out_h) >= need:
            return None
        side = "height" if out_h < out_w else "width"
        deepest = max((*self.content_layers, *self.style_layers), key=VGG19_LAYERS.index)
        return (
            f"the output would be {out_w}x{out_h} px at size {self.size}: its {side} of "
            f"{min(out_w, out_h)} px is too small, layer {deepest} needs at least {need} px on the "
            f"short side; ask for a larger size, or crop the image to a less extreme aspect ratio"
        )


def is_list_field(name: str) -> bool:
    """Whether the StyleParams field takes several values (its type is a tuple, or one or None)."""
    annotation = StyleParams.model_fields[name].annotation
    options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return any(get_origin(option) is tuple for option in options)
