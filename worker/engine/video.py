"""A clip, frame by frame: each frame is one `stylize` run, started from the previous output
warped by the optical flow and held to it by the temporal loss (worker/engine/temporal.py).

`stylize_frames` is a generator like `stylize`: it yields a `FrameProgress` for every
iteration and a `FrameDone` with each finished frame. It knows nothing of files or jobs, so
the CLI and a worker running one segment of a clip call it the same way; `previous` lets a
segment (or a resumed one) continue from a frame finished before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .events import Progress, Result
from .optimize import resolve_device, stylize
from .targets import TargetCache
from .temporal import TemporalLoss, temporal_prior
from .vgg import LoadedWeights, load_weights

# A frame that starts from the previous output is already close: it runs at the final size
# only, with this share of the iterations (Ruder et al. give later frames half the first's).
FOLLOWING_FRAME_SHARE = 0.5


@dataclass(frozen=True)
class FrameProgress:
    """One iteration of frame `frame` (0-based, counted in the whole clip)."""

    frame: int
    progress: Progress


@dataclass(frozen=True)
class FrameDone:
    """A finished frame: its picture, the engine's result, and the share of its pixels the
    temporal loss held (None for a frame stylized alone)."""

    frame: int
    image: Image.Image
    result: Result
    coverage: float | None


FrameEvent = FrameProgress | FrameDone


def following_params(params: Any) -> Any:
    """The params of a frame that starts from the previous output: one scale, fewer iterations."""
    iterations = max(1, round(params.iterations * FOLLOWING_FRAME_SHARE))
    return params.model_copy(update={"scales": 1, "iterations": iterations, "snapshot_every": 0})


def stylize_frames(
    frames: Iterable[Image.Image],
    styles: Sequence[Image.Image],
    params: Any,
    *,
    start: int = 0,
    previous: tuple[Image.Image, Image.Image] | None = None,
    device: str | torch.device | None = "auto",
    weights: LoadedWeights | None = None,
    should_stop: Callable[[], bool] | None = None,
    targets_cache: TargetCache | None = None,
) -> Iterator[FrameEvent]:
    """Stylize `frames` (clip frames `start`, `start` + 1, ...) in order, each held to the last.

    `previous` is (content, output) of the frame before `start`, when one was finished before;
    params.temporal_weight 0 stylizes every frame alone. A stop ends the generator after the
    current frame's iteration, without a FrameDone for the unfinished frame."""
    dev = resolve_device(device)
    weights = weights if weights is not None else load_weights(params.weights)
    cache = targets_cache if targets_cache is not None else TargetCache()
    later = following_params(params)
    luminance = params.preserve_colors == "luminance"
    previous_content, previous_output = previous if previous is not None else (None, None)
    for index, content in enumerate(frames, start=start):
        init, loss, coverage, frame_params = None, None, None, params
        if previous_output is not None and params.temporal_weight > 0:
            prior = temporal_prior(previous_content, content, previous_output)
            term = TemporalLoss(prior, params.temporal_weight, luminance=luminance)
            init, loss, coverage, frame_params = prior.start, term.at, prior.coverage, later
        result = None
        for event in stylize(
            content,
            styles,
            frame_params,
            device=dev,
            weights=weights,
            should_stop=should_stop,
            targets_cache=cache,
            init=init,
            extra_loss=loss,
        ):
            if isinstance(event, Progress):
                yield FrameProgress(index, event)
            elif isinstance(event, Result):
                result = event
        if result is None or result.canceled:
            return
        yield FrameDone(index, result.image, result, coverage)
        previous_content, previous_output = content, result.image
