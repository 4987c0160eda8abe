"""Time to quality: how soon `stylize` with its defaults reaches the loss of a plain L-BFGS.

- reference: plain torch L-BFGS (strong-Wolfe line search, torch's default history of 100)
  over the pixels of the content image, on the textbook objective of bench/engine.py (the
  engine's relative losses, written out independently) at the final size, for 500
  iterations, its loss taken on the pixels clamped to [0, 1] as the classic implementations
  do. Its lowest loss after those iterations is the target.
- engine: `stylize` with the default StyleParams (but size 256 and random weights): coarse
  to fine. Its losses at coarse scales are of a smaller image and cannot be compared; from
  the moment the last (full-size) scale begins, its reported loss is the same objective on
  the same images as the reference's (checked below by re-evaluating the output).

Both timings start before anything is built (network, targets), so setup counts for both.
The script prints when each first reaches the target, the ratio, and the evaluations spent
(counted in full-size evaluations: a coarse one costs its share of the pixels), a figure
that does not depend on how busy the machine is.

    python bench/quality.py                          # the issue's check: 256 px, 500 iterations
    python bench/quality.py --reference-iterations 200   # a shorter (capped) reference
    python bench/quality.py --skip-reference 0.0416 --scales 3 --final-share 0.333 --history 50
                                                     # another schedule (here the old defaults)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
if str(REPO_ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "bench"))

from engine import ReferenceObjective, device_name  # noqa: E402  (bench/engine.py)

from shared.params import StyleParams  # noqa: E402
from worker.engine import Progress, Result, load_weights, optimize, stylize  # noqa: E402
from worker.engine.images import fit_long_side, to_tensor  # noqa: E402

DEFAULT_IMAGES = REPO_ROOT / "tests" / "data"
CONTENT_FILE = "tubingen.jpg"
STYLE_FILE = "starry_night.jpg"


def load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def reference_objective(weights, params: StyleParams, content: Image.Image, style: Image.Image):
    """The textbook objective on the images exactly as the engine sees them at its last scale."""
    dims = fit_long_side(content.size, params.size)
    style_dims = fit_long_side(style.size, max(round(params.style_scale * max(dims)), 1))
    content_t, style_t = to_tensor(content, dims), to_tensor(style, style_dims)
    objective = ReferenceObjective(
        {k: v.clone() for k, v in weights.state.items()},
        content_t,
        style_t,
        params.content_layers,
        params.style_layers,
        params.content_weight,
        params.style_weight,
        params.tv_weight,
        params.style_layer_weights,
    )
    return objective, content_t


def total_loss(objective, pixels: torch.Tensor) -> torch.Tensor:
    content, style, tv = objective(pixels.clamp(0, 1))  # the loss of a valid image, as the engine takes it
    return content + style + tv


def run_reference(weights, params: StyleParams, content: Image.Image, style: Image.Image, iterations: int) -> dict:
    """Plain L-BFGS from the content image, as the classic implementations run it: one
    `step` of `iterations` iterations (so no point is evaluated twice).

    The curve has one point per iteration: (seconds, best loss so far, evaluations so far),
    taken at the first evaluation of the next iteration, or at the end for the last one.
    """
    start = time.perf_counter()
    objective, content_t = reference_objective(weights, params, content, style)
    image = content_t.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [image],
        lr=1.0,
        max_iter=iterations,
        max_eval=iterations * 20,
        history_size=100,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )
    best = float("inf")
    evaluations = 0
    curve: list[tuple[float, float, int]] = []

    def closure() -> torch.Tensor:
        nonlocal best, evaluations
        # Iterations finished so far: torch counts the current one as begun once it evaluates.
        done = max(optimizer.state[image].get("n_iter", 0) - 1, 0) if optimizer.state else 0
        while len(curve) < done:  # an iteration just ended: record where it left things
            curve.append((time.perf_counter() - start, best, evaluations))
        optimizer.zero_grad(set_to_none=True)
        loss = total_loss(objective, image)
        loss.backward()
        evaluations += 1
        best = min(best, float(loss.detach()))
        return loss

    optimizer.step(closure)
    while len(curve) < iterations:
        curve.append((time.perf_counter() - start, best, evaluations))
    return {"curve": curve, "seconds": curve[-1][0], "loss": best, "evaluations": evaluations}


def run_engine(weights, params: StyleParams, content: Image.Image, style: Image.Image, tuning: optimize.Tuning) -> dict:
    """`stylize`; (seconds, best full-size loss so far, cost in full-size evaluations) per iteration.

    Every evaluation of the objective is counted (the engine reports them in its progress
    events), weighted by its pixels over the final size's (a coarse one costs its share): a
    cost that does not depend on how busy the machine is.
    """
    final = fit_long_side(content.size, params.size)
    cost, counted = 0.0, 0
    curve = []  # only at the last scale, where the losses are of the full-size image
    best = float("inf")
    result = None
    start = time.perf_counter()
    for event in stylize(content, [style], params, device="cpu", weights=weights, tuning=tuning):
        if isinstance(event, Progress):
            cost += (event.evaluations - counted) * event.size[0] * event.size[1] / (final[0] * final[1])
            counted = event.evaluations
            if event.scale == event.scales:
                best = min(best, event.losses.total)
                curve.append((time.perf_counter() - start, best, cost))
        elif isinstance(event, Result):
            result = event
    seconds = time.perf_counter() - start
    return {"curve": curve, "seconds": seconds, "loss": best, "result": result}


def first_reaching(curve: list[tuple[float, float, float]], target: float) -> tuple[float, float] | None:
    for seconds, loss, cost in curve:
        if loss <= target:
            return seconds, cost
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="long side in pixels (default 256)")
    parser.add_argument(
        "--reference-iterations",
        type=int,
        default=500,
        help="L-BFGS iterations of the reference (default 500, the issue's figure)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        default=DEFAULT_IMAGES,
        help=f"folder with {CONTENT_FILE} and {STYLE_FILE} (default tests/data)",
    )
    parser.add_argument(
        "--skip-reference",
        type=float,
        default=None,
        metavar="LOSS",
        help="use this target loss instead of running the reference (for quick trials)",
    )
    variants = parser.add_argument_group("other schedules than the defaults, to compare them")
    variants.add_argument("--scales", type=int, default=None, help="coarse-to-fine scales")
    variants.add_argument(
        "--final-share",
        type=float,
        default=None,
        help=f"share of the iterations at the final size (default {optimize.FINAL_SCALE_SHARE})",
    )
    variants.add_argument(
        "--history", type=int, default=None, help=f"L-BFGS history (default {optimize.LBFGS_HISTORY})"
    )
    variants.add_argument(
        "--carry-history",
        choices=("yes", "no"),
        default=None,
        help="whether L-BFGS keeps its memory from one scale to the next "
        f"(default {'yes' if optimize.CARRY_HISTORY else 'no'})",
    )
    args = parser.parse_args(argv)
    default = optimize.Tuning()
    tuning = optimize.Tuning(
        final_scale_share=default.final_scale_share if args.final_share is None else args.final_share,
        lbfgs_history=default.lbfgs_history if args.history is None else args.history,
        carry_history=default.carry_history if args.carry_history is None else args.carry_history == "yes",
    )

    torch.manual_seed(0)
    weights = load_weights("random")
    params = StyleParams(
        size=args.size, weights="random", **({"scales": args.scales} if args.scales is not None else {})
    )
    content, style = load(args.images / CONTENT_FILE), load(args.images / STYLE_FILE)
    print(
        f"torch {torch.__version__}, cpu ({device_name(torch.device('cpu'))}), {torch.get_num_threads()} "
        f"threads; content {CONTENT_FILE} {content.size}, style {STYLE_FILE} {style.size} from {args.images}"
    )
    print(
        f"engine: size {params.size}, {params.iterations} iterations over {params.scales} scales "
        f"({tuning.final_scale_share:g} of them at the final size), {params.optimizer} "
        f"(history {tuning.lbfgs_history}, carried across scales: {tuning.carry_history}), init {params.init}"
    )

    engine = run_engine(weights, params, content, style, tuning)
    first = engine["curve"][0]
    print(
        f"engine: {engine['result'].iterations} iterations in {engine['seconds']:.1f} s; the last scale began "
        f"after {first[0]:.1f} s (cost {first[2]:.0f} full-size evaluations) at loss {first[1]:.6g}; "
        f"best full-size loss {engine['loss']:.6g}",
        flush=True,
    )
    if args.skip_reference is None:
        reference = run_reference(weights, params, content, style, args.reference_iterations)
        target = reference["loss"]
    else:
        reference, target = None, args.skip_reference

    # The engine's reported last-scale losses are the reference objective's: check on its output.
    objective, _ = reference_objective(weights, params, content, style)
    with torch.no_grad():
        output_loss = float(total_loss(objective, to_tensor(engine["result"].image)))

    print()
    if reference is not None:
        print(
            f"reference: {args.reference_iterations} L-BFGS iterations, {reference['evaluations']} evaluations, "
            f"{reference['seconds']:.1f} s, loss {reference['loss']:.6g} (the target)"
        )
        for fraction in (0.1, 0.25, 0.5, 1.0):
            i = max(1, round(fraction * args.reference_iterations))
            seconds, loss, evaluations = reference["curve"][i - 1]
            print(f"  after {i:4d} iterations: {seconds:7.1f} s, {evaluations:4d} evaluations, loss {loss:.6g}")
    else:
        print(f"reference skipped; target loss {target:.6g} given on the command line")
    last = engine["curve"][-1]
    print(
        f"engine: {engine['result'].iterations} iterations, {engine['seconds']:.1f} s, "
        f"best full-size loss {engine['loss']:.6g} (cost {last[2]:.0f} full-size evaluations); "
        f"its output PNG re-evaluated by the reference objective: {output_loss:.6g}"
    )
    reached = first_reaching(engine["curve"], target)
    if reached is None:
        print(f"engine: did NOT reach the target; its best is {engine['loss'] / target:.3f}x the target")
        return
    seconds, cost = reached
    print(f"engine reaches the target after {seconds:.1f} s ({cost:.0f} full-size evaluations)")
    if reference is not None:
        print(
            f"time to quality, engine / reference: {seconds / reference['seconds']:.3f} "
            f"(goal <= 0.30); evaluations, engine (full-size equivalents) / reference: "
            f"{cost / reference['evaluations']:.3f}"
        )


if __name__ == "__main__":
    main()
