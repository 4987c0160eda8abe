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
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.vgg import cfgs, make_layers

# bench/ is not a package: make `shared` and `worker` importable when run as a script from a
# plain clone, without relying on the editable install.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from shared.params import StyleParams, vgg19_layer_names  # noqa: E402
from worker.engine import StyleObjective, VGGFeatures, load_weights, resolve_precision  # noqa: E402
from worker.engine.descent import Descent  # noqa: E402
from worker.engine.images import to_tensor  # noqa: E402
from worker.engine.losses import content_loss, style_loss, tv_loss  # noqa: E402

# The sample images live beside the repository (../shared/images) in the project's
# workspace; a user's clone may not have them, and then seeded random images stand in.
DEFAULT_IMAGES = REPO_ROOT.parent / "shared" / "images"
CONTENT_FILE = "tubingen.jpg"
STYLE_FILE = "starry_night.jpg"

SEED = 0
ROUNDS = 3  # engine and reference alternate this many times, so drift hits both alike
DEFAULT_REPEATS = {"cpu": 20, "cuda": 100}  # timed evaluations per variant, over all rounds
WARMUP = {"cpu": 2, "cuda": 10}
# The matrix multiplies whose best speed stands for the device's float32 peak: square torch.mm
# of these sizes, and the same GEMM as a 1x1 channels-last convolution (on a CPU that one runs
# in oneDNN, like the engine's convolutions, and is often faster than torch.mm's BLAS).
PEAK_MATMUL_N = {"cpu": (1024, 2048), "cuda": (4096, 8192)}
PEAK_MATMUL_REPEATS = 5

Evaluation = Callable[[], torch.Tensor]


# --------------------------------------------------------------------------- reference


class ReferenceObjective:
    """Gatys et al.'s loss the textbook way: normalise, run VGG, Gram = F Fᵀ / (C·H·W), each
    term a relative squared error ‖x - t‖² / ‖t‖² (the engine's normalisation), the style
    layers weighted by `layer_weights` normalised to sum to 1."""

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(
        self,
        state: dict[str, torch.Tensor],
        content: torch.Tensor,
        style: torch.Tensor,
        content_layers: tuple[str, ...],
        style_layers: tuple[str, ...],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
        layer_weights: tuple[float, ...] | None = None,
    ):
        layer_weights = layer_weights or (1.0,) * len(style_layers)
        self.layer_weights = [w / sum(layer_weights) for w in layer_weights]
        # Named by shared.params (derived from the block sizes), not by the engine, so that
        # an off-by-one in either shows up as a loss mismatch.
        names = vgg19_layer_names()
        features = make_layers(cfgs["E"])
        features.load_state_dict(state)
        wanted = set(content_layers) | set(style_layers)
        depth = max(names.index(n) for n in wanted) + 1  # cut after the deepest wanted layer
        modules: list[nn.Module] = []
        for module in list(features)[:depth]:
            if isinstance(module, nn.ReLU):
                module = nn.ReLU(inplace=False)
            elif isinstance(module, nn.MaxPool2d):
                module = nn.AvgPool2d(kernel_size=2, stride=2)
            modules.append(module)
        device = content.device
        self.net = nn.Sequential(*modules).to(device).eval().requires_grad_(False)
        self.names = names[:depth]
        self.content_layers = content_layers
        self.style_layers = style_layers
        self.content_weight, self.style_weight, self.tv_weight = content_weight, style_weight, tv_weight
        self.mean = torch.tensor(self.MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.STD, device=device).view(1, 3, 1, 1)
        with torch.no_grad():
            feats = self.features(content)
            self.content_targets = {n: feats[n] for n in content_layers}
            feats = self.features(style)
            self.style_targets = {n: self.gram(feats[n]) for n in style_layers}

    def features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (image - self.mean) / self.std
        out = {}
        for name, layer in zip(self.names, self.net):
            x = layer(x)
            out[name] = x
        return out

    @staticmethod
    def relative(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((x - target) ** 2).sum() / (target**2).sum()

    @staticmethod
    def gram(f: torch.Tensor) -> torch.Tensor:
        _, c, h, w = f.shape
        flat = f.view(c, h * w)
        return flat @ flat.t() / (c * h * w)

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.features(image)
        content = sum(self.relative(feats[n], self.content_targets[n]) for n in self.content_layers)
        style = sum(
            w * self.relative(self.gram(feats[n]), self.style_targets[n])
            for n, w in zip(self.style_layers, self.layer_weights)
        )
        dy = image[..., 1:, :] - image[..., :-1, :]
        dx = image[..., :, 1:] - image[..., :, :-1]
        tv = (dy**2).mean() + (dx**2).mean()
        return self.content_weight * content, self.style_weight * style, self.tv_weight * tv


# --------------------------------------------------------------------------- setup


def load_image(path: Path, long_side: int, fallback_shape: tuple[int, int], seed: int) -> tuple[torch.Tensor, str]:
    """(1, 3, H, W) in [0, 1] with the long side `long_side`, or a seeded random stand-in."""
    if path.is_file():
        with Image.open(path) as image:
            width, height = image.size
            scale = long_side / max(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            return to_tensor(image, size), path.name
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, 3, *fallback_shape), generator=generator), f"random (no {path})"


