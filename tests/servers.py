"""Starting and stopping the real processes the service tests talk to."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from shared.db import make_engine, session_factory
from shared.launcher import free_port
from shared.models import Job
from shared.settings import Settings, load_settings
from tests.conftest import POSTGRES_ADMIN_URL, SYSTEM_REDIS_URL

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def temporary_postgres_database(admin_url: str) -> Iterator[str]:
    name = f"impasto_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# What `impasto web` signs cookies and CSRF tokens with in tests (it refuses to start without one).
TEST_SECRET_KEY = "test-secret-key-for-impasto-web-0123456789"


def service_env(settings_env: dict[str, str], *, secret_key: bool = True) -> dict[str, str]:
    """The environment of a service process: this one's, without IMPASTO_* settings, plus
    `settings_env`, and IMPASTO_SECRET_KEY unless `secret_key` is False."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMPASTO_")}
    env.update({"IMPASTO_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"})
    if secret_key:
        env["IMPASTO_SECRET_KEY"] = TEST_SECRET_KEY
    env.update(settings_env)
    return env


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`impasto ARGS` in its own process group, its output in `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def wait_for_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or too busy starting to answer
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


def wait_for_log(log: Path, needle: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in the log within {timeout} s:\n{log.read_text()[-3000:]}")


def wait_for_status(base: str, job_id: str, statuses: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{base}/api/v1/jobs/{job_id}", timeout=5).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")


def peak_memory_kib(pid: int) -> int:
    """A process's peak resident set (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (gunicorn's workers, for its master)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


@dataclass
class Service:
    base: str
    settings: Settings
    env: dict[str, str]
    folder: Path
    worker: subprocess.Popen[bytes]

    def restart_worker(self) -> Path:
        stop(self.worker)
        log = self.folder / f"worker-{uuid.uuid4().hex[:6]}.log"
        self.worker = start(["worker"], self.env, log)
        wait_for_log(log, "ready.", self.worker)
        return log

    def row(self, job_id: str) -> Job:
        engine = make_engine(self.settings.database_url)
        try:
            with session_factory(engine)() as session:
                job = session.get(Job, job_id)
                _ = job.snapshots  # loaded before the session closes
                return job
        finally:
            engine.dispose()


@contextlib.contextmanager
def running_service(
    database: str,
    folder: Path,
    redis_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    postgres_admin_url: str = POSTGRES_ADMIN_URL,
) -> Iterator[Service]:
    """`impasto web` and `impasto worker` as processes on a fresh database: "postgresql" (a
    temporary database on `postgres_admin_url`'s server, this machine's Redis) or "sqlite" (in
    `folder`, with `redis_url`); `extra_env` settings go on top (bench/service.py's, say)."""
    env = {"IMPASTO_DATA_DIR": str(folder / "data"), "IMPASTO_QUEUE": f"impasto-e2e-{uuid.uuid4().hex[:8]}"}
    with (
        temporary_postgres_database(postgres_admin_url) if database == "postgresql" else contextlib.nullcontext() as pg
    ):
        if database == "postgresql":
            env.update(IMPASTO_DATABASE_URL=pg, IMPASTO_BROKER_URL=SYSTEM_REDIS_URL)
        else:
            env.update(IMPASTO_BROKER_URL=redis_url)
        env = service_env(env | (extra_env or {}))
        settings = load_settings(env)
        service = None
        migrate = start(["db", "upgrade"], env, folder / "migrate.log")
        assert migrate.wait(timeout=120) == 0, (folder / "migrate.log").read_text()
        port = free_port()
        worker = start(["worker"], env, folder / "worker.log")
        web = start(["web", "--port", str(port)], env, folder / "web.log")
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz", web, folder / "web.log")
            wait_for_log(folder / "worker.log", "ready.", worker)
            service = Service(f"http://127.0.0.1:{port}", settings, env, folder, worker)
            yield service
        finally:
            stop(web)
            stop(service.worker if service else worker)
