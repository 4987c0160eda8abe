"""`impasto stylize`: the engine on the command line.

This module owns what the engine must not: files, the progress bar, exit codes and Ctrl-C
(the first press stops after the current iteration and still saves the image).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from shared.flags import ParamsError, add_model_flags, params_from_args
from shared.images import ImageError, decode_image, decode_mask
from shared.params import StyleParams
from shared.settings import load_settings
from shared.video import ClipError, encode_clip, is_clip, probe_clip, read_frames

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
OUTPUT_FORMATS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line instead of usage plus error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="impasto stylize",
        description="Paint CONTENT in the style of one or more STYLE images (Gatys, Ecker and Bethge's optimization).",
    )
    parser.add_argument(
        "content", metavar="CONTENT", help="the photo to repaint, or a clip (MP4 H.264, WebM VP8/VP9, animated GIF)"
    )
    parser.add_argument("styles", metavar="STYLE", nargs="+", help="one or more style images")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="where to write the picture (.png, .jpg, ...); a clip's, in its container (.mp4, .webm, .gif)",
    )
    add_model_flags(parser, StyleParams)
    parser.add_argument(
        "--style-masks",
        nargs="+",
        metavar="MASK",
        help="one grey-scale mask per style image, in the same order: white where that style applies, "
        "black where it does not (where no mask is white the photo is kept)",
    )
    parser.add_argument("--snapshot-dir", help="save snapshots here as snapshot_NNNNN.png")
    parser.add_argument("--frames-dir", help="a clip only: save every stylized frame here as frame_NNNNN.png")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON object describing the result")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Paint a photo in the style of one or more paintings."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="impasto stylize: %(levelname)s: %(message)s")
    try:
        return _run(args)
    except (ParamsError, ImageError, ClipError, OSError) as err:
        return fail(str(err))
    except MemoryError:
        return fail("out of memory; try a smaller --size or fewer --scales")
    except KeyboardInterrupt:  # before the optimization started, or a second Ctrl-C
        print("impasto stylize: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def fail(message: str, prog: str = "impasto stylize") -> int:
    """Print one line saying what is wrong; the exit status for bad input."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def check_output(path: str, formats: tuple[str, ...] = OUTPUT_FORMATS) -> Path:
    """--output as a path this command can write, or ParamsError saying what to fix."""
    output = Path(path)
    if output.suffix.lower() not in formats:
        raise ParamsError(f"--output: {output} should end in one of {', '.join(formats)}")
    if output.is_dir():
        raise ParamsError(f"--output: {output} is a folder; give a file name such as {output / 'out.png'}")
    if not output.parent.resolve().is_dir():
        raise ParamsError(f"--output: folder {output.parent} does not exist")
    if not os.access(output.parent.resolve(), os.W_OK):
        raise ParamsError(f"--output: cannot write in folder {output.parent}")
    return output


