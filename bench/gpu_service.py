"""bench/gpu_check.py's service step: a redis-server, SQLite, `impasto web` and `impasto worker
--gpus all`, given JOBS jobs at once; jobs per minute. A library module of bench/ (not a
package); requests and the project are imported inside the step."""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

from gpu_runner import Check, StepFailed
from gpu_steps import CONTENT, JOB_ITERATIONS, JOBS, SIZES, STYLE

FINAL = {"succeeded", "failed", "canceled"}


def service(check: Check) -> dict:
    """A redis-server, SQLite, `impasto web` and `impasto worker --gpus all`: JOBS jobs at once."""
    from shared.launcher import start_redis, stop_all
    from tests.servers import stop

    size, iterations = SIZES[check.kind]["job"], JOB_ITERATIONS[check.kind]
    data = Path(tempfile.mkdtemp(prefix="impasto-gpu-check-"))
    redis_processes: list = []
    processes: list = []
    try:
        env = service_env(check, data, start_redis(data, redis_processes))
        client = start_service(check, env, processes)
        # The pool process loads torch and VGG-19 on its first job: a small one, not counted.
        client.wait([client.submit(SIZES["cpu"]["job"], 1)])
        began = time.perf_counter()
        jobs = client.wait([client.submit(size, iterations) for _ in range(JOBS)])
        wall = time.perf_counter() - began
    finally:
        for process in reversed(processes):
            stop(process)
        stop_all(redis_processes)
        shutil.rmtree(data, ignore_errors=True)
    return service_figures(jobs, size, iterations, wall)


def service_env(check: Check, data: Path, broker: str) -> dict[str, str]:
    env = {k: v for k, v in check.env.items() if not k.startswith("IMPASTO_")}
    return env | {
        "IMPASTO_DATA_DIR": str(data / "data"),
        "IMPASTO_BROKER_URL": broker,
        "IMPASTO_QUEUE": f"impasto-gpu-check-{secrets.token_hex(4)}",
        "IMPASTO_ANONYMOUS_JOBS_PER_HOUR": "0",
        "IMPASTO_OFFLINE": "1",
        "IMPASTO_SECRET_KEY": secrets.token_hex(32),
    }


def start_service(check: Check, env: dict[str, str], processes: list) -> Client:
    """Migrate the database, start the worker and the web process (appended to `processes`),
    wait until both are ready, and return a client of the web process."""
    from shared.launcher import free_port
    from tests.servers import start, wait_for_http, wait_for_log

    migrate = start(["db", "upgrade"], env, check.logs / "service-db.log")
    if migrate.wait(timeout=max(5, min(120, check.left()))) != 0:
        raise StepFailed("impasto db upgrade failed (logs/service-db.log)")
    port = free_port()
    worker_log, web_log = check.logs / "service-worker.log", check.logs / "service-web.log"
    processes.append(start(["worker", "--gpus", "all"], env, worker_log))
    processes.append(start(["web", "--port", str(port), "--workers", "2"], env, web_log))
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", processes[1], web_log, timeout=min(90, check.left()))
    wait_for_log(worker_log, "ready.", processes[0], timeout=min(120, check.left()))
    return Client(check, base)


class Client:
    """Submits jobs to the web process and polls them until they end or the time runs out."""

    def __init__(self, check: Check, base: str):
        import requests

        self.check = check
        self.base = base
        self.http = requests.Session()

    def submit(self, job_size: int, job_iterations: int) -> str:
        with open(CONTENT, "rb") as content, open(STYLE, "rb") as style:
            answer = self.http.post(
                f"{self.base}/api/v1/jobs",
                files={"content": content, "style": style},
                data={"size": job_size, "iterations": job_iterations, "weights": "random"},
                timeout=60,
            )
        if answer.status_code != 202:
            raise StepFailed(f"submission refused: {answer.status_code} {answer.text[:300]}")
        return answer.json()["id"]

    def wait(self, ids: list[str]) -> dict[str, dict]:
        jobs: dict[str, dict] = {}
        while True:
            for job_id in ids:
                if jobs.get(job_id, {}).get("status") not in FINAL:
                    jobs[job_id] = self.http.get(f"{self.base}/api/v1/jobs/{job_id}", timeout=30).json()
            if all(job["status"] in FINAL for job in jobs.values()):
                return jobs
            if self.check.left() < 2:
                raise StepFailed(f"jobs unfinished when the time ran out: {[j['status'] for j in jobs.values()]}")
            time.sleep(0.2)


def service_figures(jobs: dict[str, dict], size: int, iterations: int, wall: float) -> dict:
    statuses = [job["status"] for job in jobs.values()]
    if statuses != ["succeeded"] * JOBS:
        errors = [job.get("error") for job in jobs.values() if job["status"] != "succeeded"]
        raise StepFailed(f"jobs ended {statuses}: {errors}")
    return {
        "jobs": JOBS,
        "size": size,
        "iterations": iterations,
        "wall_seconds": round(wall, 1),
        "jobs_per_minute": round(JOBS / wall * 60, 2),
        "job_seconds": [round(_elapsed(job["started_at"], job["finished_at"]), 2) for job in jobs.values()],
    }


def _elapsed(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
