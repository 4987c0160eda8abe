"""bench/gpu_check.py's measuring steps but the service (bench/gpu_service.py): the device and
its matmul peaks, the CUDA-marked tests, bench/engine.py, bench/memory.py and the fp32/bf16
pictures. Each takes the Check and returns its figures, or raises StepFailed/StepSkipped.

A library module of bench/ (not a package). torch, numpy and Pillow are imported inside the
steps: `--prepare` runs where they may be missing.
"""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

from gpu_runner import Check, StepFailed, StepSkipped, json_lines, takes_precision

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTENT = REPO_ROOT / "tests" / "data" / "tubingen.jpg"
STYLE = REPO_ROOT / "tests" / "data" / "starry_night.jpg"

# What a step runs, on a GPU and (--cpu-dry-run) on the CPU. The targets are issue 12's.
SIZES = {
    "gpu": {"engine": [512, 1024], "memory": 2048, "picture": 512, "picture_iterations": 300, "job": 512},
    "cpu": {"engine": [64], "memory": 128, "picture": 64, "picture_iterations": 4, "job": 64},
}
JOB_ITERATIONS = {"gpu": 300, "cpu": 2}
JOBS = 4
MEMORY_ITERATIONS = 3
TARGET_MS_512_BF16 = 3.0
TARGET_MEMORY_GIB = 24.0
TARGET_PSNR_DB = 40.0


def device_and_peaks(check: Check) -> dict:
    """The device, and the best GFLOP/s of big square matmuls in fp32, TF32 and bf16."""
    import torch

    device = torch.device(check.device)
    n = 512 if check.dry_run else 8192
    figures: dict = {"torch": torch.__version__, "device": check.device}
    figures |= _device_figures(torch, device)
    figures["matmul_peak_gflops"] = _matmul_peaks(torch, device, n)
    figures["matmul_n"] = n
    return figures


def _device_figures(torch, device) -> dict:
    if device.type != "cuda":
        return {"name": f"CPU, {torch.get_num_threads()} threads"}
    props = torch.cuda.get_device_properties(device)
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "bf16": torch.cuda.is_bf16_supported(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,  # what the engine's convolutions may use
    }


def _matmul_peaks(torch, device, n: int) -> dict[str, float]:
    peaks = {}
    for label, dtype, tf32 in (
        ("fp32", torch.float32, False),
        ("tf32", torch.float32, True),
        ("bf16", torch.bfloat16, False),
    ):
        if device.type == "cpu" and label == "tf32":
            continue
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            peaks[label] = _matmul_gflops(torch, device, dtype, n)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
    return peaks


def _matmul_gflops(torch, device, dtype, n: int, repeats: int = 10) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), device=device, dtype=dtype, generator=generator)
    b = torch.randn((n, n), device=device, dtype=dtype, generator=generator)
    best = math.inf
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:  # two warm-ups
            best = min(best, time.perf_counter() - began)
    return round(2 * n**3 / best / 1e9, 1)


def cuda_tests(check: Check) -> dict:
    text = check.run(
        "cuda-tests", [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rs"], 180
    )
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", text)}
    return {"counts": counts, "summary": text.strip().splitlines()[-1]}


def engine(check: Check) -> dict:
    command = [sys.executable, "bench/engine.py", "--device", check.device, "--json", "--size"]
    command += [str(size) for size in SIZES[check.kind]["engine"]]
    if check.dry_run:
        command += ["--repeats", "1"]
    peaks = check.results.get("device", {}).get("matmul_peak_gflops", {})
    precisions = ["bf16", "fp32"] if takes_precision("bench/engine.py") else [None]
    if check.dry_run and precisions != [None]:
        # A CPU runs bf16 by emulation (its bf16 matmul peak is a few GFLOP/s here): fp32 only.
        precisions = ["fp32"]
    rows = []
    for precision in precisions:
        extra = ["--precision", precision] if precision else []
        text = check.run(f"engine-{precision or 'default'}", [*command, *extra], 150)
        rows += [_engine_row(r, precision, peaks) for r in json_lines(text) if "engine_ms" in r]
    if not rows:
        raise StepFailed("bench/engine.py printed no JSON figures")
    return {"rows": rows, "precision_flag": precisions != [None]}


def _engine_row(r: dict, precision: str | None, peaks: dict[str, float]) -> dict:
    ran = r.get("precision") or precision or "fp32"
    gflops = r.get("engine_gflops")
    return {
        "size": r["size"],
        "shape": f"{r['width']}x{r['height']}",
        "precision": ran,
        "ms": r["engine_ms"],
        "gflops": gflops,
        # Against the same precision's measured peak (fp32: plain FP32, TF32 not allowed).
        "peak_fraction": round(gflops / peaks[ran], 3) if gflops and peaks.get(ran) else None,
        "raw": r,
    }


def memory(check: Check) -> dict:
    size = SIZES[check.kind]["memory"]
    command = [sys.executable, "bench/memory.py", "--device", check.device, "--json", "--size", str(size)]
    command += ["--iterations", str(1 if check.dry_run else MEMORY_ITERATIONS)]
    precisions = ["auto", "fp32"] if takes_precision("bench/memory.py") else [None]
    if check.dry_run:
        precisions = precisions[-1:]  # each size is two processes that import torch: one is enough here
    rows = []
    for precision in precisions:
        extra = ["--precision", precision] if precision else []
        for r in json_lines(check.run(f"memory-{precision or 'default'}", [*command, *extra], 150)):
            peak_mib = r.get("cuda_peak_mib", r.get("peak_rss_mib"))
            rows.append(
                {"precision": r.get("precision") or precision or "default", "peak_gib": peak_mib / 1024, "raw": r}
            )
    if not rows:
        raise StepFailed("bench/memory.py printed no JSON figures")
    return {
        "size": size,
        "what": "cuda max_memory_allocated" if check.device == "cuda" else "CPU peak RSS",
        "rows": rows,
    }


def pictures(check: Check) -> dict:
    import numpy as np
    from PIL import Image

    stylize = [sys.executable, "-m", "shared.cli", "stylize"]
    if "--precision" not in check.run("stylize-help", [*stylize, "--help"], 60):
        raise StepSkipped("impasto stylize has no --precision yet")
    size, iterations = SIZES[check.kind]["picture"], SIZES[check.kind]["picture_iterations"]
    images, runs = {}, {}
    for precision in ("fp32", "bf16"):
        path = check.out / f"picture-{size}-{precision}.png"
        command = [*stylize, str(CONTENT), str(STYLE), "-o", str(path), "--size", str(size)]
        command += ["--iterations", str(iterations), "--weights", "random", "--device", check.device]
        command += ["--precision", precision, "--json"]
        result = json_lines(check.run(f"stylize-{precision}", command, 120))[-1]
        runs[precision] = {k: result.get(k) for k in ("seconds", "device", "losses", "iterations")}
        with Image.open(path) as image:
            images[precision] = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    mse = float(np.mean((images["fp32"] - images["bf16"]) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(1 / mse)
    return {"size": size, "iterations": iterations, "psnr_db": round(psnr, 2), "runs": runs}