def check_folder(flag: str, folder: str) -> None:
    """Create `folder` if need be; ParamsError when it cannot be written."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise ParamsError(f"{flag}: cannot create folder {folder} ({err.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise ParamsError(f"{flag}: cannot write in folder {folder}")


def _run(args: argparse.Namespace) -> int:
    params = params_from_args(StyleParams, args)
    if is_clip(args.content):
        return _run_clip(args, params)
    if args.frames_dir:
        raise ParamsError("--frames-dir: only for a clip; the content is a still image")
    output = check_output(args.output)
    if args.snapshot_dir:
        check_folder("--snapshot-dir", args.snapshot_dir)
    content = decode_image(args.content)
    styles = [decode_image(path) for path in args.styles]
    masks = None
    if args.style_masks is not None:
        if len(args.style_masks) != len(styles):
            raise ParamsError(
                f"--style-masks: {len(args.style_masks)} masks for {len(styles)} style images; "
                f"give one mask per style, in the same order"
            )
        masks = [decode_mask(path, name=f"--style-masks: {path}") for path in args.style_masks]
    try:
        params.style_blend_for(len(styles))
    except ValueError as err:
        raise ParamsError(f"--style-blend: {err}") from None

    # Torch is imported only now, so that --help and bad input answer at once.
    import torch
    from tqdm import tqdm

    from worker.engine import EngineError, Progress, Result, Snapshot, load_weights, resolve_device, stylize

    stop = StopOnInterrupt()
    snapshots: list[str] = []
    started = time.perf_counter()
    try:
        device = resolve_device(args.device)
        weights = load_weights(params.weights)  # logs a WARNING if it falls back to random
        with stop, tqdm(total=params.iterations, unit="it", file=sys.stderr, disable=None) as bar:
            events = stylize(
                content, styles, params, device=device, weights=weights, should_stop=stop.requested, style_masks=masks
            )
            for event in events:
                if isinstance(event, Progress):
                    bar.set_description(
                        f"scale {event.scale}/{event.scales} {event.size[0]}x{event.size[1]}", refresh=False
                    )
                    bar.set_postfix({k: f"{v:.3g}" for k, v in event.losses.as_dict().items()}, refresh=False)
                    bar.update(1)
                elif isinstance(event, Snapshot) and args.snapshot_dir:
                    # The final snapshot replaces an interval one at the same iteration.
                    path = os.path.join(args.snapshot_dir, f"snapshot_{event.iteration:05d}.png")
                    event.image.save(path)
                    if path not in snapshots:
                        snapshots.append(path)
                elif isinstance(event, Result):
                    result = event
    except EngineError as err:
        return fail(str(err))
    except torch.OutOfMemoryError:
        return fail(f"the GPU ran out of memory at --size {params.size}; try a smaller size")
    except RuntimeError as err:
        if "can't allocate memory" not in str(err):  # torch's CPU allocator failing
            raise
        return fail(f"out of memory at --size {params.size}; try a smaller size")
    result.image.save(output)
    seconds = time.perf_counter() - started

    if result.canceled:
        print(f"impasto stylize: interrupted after {result.iterations} iterations; saved {output}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "output": str(output.resolve()),
                    "size": list(result.size),
                    "iterations": result.iterations,
                    "seconds": round(seconds, 3),
                    "weights": result.weights,
                    "weights_warning": result.weights_warning,
                    "precision": result.precision,
                    "device": result.device,
                    "canceled": result.canceled,
                    "losses": result.losses.as_dict(),
                    "initial_losses": result.initial_losses.as_dict(),
                    "snapshots": snapshots,
                    "params": params.model_dump(mode="json"),
                }
            )
        )
    return EXIT_INTERRUPTED if result.canceled else 0


def _run_clip(args: argparse.Namespace, params: StyleParams) -> int:
    """A clip: checked, stylized frame by frame (each held to the last), written in its own container."""
    settings = load_settings()
    info = probe_clip(args.content, max_frames=settings.max_frames, max_pixels=settings.max_pixels)
    if Path(args.output).suffix.lower() != info.extension:
        raise ParamsError(f"--output: the clip is {info.container.upper()}; name the output *{info.extension}")
    output = check_output(args.output, (info.extension,))
    if args.frames_dir:
        check_folder("--frames-dir", args.frames_dir)
    problem = params.output_size_problem(info.size)
    if problem is not None:
        raise ParamsError(problem)
    styles = [decode_image(path) for path in args.styles]
    try:
        params.style_blend_for(len(styles))
    except ValueError as err:
        raise ParamsError(f"--style-blend: {err}") from None

    import torch
    from tqdm import tqdm

    from worker.engine import EngineError, load_weights, resolve_device
    from worker.engine.video import FrameDone, FrameProgress, stylize_frames

    stop = StopOnInterrupt()
    outputs = []
    started = time.perf_counter()
    try:
        device = resolve_device(args.device)
        weights = load_weights(params.weights)
        frames = read_frames(args.content)
        with stop, tqdm(total=info.frames, unit="frame", file=sys.stderr, disable=None) as bar:
            for event in stylize_frames(
                frames, styles, params, device=device, weights=weights, should_stop=stop.requested
            ):
                if isinstance(event, FrameProgress):
                    step = event.progress
                    bar.set_postfix({"iteration": f"{step.iteration}/{step.iterations}"}, refresh=False)
                elif isinstance(event, FrameDone):
                    outputs.append(event.image)
                    if args.frames_dir:
                        event.image.save(os.path.join(args.frames_dir, f"frame_{event.frame:05d}.png"))
                    bar.update(1)
    except EngineError as err:
        return fail(str(err))
    except torch.OutOfMemoryError:
        return fail(f"the GPU ran out of memory at --size {params.size}; try a smaller size")
    canceled = len(outputs) < info.frames
    if outputs:
        output.write_bytes(encode_clip(outputs, info, audio_from=args.content))
    seconds = time.perf_counter() - started
    if canceled:
        print(f"impasto stylize: interrupted after {len(outputs)} of {info.frames} frames", file=sys.stderr)
    if args.json:
        summary = {"output": str(output.resolve()) if outputs else None, "frames": len(outputs), "clip": info.as_dict()}
        summary.update(seconds=round(seconds, 3), canceled=canceled, params=params.model_dump(mode="json"))
        print(json.dumps(summary))
    return EXIT_INTERRUPTED if canceled else 0


class StopOnInterrupt:
    """Within its block, the first Ctrl-C asks the engine to stop; a second one aborts."""

    def __init__(self, prog: str = "impasto stylize") -> None:
        self.prog = prog
        self._requested = False
        self._previous = None

    def requested(self) -> bool:
        return self._requested

    def _handle(self, signum: int, frame: object) -> None:
        if self._requested:
            raise KeyboardInterrupt
        self._requested = True
        print(f"\n{self.prog}: stopping after this iteration (Ctrl-C again to abort)", file=sys.stderr)

    def __enter__(self) -> StopOnInterrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)
