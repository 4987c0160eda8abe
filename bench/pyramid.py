"""Time to quality with the pixels parameterized as an image pyramid (a trial for item 2).

The same objective, images and weights as bench/quality.py's reference: plain L-BFGS at the
final size from the content image. The only change is the variable L-BFGS moves: instead of
the pixels, `--levels` images at full, half, quarter ... resolution, whose sum (each coarser
one upsampled bilinearly and multiplied by `--decay` per level) is the image. That changes
which directions the optimizer favours (a preconditioner): low frequencies move together.
`--levels 1` is the plain reference.

It prints the best loss after `--evaluations` evaluations and, with `--target`, after how
many evaluations that loss was first reached (counts do not depend on how busy the machine is).

    python bench/pyramid.py --target 0.0415828 --levels 1              # the plain reference
    python bench/pyramid.py --target 0.0415828 --levels 4 --decay 1
    python bench/pyramid.py --target 0.0415828 --levels 3 --decay 0.35
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from quality import CONTENT_FILE, DEFAULT_IMAGES, STYLE_FILE, load, reference_objective, total_loss

from shared.params import StyleParams
from worker.engine import load_weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="long side in pixels (default 256)")
    parser.add_argument("--levels", type=int, default=4, help="pyramid levels; 1: the pixels themselves")
    parser.add_argument("--decay", type=float, default=1.0, help="each coarser level's factor (default 1)")
    parser.add_argument("--evaluations", type=int, default=300, help="objective evaluations (default 300)")
    parser.add_argument("--history", type=int, default=100, help="L-BFGS history (default 100)")
    parser.add_argument("--target", type=float, default=None, help="report when this loss is first reached")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    weights = load_weights("random")
    params = StyleParams(size=args.size, weights="random")
    content, style = load(DEFAULT_IMAGES / CONTENT_FILE), load(DEFAULT_IMAGES / STYLE_FILE)
    objective, content_t = reference_objective(weights, params, content, style)
    height, width = content_t.shape[-2:]
    levels = [content_t.clone()] + [
        torch.zeros(1, 3, max(height >> k, 1), max(width >> k, 1)) for k in range(1, args.levels)
    ]
    for level in levels:
        level.requires_grad_(True)

    def image() -> torch.Tensor:
        total = levels[0]
        for k, level in enumerate(levels[1:], start=1):
            total = total + args.decay**k * F.interpolate(
                level, size=(height, width), mode="bilinear", align_corners=False
            )
        return total

    optimizer = torch.optim.LBFGS(
        levels,
        lr=1.0,
        max_iter=args.evaluations,
        max_eval=args.evaluations,
        history_size=args.history,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )
    best, evaluations, reached = float("inf"), 0, None

    def closure() -> torch.Tensor:
        nonlocal best, evaluations, reached
        optimizer.zero_grad(set_to_none=True)
        loss = total_loss(objective, image())
        loss.backward()
        evaluations += 1
        best = min(best, float(loss.detach()))
        if reached is None and args.target is not None and best <= args.target:
            reached = evaluations
        return loss

    start = time.perf_counter()
    optimizer.step(closure)
    print(
        f"{args.size} px, {args.levels} levels, decay {args.decay:g}, history {args.history}: best loss "
        f"{best:.6g} after {evaluations} evaluations ({time.perf_counter() - start:.0f} s)"
    )
    if args.target is not None:
        print(
            f"target {args.target:.6g}: best / target {best / args.target:.3f}; "
            + (f"first reached after {reached} evaluations" if reached else "not reached")
        )


if __name__ == "__main__":
    main()
