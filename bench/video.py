"""Flicker and speed of clips: the temporal loss against stylizing every frame alone.

The clip pans a still photo (tests/data/tubingen.jpg) by `--shift` px a frame, so the scene
moves exactly that far between frames. Both runs use the same params (random VGG-19
weights unless --weights says otherwise), in the same process:

- video: worker/engine/video.py as the service runs it (warped start, temporal loss);
- alone: the same generator with temporal_weight 0, every frame from its own content.

Flicker is the mean absolute difference (0-255) between consecutive output frames over the
region that stays in view, each pair aligned by the known shift (what moves with the scene
is not flicker). `raw` is the same without aligning. Seconds per frame are the engine's own
time, the first frame (all scales) apart from the following ones.

    python bench/video.py                                   # flicker: 8 frames, 128 px
    python bench/video.py --size 256 --frames 4 --skip-alone    # seconds per frame at 256 px
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from shared.params import StyleParams  # noqa: E402
from worker.engine import load_weights  # noqa: E402
from worker.engine.video import FrameDone, stylize_frames  # noqa: E402

DATA = REPO_ROOT / "tests" / "data"


def panned_frames(photo: Image.Image, size: tuple[int, int], frames: int, shift: int) -> list[Image.Image]:
    """`frames` windows of `size` over `photo` (scaled to the window's height), each `shift` px
    right of the last: the scene moves `shift` px left per frame."""
    width, height = size
    wide = photo.convert("RGB")
    need = width + shift * (frames - 1)
    scale = max(height / wide.height, need / wide.width)
    wide = wide.resize((round(wide.width * scale), round(wide.height * scale)), Image.Resampling.LANCZOS)
    top = (wide.height - height) // 2
    return [wide.crop((shift * t, top, shift * t + width, top + height)) for t in range(frames)]


def flicker(outputs: list[Image.Image], shift: int) -> tuple[float, float]:
    """(aligned, raw) mean absolute difference of consecutive frames, 0-255."""
    arrays = [np.asarray(o, dtype=np.float32) for o in outputs]
    aligned = [np.abs(b[:, : b.shape[1] - shift] - a[:, shift:]).mean() for a, b in zip(arrays, arrays[1:])]
    raw = [np.abs(b - a).mean() for a, b in zip(arrays, arrays[1:])]
    return float(np.mean(aligned)), float(np.mean(raw))


def run(frames, style, params, weights) -> tuple[list[Image.Image], list[float], list[float], list[float]]:
    """Outputs, seconds per frame, the temporal loss's coverage per frame, and style losses."""
    outputs, seconds, coverage, style_losses = [], [], [], []
    started = time.perf_counter()
    for event in stylize_frames(frames, [style], params, device="cpu", weights=weights):
        if isinstance(event, FrameDone):
            outputs.append(event.image)
            style_losses.append(event.result.losses.style)
            now = time.perf_counter()
            seconds.append(now - started)
            started = now
            if event.coverage is not None:
                coverage.append(event.coverage)
    return outputs, seconds, coverage, style_losses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="frame width (= output size) in px")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--shift", type=int, default=2, help="pan per frame in px")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--temporal-weight", type=float, default=None, help="default: StyleParams'")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--skip-alone", action="store_true", help="time the video run only")
    parser.add_argument("--save", help="write both runs' frames into this folder")
    args = parser.parse_args()

    size = (args.size, args.size * 3 // 4)
    with Image.open(DATA / "tubingen.jpg") as photo:
        frames = panned_frames(photo, size, args.frames, args.shift)
    with Image.open(DATA / "starry_night.jpg") as painting:
        style = painting.convert("RGB")
    extra = {} if args.temporal_weight is None else {"temporal_weight": args.temporal_weight}
    params = StyleParams(size=args.size, iterations=args.iterations, weights=args.weights, **extra)
    weights = load_weights(args.weights)
    print(f"clip: {args.frames} frames {size[0]}x{size[1]}, pan {args.shift} px/frame; {args.iterations} iterations")
    print(f"params: temporal_weight {params.temporal_weight}, scales {params.scales}, weights {args.weights}")

    runs = {"video": params}
    if not args.skip_alone:
        runs["alone"] = params.model_copy(update={"temporal_weight": 0.0})
    figures = {}
    for name, run_params in runs.items():
        outputs, seconds, coverage, style_losses = run(frames, style, run_params, weights)
        aligned, raw = flicker(outputs, args.shift)
        figures[name] = aligned
        following = seconds[1:] or [float("nan")]
        held = np.mean(coverage) if coverage else float("nan")
        print(
            f"{name:5s}: flicker {aligned:.2f} (raw {raw:.2f}); s/frame first {seconds[0]:.1f}, "
            f"following {np.mean(following):.1f}; style loss {np.mean(style_losses):.3g}; coverage {held:.3f}"
        )
        if args.save:
            folder = Path(args.save)
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(outputs):
                image.save(folder / f"{name}_{i:03d}.png")
    if "alone" in figures:
        print(f"flicker ratio video / alone: {figures['video'] / figures['alone']:.3f} (target <= 0.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
