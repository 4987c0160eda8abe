"""Benchmark the service around the engine, with every part real: a scratch PostgreSQL
database, this machine's Redis (a queue of its own), `impasto web` (gunicorn, as
web/serve.py configures it) and `impasto worker` (Celery), started here as processes.

    python bench/service.py latency  [--jobs 40]           # submit -> running, idle worker
    python bench/service.py polling  [--clients 50 --seconds 15 --interval 0.5]  # GET a job
    python bench/service.py overhead [--size 256 --iterations 30]  # POST -> final vs the engine in-process
    python bench/service.py all                             # the three, one service

Each prints its figures as a table, and one JSON line with --json. Needs PostgreSQL
(--postgres, default postgresql://postgres@127.0.0.1:5432/test; a database is created and
dropped) and Redis (--redis, default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image

# bench/ is not a package: make `shared` and `tests` importable when run as a script, and the
# library modules beside this one.
REPO_ROOT = Path(__file__).resolve().parent.parent
for path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from in_process_engine import ENGINE_CHILD, InProcessEngine, in_process_engine  # noqa: E402
from service_client import CONTENT, FINAL, STYLE, Client, bench_service  # noqa: E402
from service_polling import polling  # noqa: E402
from service_stats import summary, table  # noqa: E402

# -- 6. submit -> running -------------------------------------------------------------------


def latency(service: Client, jobs: int, size: int, iterations: int) -> dict:
    """Tiny jobs one after another, each submitted to an idle worker once the last is over."""
    http = requests.Session()
    first = service.submit(http, size=size, iterations=iterations)  # the worker's first job, not counted
    service.wait(http, first, FINAL)
    ids, posted, observed = [], {}, {}
    for _ in range(jobs):
        time.sleep(0.3)  # the worker is back at its queue, idle
        before = time.time()
        job_id = service.submit(http, size=size, iterations=iterations)
        posted[job_id] = (before, time.time())
        service.wait(http, job_id, {"running"} | FINAL, every=0.005)
        observed[job_id] = time.time() - before
        service.wait(http, job_id, FINAL)
        ids.append(job_id)
    rows = service.rows(ids + [first])
    first_ms = (rows[first].started_at - rows[first].created_at).total_seconds() * 1000
    result = {
        "first_job_queue_ms": first_ms,
        "queue_ms": summary([(rows[i].started_at - rows[i].created_at).total_seconds() * 1000 for i in ids]),
        "post_ms": summary([(posted[i][1] - posted[i][0]) * 1000 for i in ids]),
        "client_running_ms": summary([observed[i] * 1000 for i in ids]),
    }
    print_latency(result, jobs, size, iterations)
    return result


def print_latency(result: dict, jobs: int, size: int, iterations: int) -> None:
    table(
        f"6. submit -> running, idle worker ({jobs} jobs, {size} px, {iterations} iterations)",
        "ms",
        {
            "row started_at - created_at": result["queue_ms"],
            "client POST round trip": result["post_ms"],
            "client POST -> sees running (5ms)": result["client_running_ms"],
        },
    )
    print(f"the worker's first job (not counted above): started_at - created_at {result['first_job_queue_ms']:.1f} ms")
    met = result["queue_ms"]["median"] < 100
    print(
        f"target: median queue overhead < 100 ms: {'met' if met else 'MISSED'} ({result['queue_ms']['median']:.1f} ms)"
    )


# -- 8. overhead around the engine -------------------------------------------------------------


def overhead(service: Client, size: int, iterations: int, repeats: int, poll_every: float) -> dict:
    """What a user waits for, POST to the final status a polling client sees, against the same
    engine work run in-process; both warm (weights loaded, one run done), alternating."""
    http = requests.Session()
    snapshot_every = max(1, round(iterations / 10))  # the service's default, given to both
    fields = {"size": size, "iterations": iterations, "snapshot_every": snapshot_every}
    engine = InProcessEngine(service.env)
    try:
        # Warm-ups, not counted: the worker's pool process loads torch and VGG-19 on its first job.
        engine.run(CONTENT, STYLE, fields)
        service.wait(http, service.submit(http, **fields), FINAL, every=poll_every)
        times = {"inproc": [], "waited": [], "queued": [], "ran": []}
        for repeat in range(repeats):
            overhead_pair(service, http, engine, fields, repeat, poll_every, times)
    finally:
        engine.close()
    return overhead_figures(times, size, iterations, repeats, poll_every)


def style_of_its_own(repeat: int, folder: Path) -> Path:
    """A style of its own per run (one pixel differs), the same on both sides: a worker keeps
    the style targets of recent styles, which would spare it work the other side does."""
    style = folder / "style.png"
    with Image.open(STYLE) as image:
        image = image.convert("RGB")
        image.putpixel((0, 0), (repeat % 256, 0, 0))
        image.save(style)
    return style


def overhead_pair(
    service: Client,
    http: requests.Session,
    engine: InProcessEngine,
    fields: dict,
    repeat: int,
    poll_every: float,
    times: dict[str, list[float]],
) -> None:
    """One in-process run, then the same work as a job; their times appended to `times`."""
    with tempfile.TemporaryDirectory() as out:
        style = style_of_its_own(repeat, Path(out))
        seconds, params = engine.run(CONTENT, style, fields)
        times["inproc"].append(seconds)
        time.sleep(0.3)
        began = time.perf_counter()
        job_id = service.submit(http, style_path=style, **fields)
        job = service.wait(http, job_id, FINAL, every=poll_every)
        times["waited"].append(time.perf_counter() - began)
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job_id} {job['status']}: {job}")
    if job["params"] != params:
        raise SystemExit(f"not the same work: the job ran {job['params']}, in-process {params}")
    row = service.rows([job_id])[job_id]
    times["queued"].append((row.started_at - row.created_at).total_seconds())
    times["ran"].append((row.finished_at - row.started_at).total_seconds())


def overhead_figures(
    times: dict[str, list[float]], size: int, iterations: int, repeats: int, poll_every: float
) -> dict:
    inproc, waited, queued, ran = times["inproc"], times["waited"], times["queued"], times["ran"]
    rest = [w - q - r for w, q, r in zip(waited, queued, ran)]
    rows = {
        "in-process engine (warm)": summary(inproc),
        "service: POST -> client sees final": summary(waited),
        "  of which row created -> started": summary(queued),
        "  of which row started -> finished": summary(ran),
        "  of which the rest (HTTP, polling)": summary(rest),
    }
    table(
        f"8. one job, {size} px, {iterations} iterations, {repeats} runs each, alternating, "
        f"client polling every {poll_every:g} s",
        "s",
        rows,
    )
    pairs = statistics.median(w / e for w, e in zip(waited, inproc))
    extra = statistics.median(waited) / statistics.median(inproc) - 1
    print(
        f"service POST -> final vs in-process engine: {pairs:.3f}x (median of the {repeats} back-to-back pairs' "
        f"ratios); ratio of medians {extra * 100:+.1f}% (target < 5%: {'met' if extra < 0.05 else 'MISSED'})"
    )
    return {**rows, "pair_ratio_median": pairs, "extra": extra, "poll_every": poll_every}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["latency", "polling", "overhead", "all"])
    parser.add_argument(
        "--postgres", default=os.environ.get("IMPASTO_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--redis", default=os.environ.get("IMPASTO_BENCH_REDIS", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--jobs", type=int, default=40, help="latency: tiny jobs (default 40)")
    parser.add_argument("--clients", type=int, default=50, help="polling: concurrent clients (default 50)")
    parser.add_argument("--seconds", type=float, default=15, help="polling: how long each phase (default 15)")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.5,
        help="polling: seconds between one client's requests in the paced phase (default 0.5)",
    )
    parser.add_argument("--size", type=int, default=256, help="overhead: image size (default 256)")
    parser.add_argument("--iterations", type=int, default=30, help="overhead: iterations (default 30)")
    parser.add_argument("--repeats", type=int, default=3, help="overhead: runs of each (default 3)")
    parser.add_argument(
        "--poll-every", type=float, default=0.05, help="overhead: seconds between the client's GETs (default 0.05)"
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON line of the figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == [ENGINE_CHILD]:
        return in_process_engine()
    args = make_parser().parse_args(argv)
    # A SIGTERM (timeout, Ctrl-C from a supervisor) still stops the processes and drops the database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.stdout.reconfigure(line_buffering=True)  # figures show as they come, even if it is stopped
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} {platform.node()} "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
    )
    figures = run(args)
    print(f"# load average after: {os.getloadavg()[0]:.1f}", file=sys.stderr)
    if args.json:
        print(json.dumps(figures))
    return 0


def run(args: argparse.Namespace) -> dict[str, dict]:
    """The subcommand's measurements, on one service."""
    figures: dict[str, dict] = {}
    with bench_service(args.postgres, args.redis) as service:
        if args.what in ("latency", "all"):
            figures["latency"] = latency(service, args.jobs, size=64, iterations=2)
        if args.what in ("polling", "all"):
            figures["polling"] = polling(service, args.clients, args.seconds, args.interval)
        if args.what in ("overhead", "all"):
            figures["overhead"] = overhead(service, args.size, args.iterations, args.repeats, args.poll_every)
    return figures


if __name__ == "__main__":
    sys.exit(main())
