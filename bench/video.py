"""Flicker and speed of clips: the temporal loss against stylizing every frame alone.

The clip pans a still photo (tests/data/tubingen.jpg) by `--shift` px a frame, so the scene
moves exactly that far between frames. Both runs use the same params (random VGG-19
weights unless --weights says otherwise), in the same process:

- video: worker/engine/video.py as the service runs it (warped start, temporal loss);
- alone: the same generator with temporal_weight 0, every frame from its own content.

Flicker is the mean absolute difference (0-255) between consecutive output frames over the
region that stays in view, each pair aligned by the known shift (what moves with the scene
is not flicker). `raw` is the same without aligning. Seconds per frame are the engine's own
time, the first frame (all scales) apart from the following ones.

    python bench/video.py                                   # flicker: 8 frames, 128 px
    python bench/video.py --size 256 --frames 4 --skip-alone    # seconds per frame at 256 px
    python bench/video.py --service 1 2 --frames 10         # one clip's wall time on 1, then 2 workers

--service starts the real service (impasto web and N `impasto worker` processes, SQLite, a
private Redis) for each count, submits the panned clip through the API (cut into segments of
--segment-frames), and times it from submission to success. Each worker runs torch on one
thread (OMP_NUM_THREADS=1), so that N workers stand for N GPUs rather than sharing one
process's threads.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from shared.params import StyleParams  # noqa: E402
from worker.engine import load_weights  # noqa: E402
from worker.engine.video import FrameDone, FrameProgress, stylize_frames  # noqa: E402

DATA = REPO_ROOT / "tests" / "data"


def panned_frames(photo: Image.Image, size: tuple[int, int], frames: int, shift: int) -> list[Image.Image]:
    """`frames` windows of `size` over `photo` (scaled to the window's height), each `shift` px
    right of the last: the scene moves `shift` px left per frame."""
    width, height = size
    wide = photo.convert("RGB")
    need = width + shift * (frames - 1)
    scale = max(height / wide.height, need / wide.width)
    wide = wide.resize((round(wide.width * scale), round(wide.height * scale)), Image.Resampling.LANCZOS)
    top = (wide.height - height) // 2
    return [wide.crop((shift * t, top, shift * t + width, top + height)) for t in range(frames)]


def flicker(outputs: list[Image.Image], shift: int) -> tuple[float, float]:
    """(aligned, raw) mean absolute difference of consecutive frames, 0-255."""
    arrays = [np.asarray(o, dtype=np.float32) for o in outputs]
    aligned = [np.abs(b[:, : b.shape[1] - shift] - a[:, shift:]).mean() for a, b in zip(arrays, arrays[1:])]
    raw = [np.abs(b - a).mean() for a, b in zip(arrays, arrays[1:])]
    return float(np.mean(aligned)), float(np.mean(raw))


def run(frames, style, params, weights) -> tuple[list, list[float], list[float], list[float], list[int]]:
    """Outputs, seconds per frame, the temporal loss's coverage per frame, style losses, evaluations."""
    outputs, seconds, coverage, style_losses = [], [], [], []
    evaluations = [0] * len(frames)  # objective evaluations per frame, line-search trials included
    started = time.perf_counter()
    for event in stylize_frames(frames, [style], params, device="cpu", weights=weights):
        if isinstance(event, FrameProgress):
            evaluations[event.frame] = event.progress.evaluations
        elif isinstance(event, FrameDone):
            outputs.append(event.image)
            style_losses.append(event.result.losses.style)
            now = time.perf_counter()
            seconds.append(now - started)
            started = now
            if event.coverage is not None:
                coverage.append(event.coverage)
    return outputs, seconds, coverage, style_losses, evaluations


def encode_mp4(frames: list[Image.Image], fps: int = 12) -> bytes:
    """The frames as an H.264 MP4, as a phone would send them."""
    from fractions import Fraction

    from shared.video import ClipInfo, encode_clip

    info = ClipInfo("mp4", "h264", frames[0].size, len(frames), Fraction(fps), None)
    return encode_clip(frames, info)


def service_seconds(workers: int, clip: bytes, style: Image.Image, args: argparse.Namespace) -> float:
    """Wall time of one clip on a fresh service with `workers` worker processes."""
    import requests

    from shared.launcher import free_port, start_redis, stop_all
    from tests.servers import service_env, start, stop, wait_for_http, wait_for_log

    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        processes: list = []
        redis_url = start_redis(folder, processes)
        env = service_env(
            {
                "IMPASTO_DATA_DIR": str(folder / "data"),
                "IMPASTO_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
                "IMPASTO_BROKER_URL": redis_url,
                "IMPASTO_SEGMENT_FRAMES": str(args.segment_frames),
                "IMPASTO_CPU_MAX_SIZE": "0",
            }
        )
        env["OMP_NUM_THREADS"] = "1"
        running = []
        try:
            assert start(["db", "upgrade"], env, folder / "migrate.log").wait(timeout=120) == 0
            port = free_port()
            web = start(["web", "--port", str(port)], env, folder / "web.log")
            running.append(web)
            wait_for_http(f"http://127.0.0.1:{port}/healthz", web, folder / "web.log")
            for n in range(workers):
                log = folder / f"worker-{n}.log"
                running.append(start(["worker"], env, log))
                wait_for_log(log, "ready.", running[-1])
            painting = io.BytesIO()
            style.save(painting, "JPEG")
            fields = {"size": str(args.size), "iterations": str(args.iterations), "weights": args.weights}
            started = time.perf_counter()
            sent = requests.post(
                f"http://127.0.0.1:{port}/api/v1/jobs",
                files={"content": ("clip.mp4", clip), "style": ("style.jpg", painting.getvalue())},
                data=fields,
                timeout=120,
            )
            assert sent.status_code == 202, sent.text
            url = f"http://127.0.0.1:{port}/api/v1/jobs/{sent.json()['id']}"
            while (job := requests.get(url, timeout=30).json())["status"] in ("queued", "running"):
                time.sleep(0.2)
            seconds = time.perf_counter() - started
            assert job["status"] == "succeeded", job
            _print_segments(env, job["id"])
            return seconds
        finally:
            for process in running:
                stop(process)
            stop_all(processes)


def _print_segments(env: dict[str, str], clip_id: str) -> None:
    """Which worker ran each segment, and when: whether they overlapped."""
    from sqlalchemy import select

    from shared.db import make_engine, session_factory
    from shared.models import Job
    from shared.settings import load_settings

    engine = make_engine(load_settings(env).database_url)
    try:
        with session_factory(engine)() as session:
            rows = session.execute(
                select(Job.worker, Job.started_at, Job.finished_at, Job.iterations).where(Job.parent_id == clip_id)
            ).all()
    finally:
        engine.dispose()
    first = min(r.started_at for r in rows)
    for worker, start, end, frames in rows:
        begin, finish = (start - first).total_seconds(), (end - first).total_seconds()
        print(f"  segment of {frames} frames on {worker}: {begin:.1f}-{finish:.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="frame width (= output size) in px")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--shift", type=int, default=2, help="pan per frame in px")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--temporal-weight", type=float, default=None, help="default: StyleParams'")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--skip-alone", action="store_true", help="time the video run only")
    parser.add_argument("--save", help="write both runs' frames into this folder")
    parser.add_argument("--service", type=int, nargs="+", help="worker counts to time the clip on, as a service")
    parser.add_argument("--segment-frames", type=int, default=5, help="--service: frames per segment")
    args = parser.parse_args()

    size = (args.size, args.size * 3 // 4)
    with Image.open(DATA / "tubingen.jpg") as photo:
        frames = panned_frames(photo, size, args.frames, args.shift)
    with Image.open(DATA / "starry_night.jpg") as painting:
        style = painting.convert("RGB")
    if args.service:
        clip = encode_mp4(frames)
        print(
            f"service: {args.frames} frames {size[0]}x{size[1]}, segments of {args.segment_frames}, "
            f"{args.iterations} iterations, weights {args.weights}"
        )
        for workers in args.service:
            print(f"{workers} worker(s): {service_seconds(workers, clip, style, args):.1f} s wall")
        return 0
    extra = {} if args.temporal_weight is None else {"temporal_weight": args.temporal_weight}
    params = StyleParams(size=args.size, iterations=args.iterations, weights=args.weights, **extra)
    weights = load_weights(args.weights)
    print(f"clip: {args.frames} frames {size[0]}x{size[1]}, pan {args.shift} px/frame; {args.iterations} iterations")
    print(f"params: temporal_weight {params.temporal_weight}, scales {params.scales}, weights {args.weights}")

    runs = {"video": params}
    if not args.skip_alone:
        runs["alone"] = params.model_copy(update={"temporal_weight": 0.0})
    figures = {}
    for name, run_params in runs.items():
        outputs, seconds, coverage, style_losses, evaluations = run(frames, style, run_params, weights)
        aligned, raw = flicker(outputs, args.shift)
        figures[name] = aligned
        following = seconds[1:] or [float("nan")]
        held = np.mean(coverage) if coverage else float("nan")
        print(
            f"{name:5s}: flicker {aligned:.2f} (raw {raw:.2f}); s/frame first {seconds[0]:.1f}, "
            f"following {np.mean(following):.1f}; evaluations first {evaluations[0]}, "
            f"following {np.mean(evaluations[1:] or [0]):.0f}; style loss {np.mean(style_losses):.3g}; "
            f"coverage {held:.3f}"
        )
        if args.save:
            folder = Path(args.save)
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(outputs):
                image.save(folder / f"{name}_{i:03d}.png")
    if "alone" in figures:
        print(f"flicker ratio video / alone: {figures['video'] / figures['alone']:.3f} (target <= 0.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
