"""The optimization of Gatys, Ecker and Bethge over an image's pixels, coarse to fine.

`stylize` is a generator: it yields a `Progress` every iteration, a `Snapshot` every
`snapshot_every` iterations and at the end, and finally a `Result`. It touches no files,
prints nothing and knows nothing of jobs: its callers (the CLI, the Celery task, the tests)
own all of that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from .color import match_color, match_luminance, rgb_to_yiq, yiq_to_rgb
from .descent import Descent, ProjectedAdam, ProjectedLBFGS
from .errors import EngineError
from .events import Event, Losses, Progress, Result, Resume, Snapshot
from .images import fit_long_side, to_pil, to_tensor
from .masks import check_masks, mask_tensor
from .objective import StyleObjective, resolve_precision
from .targets import NetworkKey, TargetCache
from .vgg import LAYER_NAMES, LoadedWeights, VGGFeatures, load_weights

# Coarse scales are never smaller than this on the long side: below it VGG's deep layers
# see a handful of positions and the Gram matrices say little.
MIN_SCALE_LONG_SIDE = 64

# L-BFGS keeps 2 * history vectors the size of the image. torch's default of 100 reaches a
# given loss in fewer evaluations than 50 (bench/quality.py), and costs 1.9 GB at 1024x768;
# above a megapixel the history is halved (100 would need 7.5 GB at 2048x1536).
LBFGS_HISTORY = 100
LBFGS_HISTORY_LARGE = 50
LARGE_IMAGE_PIXELS = 1024 * 1024

# The share of the iterations the last (full-size) scale gets; the coarser scales split the
# rest. Measured by bench/quality.py: the coarse scales give the picture its layout cheaply,
# but each new scale starts L-BFGS afresh, so most of the work belongs at the final size.
FINAL_SCALE_SHARE = 0.75

# Whether L-BFGS keeps its curvature memory (upsampled) from one scale to the next instead of
# starting afresh; `bench/quality.py --carry-history no` compares the two (not measured yet, docs/benchmarks.md).
CARRY_HISTORY = True


@dataclass(frozen=True)
class Tuning:
    """The optimizer's own settings, fixed by measurement rather than asked of a user;
    bench/quality.py passes others to compare."""

    final_scale_share: float = FINAL_SCALE_SHARE
    lbfgs_history: int = LBFGS_HISTORY
    carry_history: bool = CARRY_HISTORY


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) picks the GPU when there is one; 'cuda' without one is an error."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda"):
        raise EngineError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(f"device {device!r} was asked for but no CUDA GPU is available; use cpu or auto")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise EngineError(f"there is no {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    return chosen


def scale_sizes(content_size: tuple[int, int], size: int, scales: int, min_side: int = 1) -> list[tuple[int, int]]:
    """(width, height) of each scale, coarse to fine, each about half the next; the last is `size`.

    Coarse scales under MIN_SCALE_LONG_SIDE, or with a short side under `min_side`, are dropped.
    """
    sizes: list[tuple[int, int]] = []
    for halvings in reversed(range(scales)):
        dims = fit_long_side(content_size, round(size / 2**halvings))
        if halvings and (max(dims) < MIN_SCALE_LONG_SIDE or min(dims) < min_side):
            continue
        if dims not in sizes:
            sizes.append(dims)
    return sizes


def split_iterations(iterations: int, scales: int, final_share: float = FINAL_SCALE_SHARE) -> list[int]:
    """The budget per scale: `final_share` to the last, the rest spread evenly over the
    coarser ones (their remainder to the finer of them)."""
    if scales == 1:
        return [iterations]
    coarse = int(iterations * (1 - final_share))
    base, extra = divmod(coarse, scales - 1)
    return [*(base + (1 if i >= scales - 1 - extra else 0) for i in range(scales - 1)), iterations - coarse]


def stylize(
    content: Image.Image,
    styles: Sequence[Image.Image],
    params: Any,
    *,
    device: str | torch.device | None = "auto",
    weights: LoadedWeights | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: Resume | None = None,
    targets_cache: TargetCache | None = None,
    tuning: Tuning = Tuning(),
    style_masks: Sequence[Image.Image | None] | None = None,
    init: Image.Image | None = None,
    extra_loss: Callable[[tuple[int, int], torch.device], Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> Iterator[Event]:
    """Paint `content` in the style of `styles` as `params` (a shared.params.StyleParams) say.

    `weights` lets a caller that runs many jobs load VGG-19 once; `should_stop` is polled
    between iterations, and a stop still ends in a Result holding the current best image.
    `resume` continues an interrupted run from its latest snapshot. `targets_cache` keeps
    style targets for the next run with the same style (a worker keeps one per process).
    `style_masks`, one per style (a single-channel image, or None for everywhere), confine
    each style to its region of the output (see masks.py).
    `init` replaces params.init as the first scale's start (a video frame starts from the
    previous output, warped); `extra_loss(dims, device)` gives a term added to the tv loss
    at each scale (a video frame's temporal loss, worker/engine/temporal.py).
    """
    run = _prepare(content, styles, params, device, weights, style_masks, tuning)
    run.stop, run.resume, run.targets_cache = should_stop, resume, targets_cache
    run.init, run.extra_loss = init, extra_loss
    if resume is not None and not 0 <= resume.iteration <= run.total_iterations:
        raise EngineError(f"cannot resume at iteration {resume.iteration} of {run.total_iterations}")
    state = _State(iteration=resume.iteration if resume is not None else 0)
    scale_end = 0  # iterations done by the end of this scale
    for scale_index, (dims, budget) in enumerate(zip(run.sizes, run.budgets), start=1):
        scale_end += budget
        resumed_here = False
        if resume is not None and state.best is None:  # the first scale run in a resumed job
            if resume.iteration >= scale_end and scale_index < len(run.sizes):
                continue  # finished before the interruption
            resumed_here, budget = True, scale_end - resume.iteration
        if budget == 0 and not resumed_here:
            continue
        yield from _scale(run, state, scale_index, dims, budget, resumed_here)
        if state.canceled:
            break
    yield from _finish(run, state)


@dataclass
class _Run:
    """What every scale of one run shares."""

    content: Image.Image
    styles: list[Image.Image]
    params: Any
    masks: Any
    blend: Sequence[float]
    dev: torch.device
    weights: LoadedWeights
    net: VGGFeatures
    precision: str
    network: NetworkKey
    sizes: list[tuple[int, int]]
    budgets: list[int]
    min_side: int
    generator: torch.Generator
    stop: Callable[[], bool] | None = None
    resume: Resume | None = None
    targets_cache: TargetCache | None = None
    tuning: Tuning = Tuning()
    init: Image.Image | None = None
    extra_loss: Any = None

    @property
    def luminance_only(self) -> bool:
        return self.params.preserve_colors == "luminance"

    @property
    def total_iterations(self) -> int:
        return sum(self.budgets)


@dataclass
class _State:
    """What one scale hands the next, and the run's end reads."""

    iteration: int = 0
    best: torch.Tensor | None = None  # the lowest-loss image of the scale last run
    best_losses: Losses | None = None
    initial_losses: Losses | None = None
    optimizer: ProjectedLBFGS | ProjectedAdam | None = None
    evaluations: int = 0  # objective evaluations in this run, every scale's start and trial included
    chroma: torch.Tensor | None = None  # the content's I and Q channels at the current scale, in luminance mode
    canceled: bool = False


def _prepare(content, styles, params, device, weights, style_masks, tuning: Tuning) -> _Run:
    """Check the inputs and build what every scale shares: the network, the sizes, the styles."""
    styles = list(styles)
    if not styles:
        raise EngineError("give at least one style image")
    masks = check_masks(style_masks, len(styles))
    try:
        blend = params.style_blend_for(len(styles))
    except ValueError as err:
        raise EngineError(str(err)) from None
    dev = resolve_device(device)
    layers = (*params.content_layers, *params.style_layers)
    # The rule is the params model's, so the web refuses at submission what would fail here.
    problem = params.output_size_problem(content.size)
    if problem is not None:
        raise EngineError(problem)
    min_side = params.min_short_side()
    sizes = scale_sizes(content.size, params.size, params.scales, min_side)
    weights = weights if weights is not None else load_weights(params.weights)
    net = VGGFeatures(weights, layers, params.pooling).to(dev)
    precision = resolve_precision(getattr(params, "precision", "auto"), dev)
    network = NetworkKey(weights.state, params.pooling, str(dev), precision)
    if params.preserve_colors == "histogram":
        # Gatys et al. 2017, section 3.1: recolour the style images to the content's
        # colour statistics (measured at the output size) before anything else.
        # Styles are first shrunk to the largest size they will be used at.
        reference = to_tensor(content, sizes[-1])
        largest = max(round(params.style_scale * params.size), min_side)
        styles = [to_pil(match_color(to_tensor(s, _shrunk(s.size, largest)), reference)) for s in styles]
    budgets = split_iterations(params.iterations, len(sizes), tuning.final_scale_share)
    return _Run(
        content, styles, params, masks, blend, dev, weights, net, precision, network, sizes, budgets, min_side,
        torch.Generator().manual_seed(params.seed), tuning=tuning,
    )  # fmt: skip


def _scale(run: _Run, state: _State, scale_index: int, dims: tuple[int, int], budget: int, resumed_here: bool):
    """One scale: its targets and objective, where it starts, and its iterations' events."""
    params, dev = run.params, run.dev
    style_long = max(round(params.style_scale * max(dims)), run.min_side)
    content_t = to_tensor(run.content, dims).to(dev)
    style_ts = [to_tensor(s, fit_long_side(s.size, style_long)).to(dev) for s in run.styles]
    if min(min(s.shape[-2:]) for s in style_ts) < run.min_side:
        layers = (*params.content_layers, *params.style_layers)
        raise EngineError(
            f"a style image is too narrow for layer {max(layers, key=LAYER_NAMES.index)} at "
            f"this size; raise the style scale or use a less elongated style image"
        )
    if run.luminance_only:
        # Gatys et al. 2017, section 3.2: optimise the luminance alone, on luminance
        # targets whose statistics match the content's; colour comes back from the content.
        content_yiq = rgb_to_yiq(content_t)
        state.chroma = content_yiq[:, 1:]
        content_t = content_yiq[:, :1]
        style_ts = [match_luminance(rgb_to_yiq(s)[:, :1], content_t) for s in style_ts]
    render = (lambda y: y.expand(-1, 3, -1, -1)) if run.luminance_only else (lambda x: x)
    objective = StyleObjective(
        run.net,
        params,
        render(content_t),
        [render(s) for s in style_ts],
        run.blend,
        targets_cache=run.targets_cache,
        network=run.network,
        precision=run.precision,
        style_masks=None if run.masks is None else [mask_tensor(m, dims).to(dev) for m in run.masks],
        extra=run.extra_loss(dims, dev) if run.extra_loss is not None else None,
    )
    start = _start(run, state, dims, content_t, style_ts, resumed_here)
    optimizer = _optimizer(Descent(objective, render), start, params, dims, state.optimizer, run.tuning)
    state.optimizer = optimizer
    state.initial_losses = state.initial_losses or optimizer.losses
    total = run.total_iterations
    for _ in range(budget):
        if run.stop is not None and run.stop():
            state.canceled = True
            break
        losses = optimizer.step()
        state.iteration += 1
        done = state.evaluations + optimizer.descent.evaluations
        yield Progress(state.iteration, total, scale_index, len(run.sizes), dims, losses, done)
        if params.snapshot_every and state.iteration % params.snapshot_every == 0 and state.iteration < total:
            yield Snapshot(state.iteration, to_pil(_to_rgb(optimizer.best, state.chroma)), optimizer.best_losses)
    state.evaluations += optimizer.descent.evaluations
    state.best, state.best_losses = optimizer.best, optimizer.best_losses


def _start(run: _Run, state: _State, dims, content_t, style_ts, resumed_here: bool) -> torch.Tensor:
    """Where a scale's optimization starts: the resumed snapshot, the previous scale's best
    upsampled, the given initial image, or params.init."""
    if resumed_here:
        assert run.resume is not None
        start = to_tensor(run.resume.image, dims).to(run.dev)
        return rgb_to_yiq(start)[:, :1] if run.luminance_only else start
    if state.best is not None:
        return F.interpolate(state.best, size=(dims[1], dims[0]), mode="bicubic", align_corners=False)
    if run.init is not None:
        start = to_tensor(run.init, dims).to(run.dev)
        return rgb_to_yiq(start)[:, :1] if run.luminance_only else start
    if run.params.init == "content":
        return content_t
    if run.params.init == "style":
        return F.interpolate(style_ts[0], size=(dims[1], dims[0]), mode="bicubic", align_corners=False)
    return torch.rand(content_t.shape, generator=run.generator).to(run.dev)


def _finish(run: _Run, state: _State) -> Iterator[Event]:
    """The final snapshot (the output, at the final size) and the Result."""
    final_size = run.sizes[-1]
    output = _to_rgb(state.best, state.chroma)
    if output.shape[-2:] != (final_size[1], final_size[0]):  # canceled at a coarse scale
        output = F.interpolate(output, size=(final_size[1], final_size[0]), mode="bicubic", align_corners=False)
    picture = to_pil(output)
    yield Snapshot(state.iteration, picture, state.best_losses, final=True)
    weights = run.weights
    yield Result(
        picture,
        state.iteration,
        state.best_losses,
        state.initial_losses,
        state.canceled,
        weights.source,
        weights.warning,
        str(run.dev),
        run.precision,
    )


def _optimizer(
    descent: Descent,
    start: torch.Tensor,
    params: Any,
    dims: tuple[int, int],
    previous: ProjectedLBFGS | ProjectedAdam | None,
    tuning: Tuning,
) -> ProjectedLBFGS | ProjectedAdam:
    """The optimizer of one scale; an L-BFGS takes over the previous scale's curvature memory."""
    if params.optimizer == "adam":
        return ProjectedAdam(descent, start, params.learning_rate)
    history = tuning.lbfgs_history
    if dims[0] * dims[1] > LARGE_IMAGE_PIXELS:
        history = min(history, LBFGS_HISTORY_LARGE)
    optimizer = ProjectedLBFGS(descent, start, history, params.learning_rate)
    if tuning.carry_history and isinstance(previous, ProjectedLBFGS):
        optimizer.take_memory(previous)
    return optimizer


def _shrunk(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """`size` scaled down (never up) so its long side is at most `long_side`."""
    return size if max(size) <= long_side else fit_long_side(size, long_side)


def _to_rgb(image: torch.Tensor, chroma: torch.Tensor | None) -> torch.Tensor:
    """The optimised variable as an RGB image: itself, or luminance joined with the content's chroma."""
    if chroma is None:
        return image
    return yiq_to_rgb(torch.cat([image, chroma], dim=1)).clamp(0, 1)
