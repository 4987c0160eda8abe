"""Benchmark one loss evaluation of the engine against a plain, textbook reference.

One evaluation is what each L-BFGS/Adam iteration of `stylize` costs: a forward pass of
the cut VGG-19, the content, style and TV losses, and a backward pass to the image pixels.

- engine: the engine's own code path, as the optimizer runs it: `Descent.evaluate` on a
  `StyleObjective` built from the default `StyleParams(weights="random")`, so the timing
  includes the closure's bookkeeping and its one host transfer of the losses; `--precision`
  picks what its convolutions run in (default auto: bf16 on a GPU that has it).
- reference: the same objective written out here the obvious way, sharing no engine code
  but the weights: torchvision's `make_layers(cfgs["E"])`, non-inplace ReLU, average
  pooling, float32 NCHW, layer by layer; its evaluation ends by reading the loss on the host,
  as torch's L-BFGS does.

Both see the same images and the same weights; the script first checks that they give the
same loss and gradient, then times them in interleaved rounds.

    python bench/engine.py --size 256 --device cpu [--repeats N] [--json]
    python bench/engine.py --size 256 512          # several sizes in one run
    python bench/engine.py --size 512 --masks      # instead: with style masks against without
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

# bench/ is not a package: make `shared` and `worker` importable when run as a script from a
# plain clone, without relying on the editable install, and the library modules beside this one.
REPO_ROOT = Path(__file__).resolve().parent.parent
for path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from engine_measure import measure, measure_batch, measure_masks  # noqa: E402
from engine_setup import CONTENT_FILE, DEFAULT_IMAGES, STYLE_FILE  # noqa: E402
from reference import ReferenceObjective  # noqa: E402, F401  (bench/quality.py imports it from here)
from timing import ROUNDS, device_name  # noqa: E402

DEFAULT_REPEATS = {"cpu": 20, "cuda": 100}  # timed evaluations per variant, over all rounds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        type=int,
        nargs="+",
        action="extend",
        help="long side in pixels; several values or repeated flags measure several sizes (default 256)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed evaluations per variant, over {ROUNDS} interleaved rounds "
        f"(default {DEFAULT_REPEATS['cpu']} on CPU, {DEFAULT_REPEATS['cuda']} on CUDA)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        default=DEFAULT_IMAGES,
        help=f"folder with {CONTENT_FILE} and {STYLE_FILE} (default: ../shared/images)",
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON line per size")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="what the engine's convolutions run in (default auto: bf16 on a GPU that has it, else fp32); "
        "the reference always runs float32",
    )
    parser.add_argument(
        "--masks",
        action="store_true",
        help="instead: time the engine with two styles on complementary masks (left and right "
        "halves) against the same two styles blended without masks",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        metavar="N",
        help="instead: time N images as one batch against N separate evaluations",
    )
    args = parser.parse_args(argv)
    args.size = args.size or [256]
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.batch is not None and args.batch < 2:
        parser.error("--batch must be at least 2")
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but no CUDA GPU is available")
    return device


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    repeats = args.repeats or DEFAULT_REPEATS.get(device.type, DEFAULT_REPEATS["cpu"])
    if args.batch:
        main_batch(args, device, repeats)
    elif args.masks:
        main_masks(args, device, repeats)
    else:
        main_compare(args, device, repeats)


def table_header(device: torch.device) -> tuple[list[str], list[int]]:
    header = [
        "size",
        "device",
        "engine ms",
        "ref ms",
        "speed-up",
        "GFLOP/s eng / ref",
        "peak MiB eng / ref" if device.type == "cuda" else "peak RSS MiB",
        "loss rel.diff",
    ]
    widths = [max(len(h), 9) for h in header]
    widths[5], widths[6] = max(widths[5], 17), max(widths[6], 18)
    return header, widths


def main_compare(args: argparse.Namespace, device: torch.device, repeats: int) -> None:
    """Engine against reference at each size: the table, the details under each row, JSON lines."""
    print(
        f"torch {torch.__version__}, device {device} ({device_name(device)}), "
        f"{torch.get_num_threads()} threads, {repeats} timed evaluations per variant in "
        f"{ROUNDS} interleaved rounds, median reported"
    )
    header, widths = table_header(device)
    lines = []
    for i, size in enumerate(args.size):
        r = measure(size, device, repeats, args.images, args.precision)
        if i == 0:
            print(f"images: content {r['content_image']}, style {r['style_image']}")
            print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
        print_row(r, widths)
        print_details(r, " " * widths[0])
        lines.append(r)
    print_memory_note(device)
    if args.json:
        for r in lines:
            print(json.dumps(r))


def print_details(r: dict, indent: str) -> None:
    """The lines under a size's row: agreement, spread, paired ratio, peak, warnings."""
    terms = ", ".join(f"{k} {v:.1e}" for k, v in r["rel_diff_terms"].items())
    print(
        f"{indent}  agreement: total {r['rel_diff_loss']:.1e} ({terms}), "
        f"gradient {r['rel_diff_grad']:.1e}; {r['gflop_per_eval']:.2f} GFLOP/eval",
        flush=True,
    )
    print(
        f"{indent}  spread: engine {r['engine_min_ms']:.1f}..{r['engine_max_ms']:.1f} ms "
        f"(rounds {', '.join(f'{m:.1f}' for m in r['engine_round_median_ms'])}), reference "
        f"{r['reference_min_ms']:.1f}..{r['reference_max_ms']:.1f} ms "
        f"(rounds {', '.join(f'{m:.1f}' for m in r['reference_round_median_ms'])})"
    )
    print(
        f"{indent}  paired: median of the {r['repeats']} reference/engine ratios "
        f"of back-to-back evaluations {r['paired_speedup']:.2f}x"
    )
    print(
        f"{indent}  peak: {r['precision']} GEMM (torch.mm or 1x1 conv) "
        f"{r['matmul_peak_gflops']:.1f} GFLOP/s "
        f"(best of rounds {', '.join(f'{g:.1f}' for g in r['matmul_round_gflops'])}); engine "
        f"{100 * r['engine_peak_fraction']:.0f}%, reference {100 * r['reference_peak_fraction']:.0f}% of it"
    )
    if max(r["engine_max_ms"] / r["engine_min_ms"], r["reference_max_ms"] / r["reference_min_ms"]) > 1.5:
        print(
            f"{indent}  warning: evaluations vary by more than 1.5x; the machine is "
            f"probably busy, and the medians are not to be trusted"
        )
    if "engine_gflop_per_eval" in r:
        print(f"{indent}  note: the engine counts {r['engine_gflop_per_eval']:.2f} GFLOP/eval")


