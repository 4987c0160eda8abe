"""Timing one evaluation on a device: synchronised wall clock, the device's measured GEMM peak,
FLOP counts and peak memory. A library module of bench/ (not a package), used by engine.py."""

from __future__ import annotations

import platform
import resource
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

SEED = 0
ROUNDS = 3  # engine and reference alternate this many times, so drift hits both alike
WARMUP = {"cpu": 2, "cuda": 10}
# The matrix multiplies whose best speed stands for the device's float32 peak: square torch.mm
# of these sizes, and the same GEMM as a 1x1 channels-last convolution (on a CPU that one runs
# in oneDNN, like the engine's convolutions, and is often faster than torch.mm's BLAS).
PEAK_MATMUL_N = {"cpu": (1024, 2048), "cuda": (4096, 8192)}
PEAK_MATMUL_REPEATS = 5

Evaluation = Callable[[], torch.Tensor]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_round(repeats: int) -> list[int]:
    """`repeats` evaluations spread over ROUNDS rounds, the first rounds taking the remainder."""
    return [repeats // ROUNDS + (1 if i < repeats % ROUNDS else 0) for i in range(ROUNDS)]


def warm_up(runs: dict[str, Evaluation], device: torch.device) -> None:
    for _ in range(WARMUP[device.type]):
        for run in runs.values():
            run()


def matmul_peak_gflops(device: torch.device, precision: str = "fp32") -> float:
    """The measured matrix-multiply peak in the engine's precision (float32, or bf16/fp16 for
    those), in GFLOP/s: the best of square torch.mm and
    the same products as 1x1 convolutions (an n x n by n x n GEMM laid out as n channels over
    n positions).

    Best rather than median: the question is what the device can do, and other load only
    ever slows it down. TF32 stays at torch's default (off for matmul and, below, for
    convolutions), so on a GPU this is the true float32 rate.
    """
    generator = torch.Generator().manual_seed(SEED)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    best_gflops = 0.0
    with torch.backends.cudnn.flags(allow_tf32=False):
        for n in PEAK_MATMUL_N.get(device.type, PEAK_MATMUL_N["cpu"]):
            for product in _square_products(n, generator, device, dtype):
                best_gflops = max(best_gflops, 2 * n**3 / _best_seconds(product, device) / 1e9)
    return best_gflops


def _square_products(n: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> list:
    """One n x n by n x n product as torch.mm and as a 1x1 channels-last convolution."""
    a = torch.randn(n, n, generator=generator).to(device, dtype)
    b = torch.randn(n, n, generator=generator).to(device, dtype)
    side = 1 << (n.bit_length() - 1) // 2  # n positions (a power of 2) as a side x n/side image
    image = a.T.reshape(1, n, side, n // side).contiguous(memory_format=torch.channels_last)
    kernel = b.reshape(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
    return [partial(torch.mm, a, b), partial(F.conv2d, image, kernel)]


def _best_seconds(product: Callable[[], torch.Tensor], device: torch.device) -> float:
    product()  # warm-up: library initialisation, first-touch of the output
    best = float("inf")
    for _ in range(PEAK_MATMUL_REPEATS):
        sync(device)
        start = time.perf_counter()
        product()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def count_flops(run: Evaluation) -> int:
    """FLOPs of one forward + backward, as torch's flop counter sees them (convs, matmuls)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def time_block(run: Evaluation, count: int, device: torch.device) -> tuple[list[float], int | None]:
    """Milliseconds of each of `count` evaluations, and the peak CUDA memory they added.

    Each evaluation is synchronised on its own: the engine reads its losses back every
    iteration, so a real iteration never overlaps the next one on the GPU either.
    """
    samples = []
    base = None
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(count):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        samples.append((time.perf_counter() - start) * 1e3)
    extra = torch.cuda.max_memory_allocated(device) - base if base is not None else None
    return samples, extra


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # platform.processor() is often empty or just "x86_64" on Linux
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
