"""bench/engine.py's measurements, each one size on one device, returned as the dict it prints
(and as its JSON line): engine against reference, a batch against separate evaluations, and
style masks against none. A library module of bench/ (not a package)."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import torch
from engine_setup import STYLE_FILE, build, engine_evaluation, evaluation, load_image
from timing import (
    SEED,
    Evaluation,
    count_flops,
    matmul_peak_gflops,
    peak_rss_mib,
    per_round,
    sync,
    time_block,
    warm_up,
)

from shared.params import StyleParams
from worker.engine import StyleObjective
from worker.engine.losses import content_loss, style_loss, tv_loss

# --------------------------------------------------------------------------- engine against reference


def check_agreement(setup: dict) -> dict[str, float]:
    """Relative differences of the loss terms and of the gradient between the two objectives."""
    image = setup["image"]
    results = {}
    for name in ("engine", "reference"):
        image.grad = None
        terms = setup[name](image)
        total = terms[0] + terms[1] + terms[2]
        total.backward()
        results[name] = ([float(t.detach()) for t in (*terms, total)], image.grad.detach().clone())
    image.grad = None
    (e_terms, e_grad), (r_terms, r_grad) = results["engine"], results["reference"]
    rel = {
        key: abs(e - r) / max(abs(r), 1e-30) for key, e, r in zip(("content", "style", "tv", "total"), e_terms, r_terms)
    }
    rel["grad"] = float((e_grad - r_grad).norm() / r_grad.norm().clamp_min(1e-30))
    rel["loss"] = r_terms[3]
    return rel


def timed_rounds(runs: dict[str, Evaluation], repeats: int, device: torch.device, precision: str) -> dict:
    """The interleaved rounds: every sample, each round's median and the peak CUDA memory per
    variant, and the GEMM peak measured at the start of each round."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    round_medians: dict[str, list[float]] = {name: [] for name in runs}
    peak: dict[str, int] = {name: 0 for name in runs}
    peaks: list[float] = []
    for count in per_round(repeats):
        peaks.append(matmul_peak_gflops(device, precision))  # once per round: same load as the timings
        if count == 0:
            continue
        blocks = alternate(runs, count, device, peak)
        for name, block in blocks.items():
            samples[name] += block
            round_medians[name].append(round(statistics.median(block), 3))
    return {"samples": samples, "round_medians": round_medians, "peak": peak, "peaks": peaks}


def alternate(runs: dict[str, Evaluation], count: int, device: torch.device, peak: dict[str, int]) -> dict:
    """`count` evaluations of each variant, alternating evaluation by evaluation, so each pair
    sees about the same load (the median of the pairs' ratios is the figure least moved by it);
    raises `peak` to the CUDA memory each added."""
    blocks: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(count):
        for name, run in runs.items():
            block, extra = time_block(run, 1, device)
            blocks[name] += block
            if extra is not None:
                peak[name] = max(peak[name], extra)
    return blocks


def measure(size: int, device: torch.device, repeats: int, images: Path, precision: str = "fp32") -> dict:
    rss_before = peak_rss_mib()
    torch.manual_seed(SEED)
    setup = build(size, device, images, precision)
    runs = {
        "engine": engine_evaluation(setup["engine"], setup["image"]),
        "reference": evaluation(setup["reference"], setup["image"]),
    }
    agreement = check_agreement(setup)
    flops = count_flops(runs["reference"])
    flops_engine = count_flops(runs["engine"])
    warm_up(runs, device)
    sync(device)
    timed = timed_rounds(runs, repeats, device, setup["precision"])
    result = timing_figures(size, device, repeats, setup, timed, flops)
    result |= agreement_figures(agreement, setup)
    if flops_engine != flops:
        result["engine_gflop_per_eval"] = round(flops_engine / 1e9, 3)
    result |= memory_figures(device, timed["peak"], rss_before)
    return result