def build(size: int, device: torch.device, images: Path, precision: str = "fp32") -> dict:
    """Both objectives, their inputs, and the image tensor they are evaluated on."""
    params = StyleParams(weights="random", precision=precision)
    precision = resolve_precision(precision, device)
    weights = load_weights(params.weights)
    content, content_src = load_image(images / CONTENT_FILE, size, (round(size * 3 / 4), size), SEED)
    style, style_src = load_image(images / STYLE_FILE, size, (size, size), SEED + 1)
    if min(*content.shape[-2:], *style.shape[-2:]) < 16:
        raise SystemExit(f"--size {size} is too small: conv5_1 needs at least 16 px on the short side")
    content, style = content.to(device), style.to(device)

    layers = (*params.content_layers, *params.style_layers)
    net = VGGFeatures(weights, layers, params.pooling).to(device)
    engine = StyleObjective(net, params, content, [style], params.style_blend_for(1), precision=precision)
    reference = ReferenceObjective(
        {k: v.clone() for k, v in weights.state.items()},
        content,
        style,
        params.content_layers,
        params.style_layers,
        params.content_weight,
        params.style_weight,
        params.tv_weight,
        params.style_layer_weights,
    )

    # Evaluate near the content image, as the optimisation does, but not on it: exactly at
    # the content image the content loss is 0 and its agreement would prove nothing.
    generator = torch.Generator().manual_seed(SEED + 2)
    noise = 0.05 * torch.randn(content.shape, generator=generator)
    image = (content.cpu() + noise).clamp(0, 1).to(device).requires_grad_(True)
    return {
        "engine": engine,
        "reference": reference,
        "image": image,
        "content": content,
        "content_src": content_src,
        "style_src": style_src,
        "shape": tuple(image.shape[-2:]),
        "precision": precision,
    }


def evaluation(objective, image: torch.Tensor) -> Evaluation:
    """One forward + backward to the pixels, ending with the loss read on the host, as torch's
    L-BFGS closure does it (the reference)."""

    def run() -> torch.Tensor:
        image.grad = None
        content, style, tv = objective(image)
        total = content + style + tv
        total.backward()
        float(total.detach())
        return total

    return run


def engine_evaluation(objective: StyleObjective, image: torch.Tensor) -> Evaluation:
    """One evaluation exactly as the engine's optimizers make it: `Descent.evaluate`."""
    descent = Descent(objective, lambda x: x)

    def run() -> torch.Tensor:
        return descent.evaluate(image)[1]

    return run


