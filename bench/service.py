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
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
from PIL import Image

# bench/ is not a package: make `shared` and `tests` importable when run as a script.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from shared.db import make_engine, session_factory  # noqa: E402
from shared.launcher import free_port  # noqa: E402
from shared.models import Job  # noqa: E402
from tests.servers import (  # noqa: E402
    service_env,
    start,
    stop,
    temporary_postgres_database,
    wait_for_http,
    wait_for_log,
)

CONTENT = REPO_ROOT / "tests" / "data" / "tubingen.jpg"
STYLE = REPO_ROOT / "tests" / "data" / "starry_night.jpg"
FINAL = {"succeeded", "failed", "canceled"}


@dataclass
class Service:
    base: str
    database_url: str
    env: dict[str, str]
    folder: Path

    def submit(self, http: requests.Session, **fields: object) -> str:
        return self.submit_with_token(http, **fields)[0]

    def submit_with_token(self, http: requests.Session, style_path: Path = STYLE, **fields: object) -> tuple[str, str]:
        with open(CONTENT, "rb") as content, open(style_path, "rb") as style:
            answer = http.post(
                f"{self.base}/api/v1/jobs",
                files={"content": content, "style": style},
                data={"weights": "random", **{k: str(v) for k, v in fields.items()}},
                timeout=30,
            )
        if answer.status_code != 202:
            raise SystemExit(f"submission refused: {answer.status_code} {answer.text[:500]}")
        return answer.json()["id"], answer.json()["token"]

    def wait(
        self, http: requests.Session, job_id: str, statuses: set[str], every: float = 0.01, timeout: float = 600
    ) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = http.get(f"{self.base}/api/v1/jobs/{job_id}", timeout=10).json()
            if job["status"] in statuses:
                return job
            time.sleep(every)
        raise SystemExit(f"job {job_id} not {statuses} after {timeout} s")

    def rows(self, ids: list[str]) -> dict[str, Job]:
        engine = make_engine(self.database_url)
        try:
            with session_factory(engine)() as session:
                return {job.id: job for job in session.query(Job).filter(Job.id.in_(ids))}
        finally:
            engine.dispose()


@contextlib.contextmanager
def running_service(postgres: str, redis: str) -> Iterator[Service]:
    folder = Path(tempfile.mkdtemp(prefix="impasto-bench-"))
    with temporary_postgres_database(postgres) as database_url:
        env = service_env(
            {
                "IMPASTO_DATA_DIR": str(folder / "data"),
                "IMPASTO_DATABASE_URL": database_url,
                "IMPASTO_BROKER_URL": redis,
                "IMPASTO_QUEUE": f"impasto-bench-{uuid.uuid4().hex[:8]}",
                "IMPASTO_ANONYMOUS_JOBS_PER_HOUR": "0",
            }
        )
        migrate = start(["db", "upgrade"], env, folder / "migrate.log")
        if migrate.wait(timeout=120) != 0:
            raise SystemExit((folder / "migrate.log").read_text())
        port = free_port()
        worker = start(["worker"], env, folder / "worker.log")
        web = start(["web", "--port", str(port)], env, folder / "web.log")
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz", web, folder / "web.log")
            wait_for_log(folder / "worker.log", "ready.", worker, timeout=180)
            print(f"# service up: web {port}, logs in {folder}", file=sys.stderr)
            yield Service(f"http://127.0.0.1:{port}", database_url, env, folder)
        finally:
            stop(web)
            stop(worker)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
    }


def table(title: str, unit: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'':34} {'n':>4} {'median':>9} {'p90':>9} {'p99':>9} {'min':>9} {'max':>9}  ({unit})")
    for name, s in rows.items():
        print(f"{name:34} {s['n']:>4} " + " ".join(f"{s[k]:>9.1f}" for k in ("median", "p90", "p99", "min", "max")))


# -- 6. submit -> running -------------------------------------------------------------------