def timing_figures(size: int, device: torch.device, repeats: int, setup: dict, timed: dict, flops: int) -> dict:
    samples, round_medians, peaks = timed["samples"], timed["round_medians"], timed["peaks"]
    pair_ratios = [r / e for e, r in zip(samples["engine"], samples["reference"])]
    engine_ms = statistics.median(samples["engine"])
    reference_ms = statistics.median(samples["reference"])
    height, width = setup["shape"]
    peak_gflops = max(peaks)
    return {
        "size": size,
        "width": width,
        "height": height,
        "device": device.type,
        "precision": setup["precision"],
        "repeats": repeats,
        "engine_ms": round(engine_ms, 3),
        "reference_ms": round(reference_ms, 3),
        "speedup": round(reference_ms / engine_ms, 3),
        "paired_speedup": round(statistics.median(pair_ratios), 3),
        "gflop_per_eval": round(flops / 1e9, 3),
        "engine_gflops": round(flops / engine_ms / 1e6, 2),
        "reference_gflops": round(flops / reference_ms / 1e6, 2),
        "matmul_peak_gflops": round(peak_gflops, 2),
        "matmul_round_gflops": [round(g, 1) for g in peaks],
        "engine_peak_fraction": round(flops / engine_ms / 1e6 / peak_gflops, 3),
        "reference_peak_fraction": round(flops / reference_ms / 1e6 / peak_gflops, 3),
        "engine_min_ms": round(min(samples["engine"]), 3),
        "reference_min_ms": round(min(samples["reference"]), 3),
        "engine_max_ms": round(max(samples["engine"]), 3),
        "reference_max_ms": round(max(samples["reference"]), 3),
        "engine_round_median_ms": round_medians["engine"],
        "reference_round_median_ms": round_medians["reference"],
    }


def agreement_figures(agreement: dict[str, float], setup: dict) -> dict:
    return {
        "rel_diff_loss": agreement["total"],
        "rel_diff_terms": {k: agreement[k] for k in ("content", "style", "tv")},
        "rel_diff_grad": agreement["grad"],
        "loss": agreement["loss"],
        "content_image": setup["content_src"],
        "style_image": setup["style_src"],
    }


def memory_figures(device: torch.device, peak: dict[str, int], rss_before: float) -> dict:
    if device.type == "cuda":
        return {
            "engine_peak_mib": round(peak["engine"] / 2**20, 1),
            "reference_peak_mib": round(peak["reference"] / 2**20, 1),
        }
    # Peak RSS only grows: what it was before this size was set up tells how much the
    # size itself added (0 when an earlier, larger size already went higher).
    return {"process_peak_rss_mib": round(peak_rss_mib(), 1), "process_peak_rss_before_mib": round(rss_before, 1)}


# --------------------------------------------------------------------------- a batch against separate evaluations


