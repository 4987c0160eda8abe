"""Faults injected for real into a running service: workers killed with SIGKILL, Redis restarted
without persistence, the same job delivered twice, PostgreSQL cut off in the middle of a job,
jobs past their time limit or over a worker's memory, inputs gone from storage.

Every part is a real process: `impasto web` (gunicorn), `impasto worker` (Celery), a
redis-server this module starts and restarts without persistence, and PostgreSQL reached
through a TCP proxy that can cut it off. Leases and reconciler passes are short (3 s and 1 s)
so that recovery takes seconds, not minutes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.engine import make_url

from shared.db import make_engine, session_factory
from shared.launcher import free_port
from shared.models import Job, Snapshot
from shared.settings import Settings, load_settings
from shared.tasks import enqueue_stylize, make_celery
from tests.conftest import PAINTING, PHOTO, POSTGRES_ADMIN_URL
from tests.faults import TcpProxy, tcp_proxy
from tests.servers import service_env, start, stop, temporary_postgres_database, wait_for_http, wait_for_log

LEASE_S = 3


@dataclass
class Cluster:
    base: str
    settings: Settings
    env: dict[str, str]
    folder: Path
    proxy: TcpProxy
    redis_port: int
    redis: subprocess.Popen[bytes]
    workers: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start_worker(self, *args: str, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.folder / f"worker-{uuid.uuid4().hex[:6]}.log"
        worker = start(["worker", *args], {**self.env, **env}, log)
        wait_for_log(log, "ready.", worker)
        self.workers.append((worker, log))
        return worker, log

    def stop_workers(self) -> None:
        for worker, _ in self.workers:
            stop(worker)
        self.workers.clear()

    def submit(self, **fields: str) -> str:
        with open(PHOTO, "rb") as photo, open(PAINTING, "rb") as painting:
            response = requests.post(
                f"{self.base}/api/v1/jobs",
                timeout=30,
                files={"content": ("tubingen.jpg", photo), "style": ("starry_night.jpg", painting)},
                data={"size": "64", "iterations": "100", "snapshot_every": "5", "weights": "random", **fields},
            )
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def job(self, job_id: str) -> dict:
        return requests.get(f"{self.base}/api/v1/jobs/{job_id}", timeout=10).json()

    def wait(self, job_id: str, until, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if until(job):
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} is {job}, still not there after {timeout} s\n{self.logs()}")

    def logs(self, chars: int = 4000) -> str:
        """The end of each worker's log, for an assertion's message."""
        return "\n".join(log.read_text(errors="replace")[-chars:] for _, log in self.workers)

    def restart_redis(self) -> None:
        """Kill Redis and start a new, empty one on the same port: every message is gone."""
        self.redis.kill()
        self.redis.wait()
        self.redis = start_redis(self.redis_port, self.folder)


def start_redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    with open(folder / "redis.log", "ab") as log:
        redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(folder),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
        assert time.monotonic() < deadline and redis.poll() is None, "redis-server did not start"
        time.sleep(0.05)
    return redis


def pool_pids(worker: subprocess.Popen[bytes]) -> list[int]:
    return [
        int(pid)
        for children in Path(f"/proc/{worker.pid}/task").glob("*/children")
        for pid in children.read_text().split()
    ]


def events(log: Path, job_id: str, event: str) -> list[str]:
    return re.findall(rf"job={job_id} event={event}\b.*", log.read_text(errors="replace"))


def stored_keys(cluster: Cluster, job_id: str) -> tuple[list[tuple[int, str]], str | None]:
    """The job's snapshot rows as (iteration, storage key), and its output's key, from SQL."""
    engine = make_engine(cluster.settings.database_url)
    try:
        with session_factory(engine)() as session:
            rows = session.execute(
                select(Snapshot.iteration, Snapshot.key).where(Snapshot.job_id == job_id).order_by(Snapshot.iteration)
            ).all()
            return [tuple(row) for row in rows], session.scalar(select(Job.output_key).where(Job.id == job_id))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    redis_port = free_port()
    redis = start_redis(redis_port, folder)
    with temporary_postgres_database(POSTGRES_ADMIN_URL) as database, tcp_proxy("127.0.0.1", 5432) as proxy:
        via_proxy = make_url(database).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        env = service_env(
            {
                "IMPASTO_DATA_DIR": str(folder / "data"),
                "IMPASTO_DATABASE_URL": via_proxy,
                "IMPASTO_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
                "IMPASTO_QUEUE": f"faults-{uuid.uuid4().hex[:8]}",
                "IMPASTO_JOB_LEASE": str(LEASE_S),
                "IMPASTO_RECONCILE_INTERVAL": "1",
                "IMPASTO_ENQUEUE_GRACE": "2",
                "IMPASTO_MAX_ATTEMPTS": "2",
                "IMPASTO_DB_RETRY": "60",
            }
        )
        migrate = start(["db", "upgrade"], env, folder / "migrate.log")
        assert migrate.wait(timeout=120) == 0, (folder / "migrate.log").read_text()
        port = free_port()
        web = start(["web", "--port", str(port)], env, folder / "web.log")
        cluster = Cluster(f"http://127.0.0.1:{port}", load_settings(env), env, folder, proxy, redis_port, redis)
        try:
            wait_for_http(f"{cluster.base}/healthz", web, folder / "web.log")
            yield cluster
        finally:
            cluster.stop_workers()
            stop(web)
            cluster.redis.kill()
            cluster.redis.wait()


@pytest.fixture
def worker(cluster):
    """One worker for the test; every worker the test started is stopped after it."""
    started = cluster.start_worker()
    yield started
    cluster.stop_workers()


def test_a_worker_killed_mid_job_is_replaced_and_the_job_goes_on_from_its_snapshot(cluster, worker):
    first, first_log = worker
    job_id = cluster.submit()
    cluster.wait(job_id, lambda j: j["progress"]["iteration"] >= 20)
    stop(first, signal.SIGKILL)  # the whole worker, as when its machine dies
    cluster.workers.remove(worker)
    killed = cluster.job(job_id)
    assert killed["status"] == "running"  # nobody has told the database
    latest = max(s["iteration"] for s in killed["snapshots"])
    _, second_log = cluster.start_worker()
    done = cluster.wait(job_id, lambda j: j["status"] not in ("queued", "running"), timeout=180)
    assert (done["status"], done["attempts"], done["progress"]["iteration"]) == ("succeeded", 2, 100), done
    resumed = events(second_log, job_id, "resumed")
    assert len(resumed) == 1 and int(re.search(r"iteration=(\d+)", resumed[0])[1]) == latest >= 15
    assert events(first_log, job_id, "succeeded") == [] and len(events(second_log, job_id, "succeeded")) == 1
    iterations = [s["iteration"] for s in done["snapshots"]]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 95
    assert requests.get(cluster.base + done["output_url"], timeout=10).headers["Content-Type"] == "image/png"


def test_a_job_whose_worker_keeps_dying_ends_failed_with_worker_lost(cluster, worker):
    process, log = worker
    job_id = cluster.submit(iterations="3000", snapshot_every="50")
    for attempt in (1, 2):
        cluster.wait(
            job_id,
            lambda j, a=attempt: j["status"] == "running" and j["attempts"] == a and j["progress"]["iteration"] > 0,
        )
        for pid in pool_pids(process):  # the process running the job, as the kernel's OOM killer would
            subprocess.run(["kill", "-KILL", str(pid)], check=True)
    lost = cluster.wait(job_id, lambda j: j["status"] == "failed", timeout=60)
    assert lost["error"]["code"] == "worker_lost" and lost["attempts"] == 2, lost
    assert "smaller size" in lost["error"]["message"]
    # The worker itself lives on and takes the next job.
    small = cluster.submit(iterations="10", snapshot_every="0")
    assert cluster.wait(small, lambda j: j["status"] == "succeeded", timeout=90)["attempts"] == 1


def test_redis_restarted_empty_loses_no_job(cluster, worker):
    running = cluster.submit(iterations="60")
    queued = [cluster.submit(iterations="20", snapshot_every="0") for _ in range(2)]
    cluster.wait(running, lambda j: j["status"] == "running")
    assert all(cluster.job(j)["status"] == "queued" for j in queued)
    cluster.restart_redis()  # no persistence: the two queued jobs' messages are gone
    for job_id in (running, *queued):
        job = cluster.wait(job_id, lambda j: j["status"] not in ("queued", "running"), timeout=180)
        assert job["status"] == "succeeded", job
    process, log = worker
    assert {j for j in queued if events(log, j, "resent")} == set(queued)


def test_the_same_job_delivered_twice_at_once_runs_once(cluster, worker):
    _, other_log = cluster.start_worker()  # two idle workers, one message each
    job_id = cluster.submit(iterations="30")
    enqueue_stylize(make_celery(cluster.settings), job_id, cluster.settings.gpu_queue)
    done = cluster.wait(job_id, lambda j: j["status"] not in ("queued", "running"))
    assert (done["status"], done["attempts"]) == ("succeeded", 1)
    logs = [worker[1], other_log]
    deadline = time.monotonic() + 30
    while sum(len(events(log, job_id, "skipped")) for log in logs) < 1:
        assert time.monotonic() < deadline, "the second delivery never arrived"
        time.sleep(0.2)
    assert sum(len(events(log, job_id, "started")) for log in logs) == 1


def test_postgres_cut_off_mid_job_costs_a_pause_not_the_job(cluster, worker):
    job_id = cluster.submit(iterations="100")
    cluster.wait(job_id, lambda j: j["progress"]["iteration"] >= 10)
    cluster.proxy.cut()
    try:
        time.sleep(2)
        during = requests.get(f"{cluster.base}/api/v1/jobs/{job_id}", timeout=10)
        assert during.status_code == 503 and during.headers.get("Retry-After"), during.text
        time.sleep(3)
    finally:
        cluster.proxy.restore()
    done = cluster.wait(job_id, lambda j: j["status"] not in ("queued", "running"), timeout=120)
    assert (done["status"], done["attempts"], done["progress"]["iteration"]) == ("succeeded", 1, 100), done
    log = worker[1].read_text()
    assert f"job={job_id} event=db-retry" in log or f"job={job_id} event=progress-skipped" in log


def test_time_limit_memory_and_missing_inputs_fail_clearly_and_the_worker_goes_on(cluster):
    # Submitted while no worker runs, then its inputs vanish from storage.
    vanished = cluster.submit(iterations="10")
    storage = Path(cluster.settings.storage_url.removeprefix("file://"))
    for path in (storage / "jobs" / vanished / "inputs").iterdir():
        path.unlink()
    worker, log = cluster.start_worker("--max-memory", "2G", IMPASTO_JOB_TIME_LIMIT="10")
    missing = cluster.wait(vanished, lambda j: j["status"] != "queued" and j["status"] != "running")
    assert (missing["status"], missing["error"]["code"], missing["attempts"]) == ("failed", "input_missing", 1)

    too_big = cluster.submit(size="2048", scales="1", iterations="5", snapshot_every="0")
    oom = cluster.wait(too_big, lambda j: j["status"] not in ("queued", "running"), timeout=90)
    assert (oom["status"], oom["error"]["code"]) == ("failed", "out_of_memory"), (oom, cluster.logs())
    assert "smaller size" in oom["error"]["message"]
    # Logged just after the failure is recorded: the next job gets a fresh process.
    wait_for_log(log, f"job={too_big} event=process-recycled reason=out_of_memory", worker, timeout=30)

    too_long = cluster.submit(iterations="5000", snapshot_every="0")
    late = cluster.wait(too_long, lambda j: j["status"] not in ("queued", "running"), timeout=90)
    assert (late["status"], late["error"]["code"]) == ("failed", "timeout"), (late, cluster.logs())
    assert late["progress"]["iteration"] > 0 and late["output_url"], (late, cluster.logs())  # the picture so far
    assert "time limit of 10 s" in late["error"]["message"]

    fine = cluster.submit(iterations="10", snapshot_every="0")
    assert cluster.wait(fine, lambda j: j["status"] not in ("queued", "running"), timeout=90)["status"] == "succeeded"
    assert cluster.job(vanished)["attempts"] == 1  # failed once, never retried
    cluster.stop_workers()


@pytest.fixture
def workers_stopped_after(cluster):
    """Every worker the test starts is stopped after it, whatever happens."""
    yield
    cluster.stop_workers()


def test_a_worker_paused_past_its_lease_writes_nothing_once_it_wakes(cluster, workers_stopped_after):
    """Fencing: a worker frozen with SIGSTOP (a long GC pause, a partition) past its lease loses
    the job to another worker; woken with SIGCONT, it must not write a snapshot row, a snapshot
    file a resume could pick, progress, an output or an end. A snapshot at every iteration makes
    sure it has one to write in the iteration it wakes up in."""
    workers = [cluster.start_worker(), cluster.start_worker()]
    try:
        job_id = cluster.submit(iterations="60", snapshot_every="1")
        cluster.wait(job_id, lambda j: j["progress"]["iteration"] >= 10)
        (first, first_log), (_, second_log) = sorted(workers, key=lambda w: not events(w[1], job_id, "started"))
        os.killpg(first.pid, signal.SIGSTOP)
        paused_at = max(s["iteration"] for s in cluster.job(job_id)["snapshots"])
        # Past the lease, the other worker's reconciler requeues the job, and that worker takes it.
        taken = cluster.wait(
            job_id,
            lambda j: j["attempts"] == 2 and (j["progress"]["iteration"] >= paused_at + 5 or j["status"] != "running"),
            timeout=180,
        )
        seen = taken["progress"]["iteration"]
    finally:
        woken = time.time()
        os.killpg(first.pid, signal.SIGCONT)
    wait_for_log(first_log, f"job={job_id} event=lease-lost", first, timeout=60)
    done = cluster.wait(job_id, lambda j: j["status"] not in ("queued", "running"), timeout=300)
    assert (done["status"], done["attempts"], done["progress"]["iteration"]) == ("succeeded", 2, 60), done
    resumed = int(re.search(r"iteration=(\d+)", events(second_log, job_id, "resumed")[0])[1])
    assert paused_at - 2 <= resumed <= paused_at + 2

    storage = Path(cluster.settings.storage_url.removeprefix("file://"))
    rows, output_key = stored_keys(cluster, job_id)
    assert [iteration for iteration, _ in rows] == list(range(1, 60))
    for iteration, key in rows:
        if iteration > resumed:  # the second attempt's, stored under its own keys
            assert key.startswith(f"jobs/{job_id}/attempt-2/"), (iteration, key)
        if iteration <= seen:  # stored before the first worker woke: nothing replaced it since
            assert (storage / key).stat().st_mtime < woken, (iteration, key)
    first_attempt = {str(p.relative_to(storage)) for p in (storage / "jobs" / job_id / "attempt-1").rglob("*.png")}
    assert first_attempt == {key for _, key in rows if "/attempt-1/" in key}  # its late file was removed
    assert output_key == f"jobs/{job_id}/attempt-2/output.png"
    first_lines = first_log.read_text(errors="replace")
    for event in ("canceled", "succeeded", "failed"):
        assert f"job={job_id} event={event}" not in first_lines, first_lines[-3000:]
    assert len(events(second_log, job_id, "succeeded")) == 1


def test_a_submission_while_redis_is_down_is_queued_and_sent_once_it_is_back(cluster, worker):
    """The broker is a delivery hint: with no rate limit that needs Redis, a submission while
    Redis is down is accepted (the row is the job) and the reconciler sends it once Redis is
    back. Where the anonymous limit needs Redis (the cluster's web), the answer is a 503 with
    Retry-After and no row."""
    port = free_port()
    log = cluster.folder / "web-unlimited.log"
    unlimited = start(["web", "--port", str(port)], {**cluster.env, "IMPASTO_ANONYMOUS_JOBS_PER_HOUR": "0"}, log)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", unlimited, log)
        cluster.redis.kill()
        cluster.redis.wait()
        rows_before = len(job_ids(cluster))

        def submit(base: str) -> requests.Response:
            with open(PHOTO, "rb") as photo:
                return requests.post(
                    f"{base}/api/v1/jobs",
                    timeout=30,
                    files={"content": ("tubingen.jpg", photo)},
                    data={"style_preset": "starry_night", "size": "64", "iterations": "10", "weights": "random"},
                )

        limited = submit(cluster.base)
        assert limited.status_code == 503 and int(limited.headers["Retry-After"]) > 0, limited.text
        assert len(job_ids(cluster)) == rows_before  # nothing left behind
        accepted = submit(f"http://127.0.0.1:{port}")
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        assert accepted.json()["status"] == "queued" and job_id in job_ids(cluster)
        assert f"job={job_id} event=enqueue-failed" in log.read_text()
        time.sleep(3)  # past the grace: the job is still queued, not failed, while Redis is away
        assert cluster.job(job_id)["status"] == "queued"
    finally:
        if cluster.redis.poll() is not None:
            cluster.redis = start_redis(cluster.redis_port, cluster.folder)
        stop(unlimited)
    done = cluster.wait(job_id, lambda j: j["status"] not in ("queued", "running"), timeout=120)
    assert (done["status"], done["attempts"]) == ("succeeded", 1), done
    assert events(worker[1], job_id, "resent")


def job_ids(cluster: Cluster) -> set[str]:
    engine = make_engine(cluster.settings.database_url)
    try:
        with session_factory(engine)() as session:
            return set(session.scalars(select(Job.id)))
    finally:
        engine.dispose()


def test_a_pool_process_that_got_a_stop_but_lives_on_runs_its_next_jobs(cluster, worker):
    """SIGTERM to a pool process alone (not its worker): the job goes back to the queue, the
    process is not shut down, and its stop flag must not send every later job back too."""
    process, log = worker
    job_id = cluster.submit(iterations="60", snapshot_every="5")
    cluster.wait(job_id, lambda j: j["progress"]["iteration"] >= 10)
    (pool,) = pool_pids(process)
    os.kill(pool, signal.SIGTERM)
    wait_for_log(log, f"job={job_id} event=handed-back", process, timeout=30)
    assert pool_pids(process) == [pool]  # the same process, still there
    done = cluster.wait(job_id, lambda j: j["status"] not in ("queued", "running"), timeout=120)
    assert (done["status"], done["attempts"], done["progress"]["iteration"]) == ("succeeded", 2, 60), done
    after = cluster.submit(iterations="10", snapshot_every="0")
    assert cluster.wait(after, lambda j: j["status"] not in ("queued", "running"), timeout=60)["status"] == "succeeded"
    assert pool_pids(process) == [pool]


def test_weights_that_fail_at_pool_start_are_loud_and_the_cap_and_heartbeat_still_hold(cluster):
    """A weights file that is not there: the pool process still gets its memory cap and its
    /metrics heartbeat, says why once, fails the jobs that need those weights with
    `weights_unavailable`, and runs the ones that ask for random weights."""
    missing = cluster.folder / "no-such-vgg19.pth"
    process, log = cluster.start_worker("--max-memory", "3G", IMPASTO_VGG_WEIGHTS=str(missing))
    try:
        wait_for_log(log, "event=weights-unavailable", process, timeout=60)
        (pool,) = pool_pids(process)
        limits = Path(f"/proc/{pool}/limits").read_text()
        assert re.search(rf"Max data size\s+{3 * 2**30}\s+{3 * 2**30}", limits), limits
        metrics = requests.get(f"{cluster.base}/metrics", timeout=10).text
        assert re.search(rf'impasto_worker_last_heartbeat_timestamp_seconds\{{[^}}]*worker="[^"]+:{pool}"', metrics)
        needs_them = cluster.submit(weights="auto", iterations="5", snapshot_every="0")
        failed = cluster.wait(needs_them, lambda j: j["status"] not in ("queued", "running"), timeout=60)
        assert (failed["status"], failed["error"]["code"]) == ("failed", "weights_unavailable"), failed
        assert str(missing) in failed["error"]["message"]
        fine = cluster.submit(weights="random", iterations="5", snapshot_every="0")
        ran = cluster.wait(fine, lambda j: j["status"] not in ("queued", "running"), timeout=60)
        assert ran["status"] == "succeeded", ran
        text = log.read_text(errors="replace")
        assert text.count("event=weights-unavailable") == 1 and "Traceback" not in text, text[-3000:]
        assert pool_pids(process) == [pool]
    finally:
        cluster.stop_workers()


def test_random_weights_jobs_never_wait_on_a_download_and_auto_tries_again(cluster, tmp_path):
    """Downloads allowed, but the network goes nowhere (a proxy address nothing listens on, so
    the test never leaves the machine): a pool process starts without trying ImageNet's download,
    a job with `weights=random` runs without one, and each job with `auto` tries again rather than
    keeping the first fallback to random weights for the life of the process."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    process, log = cluster.start_worker(
        IMPASTO_OFFLINE="0",
        TORCH_HOME=str(tmp_path / "torch-home"),
        HTTPS_PROXY=nowhere,
        https_proxy=nowhere,
        HTTP_PROXY=nowhere,
        http_proxy=nowhere,
    )
    try:
        wait_for_log(log, "event=weights-deferred", process, timeout=60)
        random_job = cluster.submit(weights="random", iterations="5", snapshot_every="0")
        done = cluster.wait(random_job, lambda j: j["status"] not in ("queued", "running"), timeout=60)
        assert (done["status"], done["weights"]) == ("succeeded", "random"), done
        assert "downloading the ImageNet" not in log.read_text(errors="replace")
        for attempt in (1, 2):
            auto = cluster.submit(weights="auto", iterations="5", snapshot_every="0")
            done = cluster.wait(auto, lambda j: j["status"] not in ("queued", "running"), timeout=60)
            assert (done["status"], done["weights"]) == ("succeeded", "random") and done["weights_warning"], done
            assert log.read_text(errors="replace").count("downloading the ImageNet") == attempt
    finally:
        cluster.stop_workers()
