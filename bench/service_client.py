"""bench/service.py's service and its client: tests/servers.py's `running_service` on a scratch
PostgreSQL database and a Redis queue of its own, with the bench's settings, and a client that
submits jobs, polls them and reads their rows. A library module of bench/ (not a package): the
script puts the repository root on sys.path."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from shared.db import make_engine, session_factory
from shared.models import Job
from tests.servers import Service, running_service

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTENT = REPO_ROOT / "tests" / "data" / "tubingen.jpg"
STYLE = REPO_ROOT / "tests" / "data" / "starry_night.jpg"
FINAL = {"succeeded", "failed", "canceled"}


@dataclass
class Client:
    """Jobs submitted to a running service, polled, and read back from its database."""

    service: Service

    @property
    def base(self) -> str:
        return self.service.base

    @property
    def env(self) -> dict[str, str]:
        return self.service.env

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
        engine = make_engine(self.service.settings.database_url)
        try:
            with session_factory(engine)() as session:
                return {job.id: job for job in session.query(Job).filter(Job.id.in_(ids))}
        finally:
            engine.dispose()


@contextlib.contextmanager
def bench_service(postgres: str, redis: str) -> Iterator[Client]:
    """The service on a scratch database of `postgres`'s server and a queue of its own on `redis`,
    with no limit on anonymous jobs; its logs stay in a folder of their own."""
    folder = Path(tempfile.mkdtemp(prefix="impasto-bench-"))
    settings = {
        "IMPASTO_BROKER_URL": redis,
        "IMPASTO_QUEUE": f"impasto-bench-{uuid.uuid4().hex[:8]}",
        "IMPASTO_ANONYMOUS_JOBS_PER_HOUR": "0",
    }
    with running_service("postgresql", folder, extra_env=settings, postgres_admin_url=postgres) as service:
        port = service.base.rsplit(":", 1)[1]
        print(f"# service up: web {port}, logs in {folder}", file=sys.stderr)
        yield Client(service)