def batched_objective(objective: StyleObjective):
    """The engine's network and losses over an (N, 3, H, W) batch, each image against the same
    targets (they broadcast over the batch; the mean over the images keeps the scale)."""

    def run(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = objective.net(image)
        n = image.shape[0]
        content = sum(
            content_loss(features[k], t.expand(n, *t.shape[1:])) for k, t in objective.content_targets.items()
        )
        style = sum(
            objective.layer_weights[k] * style_loss(features[k], t.expand(n, *t.shape[1:]))
            for k, t in objective.style_targets.items()
        )
        return (
            objective.content_weight * content,
            objective.style_weight * style,
            objective.tv_weight * tv_loss(image),
        )

    return run


def batch_images(setup: dict, batch: int, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`batch` noisy copies of the start image as one batch, and the same as single images."""
    generator = torch.Generator().manual_seed(SEED + 3)
    start = setup["image"].detach().cpu()
    noise = 0.05 * torch.randn((batch, *start.shape[1:]), generator=generator)
    batched = (start + noise).clamp(0, 1).to(device).requires_grad_(True)
    singles = [batched[i : i + 1].detach().clone().requires_grad_(True) for i in range(batch)]
    return batched, singles


def gradient_agreement(
    one_batch: Evaluation, one_each: list[Evaluation], batched: torch.Tensor, singles: list[torch.Tensor]
) -> float:
    """The relative difference of the gradients: the same images give the same ones either way
    (up to the 1/N of the batch mean)."""
    one_batch()
    for run in one_each:
        run()
    single_grads = torch.cat([image.grad for image in singles])
    return float((batched.grad * len(singles) - single_grads).norm() / single_grads.norm())


def measure_batch(size: int, device: torch.device, repeats: int, images: Path, batch: int) -> dict:
    """Per-image cost of `batch` images through VGG as one batch against one at a time.

    The engine optimises one image per job; this asks whether evaluating several jobs'
    images together would pay. Same objective (the engine's VGGFeatures and losses, each
    image against the same targets), run as one (N, 3, H, W) evaluation or N (1, 3, H, W) ones.
    """
    torch.manual_seed(SEED)
    setup = build(size, device, images)
    batched, singles = batch_images(setup, batch, device)
    one_batch = evaluation(batched_objective(setup["engine"]), batched)
    one_each = [evaluation(setup["engine"], image) for image in singles]

    rel_grad = gradient_agreement(one_batch, one_each, batched, singles)
    runs = {"batch": one_batch, "separate": lambda: [run() for run in one_each][-1]}
    warm_up(runs, device)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for count in per_round(repeats):
        for name, run in runs.items():
            if count:
                samples[name] += time_block(run, count, device)[0]
    batch_ms = statistics.median(samples["batch"]) / batch
    separate_ms = statistics.median(samples["separate"]) / batch
    height, width = setup["shape"]
    return {
        "size": size,
        "width": width,
        "height": height,
        "device": device.type,
        "batch": batch,
        "repeats": repeats,
        "batch_ms_per_image": round(batch_ms, 3),
        "separate_ms_per_image": round(separate_ms, 3),
        "batch_speedup": round(separate_ms / batch_ms, 3),
        "rel_diff_grad": rel_grad,
    }


# --------------------------------------------------------------------------- style masks against none


def masked_and_plain(setup: dict, size: int, device: torch.device, images: Path, precision: str) -> dict:
    """Two styles (each with its own target) on complementary half masks, and blended without."""
    params = StyleParams(weights="random", precision=precision)
    objective = setup["engine"]
    style = load_image(images / STYLE_FILE, size, (size, size), SEED + 1)[0].to(device)
    styles = [style, style.flip(-1)]
    height, width = setup["shape"]
    left = torch.zeros(1, 1, height, width, device=device)
    left[..., : width // 2] = 1
    base = setup["content"]
    blend = params.style_blend_for(2)
    plain = StyleObjective(objective.net, params, base, styles, blend, precision=setup["precision"])
    masked = StyleObjective(
        objective.net, params, base, styles, blend, precision=setup["precision"], style_masks=[left, 1 - left]
    )
    return {"plain": engine_evaluation(plain, setup["image"]), "masked": engine_evaluation(masked, setup["image"])}


def measure_masks(size: int, device: torch.device, repeats: int, images: Path, precision: str) -> dict:
    """Engine evaluations with two styles on complementary half masks (guided Gram matrices)
    against the same two styles blended with no masks, interleaved pair by pair."""
    torch.manual_seed(SEED)
    setup = build(size, device, images, precision)
    runs = masked_and_plain(setup, size, device, images, precision)
    warm_up(runs, device)
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name] += time_block(run, 1, device)[0]
    ratios = [m / p for p, m in zip(samples["plain"], samples["masked"])]
    height, width = setup["shape"]
    return {
        "size": size,
        "width": width,
        "height": height,
        "device": device.type,
        "precision": setup["precision"],
        "repeats": repeats,
        "plain_ms": round(statistics.median(samples["plain"]), 3),
        "masked_ms": round(statistics.median(samples["masked"]), 3),
        "masked_over_plain": round(statistics.median(ratios), 3),
        "fastest_over_fastest": round(min(samples["masked"]) / min(samples["plain"]), 3),
        "plain_spread_ms": [round(min(samples["plain"]), 1), round(max(samples["plain"]), 1)],
        "masked_spread_ms": [round(min(samples["masked"]), 1), round(max(samples["masked"]), 1)],
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
