"""Peak memory of a web process under a burst of large uploads (issue 13, item 8).

Starts a real `impasto web` (gunicorn, its default 2 processes x 16 threads), on SQLite, a
local folder and a Redis of its own, and sends it a burst of concurrent submissions, each a
content image and `--styles` style images of `--megapixels` megapixels (seeded smooth noise,
JPEG). It prints every answer's status and each gunicorn process's peak resident set
(VmHWM), which must stay under 1 GiB.

With `--before REV`, the same burst first goes to the web tier of git revision REV (its tree
extracted into a temporary folder and run from there, with this environment's packages), so
one run measures before and after on the same machine and images.

    python bench/web_memory.py                      # 20 submissions x 5 styles x 40 MP
    python bench/web_memory.py --before HEAD~1      # and the same against the previous commit
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from shared.launcher import free_port, start_redis, stop_all  # noqa: E402
from tests.servers import child_pids, peak_memory_kib  # noqa: E402

SEED = 0
LIMIT_MIB = 1024


def smooth_noise(megapixels: float, seed: int, quality: int = 90) -> bytes:
    """A 8:5 JPEG of seeded noise blown up from 1/40 scale: photo-like in size on disk."""
    width = round((megapixels * 1e6 * 8 / 5) ** 0.5)
    height = round(megapixels * 1e6 / width)
    small = np.random.default_rng(seed).integers(0, 256, (height // 40, width // 40, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def burst(code: Path, env: dict[str, str], files: list[tuple[str, tuple[str, bytes]]], count: int) -> dict:
    """Start the web tier of `code`, send `count` submissions at once, measure, stop it."""
    run_env = {**env, "PYTHONPATH": str(code), "IMPASTO_QUEUE": f"bench-web-{uuid.uuid4().hex[:8]}"}
    subprocess.run([sys.executable, "-m", "shared.cli", "db", "upgrade"], cwd=code, env=run_env, check=True)
    port = free_port()
    log = Path(env["IMPASTO_DATA_DIR"]) / f"web-{port}.log"
    with open(log, "wb") as out:
        web = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "web", "--port", str(port)],
            cwd=code,
            env=run_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    processes = [("web", web)]
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if web.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the web server did not start; see {log}")
            time.sleep(0.2)
        workers = child_pids(web.pid)
        idle = max(peak_memory_kib(pid) for pid in workers)

        def submit(_: int) -> tuple[int, str]:
            try:
                answer = requests.post(f"{base}/api/v1/jobs", files=files, data={"size": "512"}, timeout=300)
            except requests.RequestException as err:
                return 0, f"no answer: {err}"
            detail = answer.json().get("status") or answer.json().get("error", {}).get("message", "")
            return answer.status_code, str(detail)

        started = time.monotonic()
        with ThreadPoolExecutor(count) as pool:
            answers = list(pool.map(submit, range(count)))
        seconds = time.monotonic() - started
        peaks = {pid: peak_memory_kib(pid) for pid in workers}
    finally:
        stop_all(processes)
    statuses: dict[str, int] = {}
    for status, detail in answers:
        key = f"{status} {detail}"
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "idle_peak_mib": round(idle / 1024),
        "peak_mib_per_process": sorted(round(kib / 1024) for kib in peaks.values()),
        "answers": statuses,
        "seconds": round(seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="concurrent submissions (default: 20)")
    parser.add_argument("--styles", type=int, default=5, help="style images per submission (default: 5)")
    parser.add_argument("--megapixels", type=float, default=40, help="pixels of each image, in millions (default: 40)")
    parser.add_argument("--before", metavar="REV", help="first measure the web tier of this git revision")
    args = parser.parse_args()

    images = [smooth_noise(args.megapixels, SEED + i) for i in range(args.styles + 1)]
    files = [("content", ("photo.jpg", images[0]))]
    files += [("style", (f"painting{i}.jpg", data)) for i, data in enumerate(images[1:])]
    request_mib = sum(len(data) for data in images) / 2**20
    print(
        f"{args.requests} concurrent submissions, each a content image and {args.styles} styles of "
        f"{args.megapixels:g} MP ({request_mib:.1f} MiB of JPEG per request)",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        data.mkdir()
        redis_processes: list = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMPASTO_")}
        env.update(
            IMPASTO_DATA_DIR=str(data),
            IMPASTO_BROKER_URL=start_redis(data, redis_processes),
            IMPASTO_SECRET_KEY="bench-web-memory-" + "0" * 32,
            IMPASTO_ANONYMOUS_JOBS_PER_HOUR="0",
            IMPASTO_MAX_UPLOAD_BYTES=str(int(request_mib * 2**20) + 2**20),
            IMPASTO_MAX_STYLES=str(max(args.styles, 5)),
        )
        try:
            runs = []
            if args.before:
                old = Path(folder) / "before"
                old.mkdir()
                archive = subprocess.run(
                    ["git", "-C", str(REPO_ROOT), "archive", args.before], check=True, capture_output=True
                ).stdout
                subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
                runs.append((f"before ({args.before})", old))
            runs.append(("after (this tree)", REPO_ROOT))
            results = {}
            for name, code in runs:
                result = burst(code, env, files, args.requests)
                results[name] = result
                worst = max(result["peak_mib_per_process"])
                verdict = "under" if worst < LIMIT_MIB else "OVER"
                print(
                    f"{name}: peak RSS per web process {result['peak_mib_per_process']} MiB "
                    f"(idle {result['idle_peak_mib']} MiB), {verdict} {LIMIT_MIB} MiB; "
                    f"answers {result['answers']}; {result['seconds']} s",
                    flush=True,
                )
            print(json.dumps(results))
        finally:
            stop_all(redis_processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
