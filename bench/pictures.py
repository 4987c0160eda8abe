"""The default picture: `stylize` with the default StyleParams on the test photo and painting.

Saves the output and prints its losses (weighted, as the engine reports them) and the style
and content errors measured the same way for every engine version, so that the output of
two checkouts can be compared (issue 12's before/after):

    python bench/pictures.py --out /tmp/after                      # this checkout
    PYTHONPATH=/path/to/old/checkout python bench/pictures.py --out /tmp/before

Options: --size (default 256), --iterations (default 300), --weights (default random).
The common measure is each checkout's own loss, plus a fixed one computed here with the
relative errors of relu4_2 (content) and relu1_1..relu5_1 (style, equally weighted), so
the two pictures are judged by the same yardstick whatever their engines optimised.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # appended: a PYTHONPATH checkout comes first

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from shared.params import StyleParams  # noqa: E402
from worker.engine import Result, VGGFeatures, load_weights, stylize  # noqa: E402
from worker.engine.images import to_tensor  # noqa: E402
from worker.engine.losses import gram_matrix  # noqa: E402

IMAGES = REPO_ROOT / "tests" / "data"
YARDSTICK_CONTENT = "relu4_2"
YARDSTICK_STYLE = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def yardstick(weights, output: Image.Image, content: Image.Image, style: Image.Image) -> dict[str, float]:
    """Relative content error at relu4_2 and mean relative Gram error over relu1_1..relu5_1."""
    net = VGGFeatures(weights, (YARDSTICK_CONTENT, *YARDSTICK_STYLE))
    with torch.no_grad():
        out = net(to_tensor(output))
        target = net(to_tensor(content, output.size))
        painting = net(to_tensor(style, _fit(style.size, max(output.size))))

    def relative(x: torch.Tensor, t: torch.Tensor) -> float:
        return float(((x - t) ** 2).sum() / (t**2).sum())

    style_errors = [relative(gram_matrix(out[n]), gram_matrix(painting[n])) for n in YARDSTICK_STYLE]
    return {
        "content_error": relative(out[YARDSTICK_CONTENT], target[YARDSTICK_CONTENT]),
        "style_error": sum(style_errors) / len(style_errors),
        "style_error_per_layer": dict(zip(YARDSTICK_STYLE, style_errors)),
    }


def _fit(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    scale = long_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for output.png and losses.json")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--weights", default="random")
    parser.add_argument("--style-weight", type=float, default=None, help="instead of the default (a trial)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    content, style = load(IMAGES / "tubingen.jpg"), load(IMAGES / "starry_night.jpg")
    extra = {} if args.style_weight is None else {"style_weight": args.style_weight}
    params = StyleParams(size=args.size, iterations=args.iterations, weights=args.weights, **extra)
    weights = load_weights(args.weights)
    started = time.perf_counter()
    result = [e for e in stylize(content, [style], params, device="cpu", weights=weights)][-1]
    assert isinstance(result, Result)
    seconds = time.perf_counter() - started
    result.image.save(args.out / "output.png")
    import worker.engine

    report = {
        "engine": str(Path(worker.engine.__file__).parent),
        "params": params.model_dump(mode="json"),
        "seconds": round(seconds, 1),
        "losses": result.losses.as_dict(),
        "initial_losses": result.initial_losses.as_dict(),
        "yardstick": yardstick(weights, result.image, content, style),
    }
    (args.out / "losses.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
