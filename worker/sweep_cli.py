"""`impasto sweep`: a grid of pictures over one or two parameters, and its contact sheet.

The cells run one after another on this machine, sharing VGG-19 and the style targets (a
cell whose style layers another cell already used starts without recomputing them). Ctrl-C
stops the cell being painted and still writes the sheet of what is done.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from shared.flags import ParamsError, add_model_flags, params_from_args
from shared.images import ImageError, decode_image
from shared.params import StyleParams
from shared.sheet import contact_sheet
from shared.sweeps import AxisError, axis_from_flag, check_axes, field_value

from .cli import EXIT_INTERRUPTED, OUTPUT_FORMATS, OneLineParser, StopOnInterrupt, check_folder, check_output, fail

# A local sweep has no service limit; this keeps a typo (a 10x10 grid at 2048 px) from running for days.
MAX_CELLS = 49


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="impasto sweep",
        description="Paint CONTENT over a grid of one or two parameters and write one contact sheet.",
    )
    parser.add_argument("content", metavar="CONTENT", help="the photo to repaint")
    parser.add_argument("styles", metavar="STYLE", nargs="+", help="one or more style images")
    parser.add_argument(
        "--axis",
        action="append",
        required=True,
        metavar="NAME=V1,V2,...",
        help="a parameter and the values to compare, e.g. style_weight=0.3,1,3; give --axis twice for a grid "
        "(values that are lists of layers are separated by ';')",
    )
    parser.add_argument("-o", "--output", required=True, help="where to write the contact sheet (.png, .jpg, ...)")
    parser.add_argument("--cells-dir", help="also write each cell's picture here, as cell_NN.png")
    parser.add_argument("--cell-size", type=int, default=256, help="each cell's long side on the sheet (default: 256)")
    add_model_flags(parser, StyleParams)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON object describing the result")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Paint a grid of pictures over one or two parameters, and their contact sheet."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="impasto sweep: %(levelname)s: %(message)s")
    try:
        return _run(args)
    except (ParamsError, ImageError, AxisError, OSError) as err:
        return fail(str(err), "impasto sweep")
    except KeyboardInterrupt:
        print("impasto sweep: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    base = params_from_args(StyleParams, args)
    given = {name: getattr(args, name) for name in StyleParams.model_fields if hasattr(args, name)}
    output = check_output(args.output, OUTPUT_FORMATS)
    if args.cells_dir:
        check_folder("--cells-dir", args.cells_dir)
    if not 16 <= args.cell_size <= 2048:
        raise ParamsError("--cell-size: give 16 to 2048 pixels")
    axes = [axis_from_flag(text) for text in args.axis]
    cells = check_axes(axes, given, MAX_CELLS)
    content = decode_image(args.content)
    styles = [decode_image(path) for path in args.styles]
    cell_params = [
        StyleParams(**{**given, **{name: field_value(name, v) for name, v in cell.overrides(axes).items()}})
        for cell in cells
    ]
    for cell, params in zip(cells, cell_params):
        problem = params.output_size_problem(content.size)
        if problem is not None:
            raise ParamsError(f"cell {cell.label(axes)}: {problem}")
        try:
            params.style_blend_for(len(styles))
        except ValueError as err:
            raise ParamsError(f"--style-blend: {err}") from None

    import torch
    from tqdm import tqdm

    from worker.engine import EngineError, Progress, Result, TargetCache, load_weights, resolve_device, stylize

    stop = StopOnInterrupt("impasto sweep")
    pictures = [None] * len(cells)
    started = time.perf_counter()
    cache = TargetCache()
    total = sum(p.iterations for p in cell_params)
    try:
        device = resolve_device(args.device)
        weights = load_weights(base.weights)
        with stop, tqdm(total=total, unit="it", file=sys.stderr, disable=None) as bar:
            for cell, params in zip(cells, cell_params):
                if stop.requested():
                    break
                bar.set_description(f"cell {cell.index + 1}/{len(cells)}", refresh=False)
                for event in stylize(
                    content,
                    styles,
                    params,
                    device=device,
                    weights=weights,
                    should_stop=stop.requested,
                    targets_cache=cache,
                ):
                    if isinstance(event, Progress):
                        bar.update(1)
                    elif isinstance(event, Result) and not event.canceled:
                        pictures[cell.index] = event.image
                if pictures[cell.index] is not None and args.cells_dir:
                    pictures[cell.index].save(Path(args.cells_dir) / f"cell_{cell.index:02d}.png")
    except EngineError as err:
        return fail(str(err), "impasto sweep")
    except torch.OutOfMemoryError:
        return fail("the GPU ran out of memory; try a smaller --size", "impasto sweep")

    notes = ["not painted" if p is None else "" for p in pictures]
    sheet = contact_sheet(axes, pictures, content=content, styles=styles, notes=notes, cell=args.cell_size)
    sheet.save(output)
    done = sum(p is not None for p in pictures)
    if stop.requested():
        print(f"impasto sweep: interrupted after {done} of {len(cells)} cells; saved {output}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "output": str(output.resolve()),
                    "axes": [axis.as_json() for axis in axes],
                    "cells": [
                        {"values": list(cell.values), "painted": pictures[cell.index] is not None} for cell in cells
                    ],
                    "seconds": round(time.perf_counter() - started, 3),
                    "style_targets": {"computed": cache.misses, "reused": cache.hits},
                }
            )
        )
    return EXIT_INTERRUPTED if stop.requested() else 0
