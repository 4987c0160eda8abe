"""What the style-target cache saves: a short job with a cold and with a warm cache.

A worker keeps a `TargetCache` per process; the next job with the same (preset) style
takes its Gram matrices from it instead of running the style image through VGG at every
scale. This script times, per size, with the default StyleParams (random weights):

- targets: the style-target computation itself (the VGG forward passes and Gram matrices of
  the style at every scale), against a hit (digest of the style pixels and a lookup);
- job: a short `stylize` run (`--iterations`, default 10) with a fresh cache (cold) and with
  one that already holds the style (warm), alternating, `--repeats` times each.

    python bench/style_cache.py                       # sizes 256 and 512, 10 iterations
    python bench/style_cache.py --size 512 --iterations 30 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from shared.params import StyleParams  # noqa: E402
from worker.engine import Result, VGGFeatures, load_weights, stylize  # noqa: E402
from worker.engine.images import fit_long_side, to_tensor  # noqa: E402
from worker.engine.optimize import scale_sizes  # noqa: E402
from worker.engine.targets import NetworkKey, TargetCache, style_grams  # noqa: E402

DEFAULT_IMAGES = REPO_ROOT / "tests" / "data"


def load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def job_seconds(content, style, params, weights, cache) -> float:
    start = time.perf_counter()
    for event in stylize(content, [style], params, device="cpu", weights=weights, targets_cache=cache):
        if isinstance(event, Result):
            return time.perf_counter() - start
    raise AssertionError("stylize ended without a Result")


def targets_seconds(content, style, params, weights, repeats: int) -> tuple[float, float]:
    """Median seconds to make one job's style targets (every scale), and to find them in a cache."""
    layers = (*params.content_layers, *params.style_layers)
    net = VGGFeatures(weights, layers, params.pooling)
    network = NetworkKey(weights.state, params.pooling, "cpu")
    sizes = scale_sizes(content.size, params.size, params.scales, params.min_short_side())
    styles = [to_tensor(style, fit_long_side(style.size, max(round(params.style_scale * max(d)), 1))) for d in sizes]
    cache = TargetCache()
    made, found = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for s in styles:
            style_grams(net, s, params.style_layers)
        made.append(time.perf_counter() - start)
        for s in styles:  # fill the cache, then time the hits
            style_grams(net, s, params.style_layers, cache, network)
        start = time.perf_counter()
        for s in styles:
            style_grams(net, s, params.style_layers, cache, network)
        found.append(time.perf_counter() - start)
    return statistics.median(made), statistics.median(found)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[256, 512], help="long sides (default 256 512)")
    parser.add_argument("--iterations", type=int, default=10, help="iterations of the short job (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="cold and warm runs each, alternating (default 3)")
    parser.add_argument(
        "--images",
        type=Path,
        default=DEFAULT_IMAGES,
        help="folder with tubingen.jpg and starry_night.jpg (default tests/data)",
    )
    args = parser.parse_args(argv)

    weights = load_weights("random")
    content, style = load(args.images / "tubingen.jpg"), load(args.images / "starry_night.jpg")
    print(
        f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads; default StyleParams with "
        f"random weights; a job of {args.iterations} iterations; medians of {args.repeats}"
    )
    print(
        f"{'size':>6}  {'targets ms':>10}  {'hit ms':>7}  {'cold job s':>10}  {'warm job s':>10}  "
        f"{'saved s':>7}  {'saved':>6}"
    )
    for size in args.size:
        params = StyleParams(size=size, iterations=args.iterations, weights="random")
        made, found = targets_seconds(content, style, params, weights, args.repeats)
        job_seconds(content, style, params, weights, None)  # warm up torch's kernels and allocator
        warm_cache = TargetCache()
        job_seconds(content, style, params, weights, warm_cache)
        cold, warm = [], []
        for _ in range(args.repeats):
            cold.append(job_seconds(content, style, params, weights, TargetCache()))
            warm.append(job_seconds(content, style, params, weights, warm_cache))
        cold_s, warm_s = statistics.median(cold), statistics.median(warm)
        print(
            f"{size:>6}  {made * 1e3:>10.1f}  {found * 1e3:>7.2f}  {cold_s:>10.2f}  {warm_s:>10.2f}  "
            f"{cold_s - warm_s:>7.2f}  {(cold_s - warm_s) / cold_s:>6.1%}",
            flush=True,
        )
        print(
            f"{'':>6}  cold {', '.join(f'{s:.2f}' for s in cold)} s; warm {', '.join(f'{s:.2f}' for s in warm)} s; "
            f"cache holds {len(warm_cache)} entries, {warm_cache.bytes / 2**20:.1f} MiB"
        )


if __name__ == "__main__":
    main()
