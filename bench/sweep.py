"""A sweep against the same cells submitted as separate jobs, on the same running service.

Starts the service for real (a scratch PostgreSQL database, this machine's Redis, `impasto
web` and `--workers` Celery worker processes) and times, from the first request to the last
picture:

- one-by-one: the grid's cells as separate jobs, each submitted once the one before has
  finished (a person trying settings one at a time);
- at-once: the same jobs submitted back to back, then waited for;
- sweep: one POST /api/v1/sweeps of the grid.

The workers are restarted before each variant and warmed up with a job of another style,
so no variant finds the painting's style targets left by the one before. The worker logs say
how many style targets each variant computed and reused (a worker process reuses them from
job to job, sweep or not); the time one reuse saves is measured in-process
(bench/style_cache.py's `targets_seconds`).

    python bench/sweep.py                                  # 3x3 at 256 px, 30 iterations, 2 workers
    python bench/sweep.py --iterations 10 --workers 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
for path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from shared.sweeps import axes_from_json, check_axes  # noqa: E402
from tests.servers import running_service, start, stop, wait_for_log  # noqa: E402

CONTENT = REPO_ROOT / "tests" / "data" / "tubingen.jpg"
STYLE = REPO_ROOT / "tests" / "data" / "starry_night.jpg"
FINAL = {"succeeded", "failed", "canceled"}
AXES = '{"style_weight": [0.3, 1, 3], "content_layers": ["relu2_2", "relu3_2", "relu4_2"]}'


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--axes", default=AXES, help=f"the grid, as the API takes it (default {AXES})")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args(argv)

    axes = axes_from_json(args.axes)
    cells = check_axes(axes, {}, 100)
    base = {"size": str(args.size), "iterations": str(args.iterations), "weights": "random", "snapshot_every": "0"}
    results = {}
    folder = Path(tempfile.mkdtemp(prefix="impasto-bench-sweep-"))
    with running_service("postgresql", folder) as svc:
        workers = Workers(svc, args.workers)
        try:
            http = requests.Session()
            for variant in ("one-by-one", "at-once", "sweep"):
                workers.restart(http, base)
                mark = workers.log_sizes()
                started = time.perf_counter()
                if variant == "sweep":
                    ids = run_sweep(svc.base, http, base, args.axes)
                else:
                    forms = [base | {n: str(v) for n, v in cell.overrides(axes).items()} for cell in cells]
                    ids = run_jobs(svc.base, http, forms, wait_each=variant == "one-by-one")
                seconds = time.perf_counter() - started
                computed, reused = workers.targets(mark, ids)
                results[variant] = {
                    "seconds": round(seconds, 2),
                    "targets_computed": computed,
                    "targets_reused": reused,
                }
                print(f"# {variant}: {seconds:.1f} s, style targets computed {computed}, reused {reused}", flush=True)
        finally:
            workers.stop()

    from style_cache import load, targets_seconds

    from shared.params import StyleParams
    from worker.engine import load_weights

    made, found = targets_seconds(
        load(CONTENT), load(STYLE), StyleParams(size=args.size, weights="random"), load_weights("random"), 3
    )
    print(
        f"\n{len(cells)} cells ({' x '.join(str(len(a.values)) for a in axes)}) at {args.size} px, "
        f"{args.iterations} iterations, {args.workers} worker process(es), CPU; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(f"{'variant':>12}  {'seconds':>8}  {'vs sweep':>8}  {'targets made':>12}  {'reused':>6}")
    for name, r in results.items():
        ratio = r["seconds"] / results["sweep"]["seconds"]
        made_here, reused_here = r["targets_computed"], r["targets_reused"]
        print(f"{name:>12}  {r['seconds']:>8.1f}  {ratio:>7.2f}x  {made_here:>12}  {reused_here:>6}")
    saved = results["sweep"]["targets_reused"] * (made - found)
    print(
        f"one job's style targets take {made * 1e3:.0f} ms to make and {found * 1e3:.1f} ms to find; "
        f"the sweep's {results['sweep']['targets_reused']} reuses saved about {saved:.1f} s of worker time"
    )
    if args.json:
        print(json.dumps({"cells": len(cells), "size": args.size, "iterations": args.iterations, **results}))


def run_jobs(base: str, http: requests.Session, forms: list[dict[str, str]], *, wait_each: bool) -> list[str]:
    ids = []
    for form in forms:
        ids.append(post(base, http, "/api/v1/jobs", form)["id"])
        if wait_each:
            wait(base, http, [ids[-1]])
    wait(base, http, ids)
    return ids


def run_sweep(base: str, http: requests.Session, form: dict[str, str], axes: str) -> list[str]:
    sweep = post(base, http, "/api/v1/sweeps", form | {"axes": axes})
    ids = [cell["job_id"] for cell in sweep["cells"]]
    wait(base, http, ids)
    return ids


def post(base: str, http: requests.Session, path: str, form: dict[str, str], style: Path = STYLE) -> dict:
    with open(CONTENT, "rb") as content, open(style, "rb") as painting:
        answer = http.post(base + path, files={"content": content, "style": painting}, data=form, timeout=60)
    if answer.status_code != 202:
        raise SystemExit(f"refused: {answer.status_code} {answer.text[:400]}")
    return answer.json()


def wait(base: str, http: requests.Session, ids: list[str], timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    for job_id in ids:
        while http.get(f"{base}/api/v1/jobs/{job_id}", timeout=10).json()["status"] not in FINAL:
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job_id} did not end in {timeout} s")
            time.sleep(0.05)


class Workers:
    """The service's worker processes: restarted fresh (empty caches) before each variant."""

    def __init__(self, svc, count: int):
        self.svc, self.count, self.processes, self.logs, self.round = svc, count, [], [], 0

    def restart(self, http: requests.Session, base: dict[str, str]) -> None:
        self.stop()
        self.round += 1
        self.logs = [self.svc.folder / f"bench-worker-{self.round}-{i}.log" for i in range(self.count)]
        self.processes = [start(["worker"], self.svc.env, log) for log in self.logs]
        for process, log in zip(self.processes, self.logs):
            wait_for_log(log, "ready.", process, timeout=180)
        # Warm every process up (torch, VGG-19) with another painting, whose targets are of no use later.
        warm = base | {"size": "64", "iterations": "2", "style_preset": "the_scream"}
        ids = []
        for _ in range(2 * self.count):
            with open(CONTENT, "rb") as content:
                answer = http.post(self.svc.base + "/api/v1/jobs", files={"content": content}, data=warm, timeout=60)
            ids.append(answer.json()["id"])
        wait(self.svc.base, http, ids)

    def stop(self) -> None:
        for process in self.processes:
            stop(process)
        if self.svc.worker.poll() is None:  # the fixture's own worker: the variants use only ours
            stop(self.svc.worker)

    def log_sizes(self) -> list[int]:
        return [log.stat().st_size for log in self.logs]

    def targets(self, mark: list[int], ids: list[str]) -> tuple[int, int]:
        """Style targets computed and reused by the jobs `ids`, from the worker logs."""
        computed = reused = 0
        wanted = set(ids)
        for log, offset in zip(self.logs, mark):
            text = log.read_text()[offset:]
            for job_id, made, found in re.findall(r"job=(\S+) event=style-targets computed=(\d+) reused=(\d+)", text):
                if job_id in wanted:
                    computed, reused = computed + int(made), reused + int(found)
        return computed, reused


if __name__ == "__main__":
    main()