def latency(service: Service, jobs: int, size: int, iterations: int) -> dict:
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
    queue_ms = [(rows[i].started_at - rows[i].created_at).total_seconds() * 1000 for i in ids]
    post_ms = [(posted[i][1] - posted[i][0]) * 1000 for i in ids]
    observed_ms = [observed[i] * 1000 for i in ids]
    result = {
        "first_job_queue_ms": first_ms,
        "queue_ms": summary(queue_ms),
        "post_ms": summary(post_ms),
        "client_running_ms": summary(observed_ms),
    }
    table(
        f"6. submit -> running, idle worker ({jobs} jobs, {size} px, {iterations} iterations)",
        "ms",
        {
            "row started_at - created_at": result["queue_ms"],
            "client POST round trip": result["post_ms"],
            "client POST -> sees running (5ms)": result["client_running_ms"],
        },
    )
    print(f"the worker's first job (not counted above): started_at - created_at {first_ms:.1f} ms")
    met = result["queue_ms"]["median"] < 100
    print(
        f"target: median queue overhead < 100 ms: {'met' if met else 'MISSED'} ({result['queue_ms']['median']:.1f} ms)"
    )
    return result


# -- 7. status polling ------------------------------------------------------------------------


def poll_phase(url: str, clients: int, seconds: float, interval: float) -> dict:
    """`clients` threads, each with its own connection, GET `url` for `seconds`: back to back
    (interval 0), or each once every `interval` seconds (an open loop, as browsers poll)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    go, stop_at = threading.Event(), [0.0]

    def client(index: int) -> None:
        session = requests.Session()
        go.wait()
        next_at = time.monotonic() + interval * index / clients  # spread the clients over one interval
        while True:
            if interval:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += interval
            if time.monotonic() >= stop_at[0]:
                return
            began = time.perf_counter()
            try:
                ok = session.get(url, timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            if ok:
                latencies[index].append((time.perf_counter() - began) * 1000)
            else:
                errors[index] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    cpu_before = os.times()
    stop_at[0] = time.monotonic() + seconds
    began = time.monotonic()
    go.set()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    cpu = os.times()
    values = [v for per in latencies for v in per]
    return {
        "clients": clients,
        "interval": interval,
        "seconds": round(elapsed, 1),
        "requests": len(values),
        "errors": sum(errors),
        "rps": len(values) / elapsed,
        "latency_ms": summary(values),
        "client_cpu_cores": (cpu.user - cpu_before.user + cpu.system - cpu_before.system) / elapsed,
    }


def polling(service: Service, clients: int, seconds: float, interval: float) -> dict:
    """Poll one job's JSON while the worker runs that job: one client back to back (the cost of
    one request), `clients` each every `interval` s, and `clients` back to back (saturation)."""
    http = requests.Session()
    job_id, token = service.submit_with_token(http, size=256, iterations=5000)
    service.wait(http, job_id, {"running"}, every=0.05)
    url = f"{service.base}/api/v1/jobs/{job_id}"
    phases = {
        "1 client, back to back": poll_phase(url, 1, seconds / 2, 0),
        f"{clients} clients, each every {interval:g} s": poll_phase(url, clients, seconds, interval),
        f"{clients} clients, back to back": poll_phase(url, clients, seconds, 0),
    }
    progress = http.get(url, timeout=10).json()
    http.post(f"{url}/cancel", headers={"X-Job-Token": token}, timeout=10)
    service.wait(http, job_id, FINAL, every=0.1)
    table(
        "7. polling GET /api/v1/jobs/{id} while the worker runs that job",
        "ms",
        {name: phase["latency_ms"] for name, phase in phases.items()},
    )
    for name, phase in phases.items():
        print(
            f"{name:34} {phase['rps']:>6.0f} requests/s, {phase['errors']} errors, "
            f"client used {phase['client_cpu_cores']:.2f} CPU cores"
        )
    print(f"the job was {progress['status']} at iteration {progress['progress']['iteration']} afterwards")
    for name, phase in list(phases.items())[1:]:
        p99 = phase["latency_ms"]["p99"]
        print(f"target p99 < 50 ms, {name}: {'met' if p99 < 50 else 'MISSED'} ({p99:.1f} ms)")
    return phases


# -- 8. overhead around the engine -------------------------------------------------------------


def overhead(service: Service, size: int, iterations: int, repeats: int, poll_every: float) -> dict:
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
        inproc, waited, queued, ran = [], [], [], []
        for repeat in range(repeats):
            with tempfile.TemporaryDirectory() as out:
                # A style of its own per run (one pixel differs), the same on both sides: a worker
                # keeps the style targets of recent styles, which would spare it work the other
                # side does.
                style = Path(out) / "style.png"
                with Image.open(STYLE) as image:
                    image = image.convert("RGB")
                    image.putpixel((0, 0), (repeat % 256, 0, 0))
                    image.save(style)
                seconds, params = engine.run(CONTENT, style, fields)
                inproc.append(seconds)
                time.sleep(0.3)
                began = time.perf_counter()
                job_id = service.submit(http, style_path=style, **fields)
                job = service.wait(http, job_id, FINAL, every=poll_every)
                waited.append(time.perf_counter() - began)
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job_id} {job['status']}: {job}")
            if job["params"] != params:
                raise SystemExit(f"not the same work: the job ran {job['params']}, in-process {params}")
            row = service.rows([job_id])[job_id]
            queued.append((row.started_at - row.created_at).total_seconds())
            ran.append((row.finished_at - row.started_at).total_seconds())
    finally:
        engine.close()
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


class InProcessEngine:
    """`worker.engine.stylize` called directly, in a process of its own that keeps its weights
    between runs, as a worker's pool process does. Its own process and session, so that Linux's
    autogroup scheduling treats it as it treats the worker on a busy machine."""

    def __init__(self, env: dict[str, str]):
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), ENGINE_CHILD],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(self, content: Path, style: Path, fields: dict[str, object]) -> tuple[float, dict]:
        """Seconds from reading the two files to the engine's Result, and the params it ran."""
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps({"content": str(content), "style": str(style), **fields}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the in-process engine stopped (exit {self.process.wait()})")
        answer = json.loads(line)
        return answer["seconds"], answer["params"]

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=60)


