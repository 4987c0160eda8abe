"""Peak memory of the engine's loss evaluation (or a few iterations) at several image sizes.

Each size runs in a fresh subprocess, so one size's peak does not hide the next one's:

- on CPU: the child's peak resident set (ru_maxrss), and how much of it came after the
  weights were loaded (the activations, targets, gradients and the optimizer's state);
- on CUDA: torch.cuda.max_memory_allocated in the child (everything torch allocated on the
  GPU, weights included), and the same above what was allocated before the evaluation.

By default one loss evaluation (forward + backward to the pixels) of the engine's
`StyleObjective` at the paper's layers, on a 4:3 content image; with `--iterations N`, N
iterations of `stylize` (one scale, L-BFGS by default) instead, which adds the optimizer's
history and the line search's extra evaluations.

    python bench/memory.py                           # 512, 1024, 2048 px on the default device
    python bench/memory.py --size 512 1024 --device cuda
    python bench/memory.py --size 1024 --iterations 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from shared.params import StyleParams  # noqa: E402
from worker.engine import StyleObjective, VGGFeatures, load_weights, resolve_precision, stylize  # noqa: E402
from worker.engine.descent import Descent  # noqa: E402
from worker.engine.images import to_pil  # noqa: E402

DEFAULT_SIZES = (512, 1024, 2048)
SEED = 0


def rss_mib() -> float:
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def images(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded (1, 3, 3/4 size, size) content image and a (1, 3, size, size) style image."""
    generator = torch.Generator().manual_seed(SEED)
    content = torch.rand((1, 3, round(size * 3 / 4), size), generator=generator)
    style = torch.rand((1, 3, size, size), generator=generator)
    return content, style


def child(size: int, device: torch.device, iterations: int, precision: str = "auto") -> dict:
    """Measure one size in this (fresh) process; returns the figures."""
    params = StyleParams(
        weights="random", size=size, scales=1, iterations=max(iterations, 1), snapshot_every=0, precision=precision
    )
    chosen = resolve_precision(precision, device)
    weights = load_weights(params.weights)
    content, style = images(size)
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
    baseline_rss = rss_mib()
    baseline_cuda = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    start = time.perf_counter()
    if iterations:
        for _ in stylize(to_pil(content), [to_pil(style)], params, device=device, weights=weights):
            pass
        what = f"{iterations} stylize iteration(s), {params.optimizer}"
    else:
        layers = (*params.content_layers, *params.style_layers)
        net = VGGFeatures(weights, layers, params.pooling).to(device)
        objective = StyleObjective(
            net, params, content.to(device), [style.to(device)], params.style_blend_for(1), precision=chosen
        )
        Descent(objective, lambda x: x).evaluate(content.to(device))
        what = "one loss evaluation"
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result = {
        "size": size,
        "width": content.shape[-1],
        "height": content.shape[-2],
        "device": device.type,
        "what": what,
        "precision": chosen,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        result["cuda_peak_mib"] = round(peak / 2**20, 1)
        result["cuda_peak_above_start_mib"] = round((peak - baseline_cuda) / 2**20, 1)
        # What the caching allocator held at most: what the process really took from the GPU.
        result["cuda_reserved_peak_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    else:
        peak = rss_mib()
        result["peak_rss_mib"] = round(peak, 1)
        result["peak_rss_above_start_mib"] = round(peak - baseline_rss, 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        type=int,
        nargs="+",
        action="extend",
        help=f"long sides in pixels (default {' '.join(map(str, DEFAULT_SIZES))})",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    parser.add_argument(
        "--iterations", type=int, default=0, help="run this many stylize iterations instead of one loss evaluation"
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON line per size")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="what the convolutions run in (default auto: bf16 on a GPU that has it, else fp32)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = args.size or list(DEFAULT_SIZES)
    device_arg = args.device
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_arg)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but no CUDA GPU is available")

    if args.child:  # one size, figures as JSON on stdout for the parent
        print(json.dumps(child(sizes[0], device, args.iterations, args.precision)))
        return

    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; each size in a fresh process"
    )
    results = []
    for size in sizes:
        command = [
            sys.executable,
            __file__,
            "--child",
            "--size",
            str(size),
            "--device",
            str(device),
            "--iterations",
            str(args.iterations),
            "--precision",
            args.precision,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{size} px: failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(r)
        if device.type == "cuda":
            figures = (
                f"max_memory_allocated {r['cuda_peak_mib']:.0f} MiB "
                f"({r['cuda_peak_above_start_mib']:.0f} MiB above the start), "
                f"max_memory_reserved {r['cuda_reserved_peak_mib']:.0f} MiB"
            )
        else:
            figures = (
                f"peak RSS {r['peak_rss_mib']:.0f} MiB "
                f"({r['peak_rss_above_start_mib']:.0f} MiB above the loaded weights)"
            )
        print(
            f"{r['width']}x{r['height']} ({r['what']}, {r['precision']}, {r['seconds']:.0f} s): {figures}", flush=True
        )
    if device.type == "cpu":
        print(
            "CPU figures are whole-process peaks: the interpreter, torch, the weights and "
            "oneDNN's scratch space included; they bound what the activations need on a GPU."
        )
    if args.json:
        for r in results:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