def print_memory_note(device: torch.device) -> None:
    if device.type == "cuda":
        print(
            "peak MiB: torch.cuda.max_memory_allocated during the timed evaluations, above "
            "what was allocated before them (both networks, targets and the image)."
        )
    else:
        print(
            "peak RSS: the whole process's ru_maxrss after this size (and before it was set "
            "up); both variants run in one process, so CPU memory cannot be split per variant."
        )


def print_row(r: dict, widths: list[int]) -> None:
    if r["device"] == "cuda":
        memory = f"{r['engine_peak_mib']:.0f} / {r['reference_peak_mib']:.0f}"
    else:
        memory = f"{r['process_peak_rss_mib']:.0f} (was {r['process_peak_rss_before_mib']:.0f})"
    cells = [
        f"{r['width']}x{r['height']}",
        r["device"],
        f"{r['engine_ms']:.1f}",
        f"{r['reference_ms']:.1f}",
        f"{r['speedup']:.2f}x",
        f"{r['engine_gflops']:.1f} / {r['reference_gflops']:.1f}",
        memory,
        f"{r['rel_diff_loss']:.1e}",
    ]
    print("  ".join(c.rjust(w) for c, w in zip(cells, widths)), flush=True)


def main_batch(args: argparse.Namespace, device: torch.device, repeats: int) -> None:
    print(
        f"torch {torch.__version__}, device {device} ({device_name(device)}), "
        f"{torch.get_num_threads()} threads; {args.batch} images as one batch against "
        f"{args.batch} separate evaluations, {repeats} timed per variant in {ROUNDS} "
        f"interleaved rounds, median per image reported"
    )
    for size in args.size:
        r = measure_batch(size, device, repeats, args.images, args.batch)
        print(
            f"{r['width']}x{r['height']}: batch {r['batch_ms_per_image']:.1f} ms/image, separate "
            f"{r['separate_ms_per_image']:.1f} ms/image, batching speed-up "
            f"{r['batch_speedup']:.2f}x (gradients agree to {r['rel_diff_grad']:.1e})",
            flush=True,
        )
        if args.json:
            print(json.dumps(r))


def main_masks(args: argparse.Namespace, device: torch.device, repeats: int) -> None:
    print(
        f"torch {torch.__version__}, device {device} ({device_name(device)}), "
        f"{torch.get_num_threads()} threads; two styles on complementary masks against the same two "
        f"blended without masks, {repeats} timed pairs, median reported"
    )
    for size in args.size:
        r = measure_masks(size, device, repeats, args.images, args.precision)
        print(
            f"{r['width']}x{r['height']} {r['precision']}: with masks {r['masked_ms']:.1f} ms, without "
            f"{r['plain_ms']:.1f} ms per evaluation; paired median ratio {r['masked_over_plain']:.3f}x, "
            f"fastest over fastest {r['fastest_over_fastest']:.3f}x "
            f"(load average {', '.join(map(str, r['load_average']))})",
            flush=True,
        )
        if args.json:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
