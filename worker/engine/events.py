"""What `stylize` yields, and how a run is resumed: plain values, no tensors."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from PIL import Image


@dataclass(frozen=True)
class Losses:
    """Weighted loss terms of one image; total = content + style + tv."""

    content: float
    style: float
    tv: float
    total: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Progress:
    """One iteration done: the losses of the iterate it accepted (a valid image in [0, 1])."""

    iteration: int  # 1-based, counted across all scales
    iterations: int  # the whole budget
    scale: int  # 1-based
    scales: int
    size: tuple[int, int]  # (width, height) at this scale
    losses: Losses
    evaluations: int = 0  # objective evaluations so far in this run, line-search trials included


@dataclass(frozen=True)
class Snapshot:
    """An image and its losses: at an interval, the lowest-loss image of the current scale so far
    (with L-BFGS, which only accepts descending steps, that is the iterate of `iteration`), at
    that scale's size; at the end (`final`), the output image. A resume starts from it."""

    iteration: int
    image: Image.Image
    losses: Losses
    final: bool = False


@dataclass(frozen=True)
class Result:
    """The output: the lowest-loss image of the last scale reached, at the requested size.

    `losses` are that image's at the scale it was made; they differ a little from the
    upscaled output's when a cancel came before the last scale.
    """

    image: Image.Image
    iterations: int  # iterations actually run
    losses: Losses  # of the output image
    initial_losses: Losses  # of the first iteration's image
    canceled: bool
    weights: str  # "imagenet", "random" or the file used
    weights_warning: str | None
    device: str
    precision: str = "fp32"  # what the convolutions ran in: fp32, bf16 or fp16

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


Event = Progress | Snapshot | Result


@dataclass(frozen=True)
class Resume:
    """Where an interrupted run left off: its image after `iteration` iterations (a snapshot).

    The run goes on from there: the scale that iteration falls in starts from `image`, and the
    iteration count continues rather than starting over.
    """

    iteration: int
    image: Image.Image