# --------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
            a = torch.randn(n, n, generator=generator).to(device, dtype)
            b = torch.randn(n, n, generator=generator).to(device, dtype)
            side = 1 << (n.bit_length() - 1) // 2  # n positions (a power of 2) as a side x n/side image
            image = a.T.reshape(1, n, side, n // side).contiguous(memory_format=torch.channels_last)
            kernel = b.reshape(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
            for product in (partial(torch.mm, a, b), partial(F.conv2d, image, kernel)):
                product()  # warm-up: library initialisation, first-touch of the output
                for _ in range(PEAK_MATMUL_REPEATS):
                    sync(device)
                    start = time.perf_counter()
                    product()
                    sync(device)
                    best_gflops = max(best_gflops, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best_gflops


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

    for _ in range(WARMUP[device.type]):
        for run in runs.values():
            run()
    sync(device)

    samples: dict[str, list[float]] = {name: [] for name in runs}
    round_medians: dict[str, list[float]] = {name: [] for name in runs}
    peak: dict[str, int] = {name: 0 for name in runs}
    per_round = [repeats // ROUNDS + (1 if i < repeats % ROUNDS else 0) for i in range(ROUNDS)]
    peaks: list[float] = []
    for count in per_round:
        peaks.append(matmul_peak_gflops(device, setup["precision"]))  # once per round: same load as the timings
        if count == 0:
            continue
        # Engine and reference alternate evaluation by evaluation, so each pair sees about
        # the same load; the median of the pairs' ratios is the figure least moved by it.
        blocks: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(count):
            for name, run in runs.items():
                block, extra = time_block(run, 1, device)
                blocks[name] += block
                if extra is not None:
                    peak[name] = max(peak[name], extra)
        for name, block in blocks.items():
            samples[name] += block
            round_medians[name].append(round(statistics.median(block), 3))

    pair_ratios = [r / e for e, r in zip(samples["engine"], samples["reference"])]
    engine_ms = statistics.median(samples["engine"])
    reference_ms = statistics.median(samples["reference"])
    height, width = setup["shape"]
    peak_gflops = max(peaks)
    result = {
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
        "rel_diff_loss": agreement["total"],
        "rel_diff_terms": {k: agreement[k] for k in ("content", "style", "tv")},
        "rel_diff_grad": agreement["grad"],
        "loss": agreement["loss"],
        "content_image": setup["content_src"],
        "style_image": setup["style_src"],
    }
    if flops_engine != flops:
        result["engine_gflop_per_eval"] = round(flops_engine / 1e9, 3)
    if device.type == "cuda":
        result["engine_peak_mib"] = round(peak["engine"] / 2**20, 1)
        result["reference_peak_mib"] = round(peak["reference"] / 2**20, 1)
    else:
        # Peak RSS only grows: what it was before this size was set up tells how much the
        # size itself added (0 when an earlier, larger size already went higher).
        result["process_peak_rss_mib"] = round(peak_rss_mib(), 1)
        result["process_peak_rss_before_mib"] = round(rss_before, 1)
    return result


def measure_batch(size: int, device: torch.device, repeats: int, images: Path, batch: int) -> dict:
    """Per-image cost of `batch` images through VGG as one batch against one at a time.

    The engine optimises one image per job; this asks whether evaluating several jobs'
    images together would pay. Same objective (the engine's VGGFeatures and losses, each
    image against the same targets), run as one (N, 3, H, W) evaluation or N (1, 3, H, W) ones.
    """
    torch.manual_seed(SEED)
    setup = build(size, device, images)
    objective = setup["engine"]
    generator = torch.Generator().manual_seed(SEED + 3)
    start = setup["image"].detach().cpu()
    noise = 0.05 * torch.randn((batch, *start.shape[1:]), generator=generator)
    batched = (start + noise).clamp(0, 1).to(device).requires_grad_(True)
    singles = [batched[i : i + 1].detach().clone().requires_grad_(True) for i in range(batch)]

    def batched_objective(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # The targets broadcast over the batch; mean over the images keeps the scale.
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

    one_batch = evaluation(batched_objective, batched)
    one_each = [evaluation(objective, image) for image in singles]

    # The same images give the same gradients either way (up to the 1/N of the batch mean).
    one_batch()
    for run in one_each:
        run()
    single_grads = torch.cat([image.grad for image in singles])
    rel_grad = float((batched.grad * batch - single_grads).norm() / single_grads.norm())

    runs = {"batch": one_batch, "separate": lambda: [run() for run in one_each][-1]}
    for _ in range(WARMUP[device.type]):
        for run in runs.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    per_round = [repeats // ROUNDS + (1 if i < repeats % ROUNDS else 0) for i in range(ROUNDS)]
    for count in per_round:
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


# --------------------------------------------------------------------------- output


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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda was asked for but no CUDA GPU is available")
    repeats = args.repeats or DEFAULT_REPEATS.get(device.type, DEFAULT_REPEATS["cpu"])
    if args.batch:
        main_batch(args, device, repeats)
        return
    if args.masks:
        main_masks(args, device, repeats)
        return

    print(
        f"torch {torch.__version__}, device {device} ({device_name(device)}), "
        f"{torch.get_num_threads()} threads, {repeats} timed evaluations per variant in "
        f"{ROUNDS} interleaved rounds, median reported"
    )
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
    lines = []
    for i, size in enumerate(args.size):
        r = measure(size, device, repeats, args.images, args.precision)
        if i == 0:
            print(f"images: content {r['content_image']}, style {r['style_image']}")
            print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
        print_row(r, widths)
        terms = ", ".join(f"{k} {v:.1e}" for k, v in r["rel_diff_terms"].items())
        print(
            f"{'':>{widths[0]}}  agreement: total {r['rel_diff_loss']:.1e} ({terms}), "
            f"gradient {r['rel_diff_grad']:.1e}; {r['gflop_per_eval']:.2f} GFLOP/eval",
            flush=True,
        )
        print(
            f"{'':>{widths[0]}}  spread: engine {r['engine_min_ms']:.1f}..{r['engine_max_ms']:.1f} ms "
            f"(rounds {', '.join(f'{m:.1f}' for m in r['engine_round_median_ms'])}), reference "
            f"{r['reference_min_ms']:.1f}..{r['reference_max_ms']:.1f} ms "
            f"(rounds {', '.join(f'{m:.1f}' for m in r['reference_round_median_ms'])})"
        )
        print(
            f"{'':>{widths[0]}}  paired: median of the {r['repeats']} reference/engine ratios "
            f"of back-to-back evaluations {r['paired_speedup']:.2f}x"
        )
        print(
            f"{'':>{widths[0]}}  peak: {r['precision']} GEMM (torch.mm or 1x1 conv) "
            f"{r['matmul_peak_gflops']:.1f} GFLOP/s "
            f"(best of rounds {', '.join(f'{g:.1f}' for g in r['matmul_round_gflops'])}); engine "
            f"{100 * r['engine_peak_fraction']:.0f}%, reference {100 * r['reference_peak_fraction']:.0f}% of it"
        )
        if max(r["engine_max_ms"] / r["engine_min_ms"], r["reference_max_ms"] / r["reference_min_ms"]) > 1.5:
            print(
                f"{'':>{widths[0]}}  warning: evaluations vary by more than 1.5x; the machine is "
                f"probably busy, and the medians are not to be trusted"
            )
        if "engine_gflop_per_eval" in r:
            print(f"{'':>{widths[0]}}  note: the engine counts {r['engine_gflop_per_eval']:.2f} GFLOP/eval")
        lines.append(r)
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
    if args.json:
        for r in lines:
            print(json.dumps(r))


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


def measure_masks(size: int, device: torch.device, repeats: int, images: Path, precision: str) -> dict:
    """Engine evaluations with two styles on complementary half masks (guided Gram matrices)
    against the same two styles blended with no masks, interleaved pair by pair."""
    torch.manual_seed(SEED)
    setup = build(size, device, images, precision)
    params = StyleParams(weights="random", precision=precision)
    objective, image = setup["engine"], setup["image"]
    style = load_image(images / STYLE_FILE, size, (size, size), SEED + 1)[0].to(device)
    styles = [style, style.flip(-1)]  # two styles, each with its own target
    height, width = setup["shape"]
    left = torch.zeros(1, 1, height, width, device=device)
    left[..., : width // 2] = 1
    base = setup["content"]
    blend = params.style_blend_for(2)
    plain = StyleObjective(objective.net, params, base, styles, blend, precision=setup["precision"])
    masked = StyleObjective(
        objective.net, params, base, styles, blend, precision=setup["precision"], style_masks=[left, 1 - left]
    )
    runs = {"plain": engine_evaluation(plain, image), "masked": engine_evaluation(masked, image)}
    for _ in range(WARMUP[device.type]):
        for run in runs.values():
            run()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name] += time_block(run, 1, device)[0]
    ratios = [m / p for p, m in zip(samples["plain"], samples["masked"])]
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