ENGINE_CHILD = "--in-process-engine"  # the argument that makes this script InProcessEngine's child


def in_process_engine() -> int:
    """InProcessEngine's child: one JSON request a line on stdin, one JSON answer a line out."""
    from shared.images import decode_image
    from shared.params import StyleParams
    from worker.engine import Result, load_weights, stylize

    weights = load_weights("random")
    for line in sys.stdin:
        ask = json.loads(line)
        params = StyleParams(
            weights="random", size=ask["size"], iterations=ask["iterations"], snapshot_every=ask["snapshot_every"]
        )
        began = time.perf_counter()
        # As the worker does: decode the stored bytes, then run the engine to its Result (the
        # snapshots are made by the engine; storing them is the service's own work).
        content = decode_image(Path(ask["content"]).read_bytes())
        style = decode_image(Path(ask["style"]).read_bytes())
        result = None
        for event in stylize(content, [style], params, device="auto", weights=weights):
            if isinstance(event, Result):
                result = event
        seconds = time.perf_counter() - began
        assert result is not None and not result.canceled
        print(json.dumps({"seconds": seconds, "params": params.model_dump(mode="json")}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
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
    argv = sys.argv[1:] if argv is None else argv
    if argv == [ENGINE_CHILD]:
        return in_process_engine()
    args = parser.parse_args(argv)
    # A SIGTERM (timeout, Ctrl-C from a supervisor) still stops the processes and drops the database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.stdout.reconfigure(line_buffering=True)  # figures show as they come, even if it is stopped
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} {platform.node()} "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
    )
    figures: dict[str, dict] = {}
    with running_service(args.postgres, args.redis) as service:
        if args.what in ("latency", "all"):
            figures["latency"] = latency(service, args.jobs, size=64, iterations=2)
        if args.what in ("polling", "all"):
            figures["polling"] = polling(service, args.clients, args.seconds, args.interval)
        if args.what in ("overhead", "all"):
            figures["overhead"] = overhead(service, args.size, args.iterations, args.repeats, args.poll_every)
    print(f"# load average after: {os.getloadavg()[0]:.1f}", file=sys.stderr)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
