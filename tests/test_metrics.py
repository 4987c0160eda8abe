"""/metrics and Flower against real parts: `impasto web` and `impasto worker` as processes on
PostgreSQL and this machine's Redis, Prometheus's own parser reading the answer, and Flower as
a process on the same broker. The runner's recording is also checked in-process: what it
counts, what it leaves out, and that a broker outage never fails a job."""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from shared.db import make_engine, session_factory
from shared.launcher import free_port
from shared.metrics import JOB_DURATION, Recorder, render
from shared.migrate import upgrade
from shared.settings import Settings, load_settings
from shared.storage import LocalStorage
from shared.tasks import STYLIZE, make_celery, queue_keys
from tests.conftest import PAINTING, PHOTO, POSTGRES_ADMIN_URL, SYSTEM_REDIS_URL
from tests.helpers import queue_job
from tests.servers import (
    service_env,
    start,
    stop,
    temporary_postgres_database,
    wait_for_http,
    wait_for_log,
    wait_for_status,
)
from web.app import create_app
from worker.runner import JobRunner

# Jobs small enough to take a second or two on a busy CPU.
ITERATIONS = 4
QUICK = {"iterations": ITERATIONS, "optimizer": "adam", "scales": 1}


@dataclass
class Service:
    base: str
    settings: Settings
    env: dict[str, str]
    node: str  # the worker's Celery name, as Flower lists it
    worker_log: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A web process and a worker that takes the CPU queue only: jobs sent to the GPU queue wait."""
    folder = tmp_path_factory.mktemp("metrics")
    node = f"impasto-metrics-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    with temporary_postgres_database(POSTGRES_ADMIN_URL) as database_url:
        env = service_env(
            {
                "IMPASTO_DATA_DIR": str(folder / "data"),
                "IMPASTO_DATABASE_URL": database_url,
                "IMPASTO_BROKER_URL": SYSTEM_REDIS_URL,
                "IMPASTO_QUEUE": f"impasto-metrics-{uuid.uuid4().hex[:8]}",
            }
        )
        settings = load_settings(env)
        upgrade(database_url)
        port = free_port()
        worker = start(["worker", "--queues", "cpu", "--hostname", node], env, folder / "worker.log")
        web = start(["web", "--port", str(port)], env, folder / "web.log")
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz", web, folder / "web.log")
            wait_for_log(folder / "worker.log", "ready.", worker)
            yield Service(f"http://127.0.0.1:{port}", settings, env, node, folder / "worker.log")
        finally:
            stop(web)
            stop(worker)
            client = redis.Redis.from_url(SYSTEM_REDIS_URL)
            client.delete(
                *[key for queue in settings.queues for key in queue_keys(queue)],
                *client.keys(f"impasto:{settings.queue}:metrics:*"),
            )
            client.close()


def submit(service: Service, size: int) -> dict:
    with open(PHOTO, "rb") as photo, open(PAINTING, "rb") as painting:
        response = requests.post(
            f"{service.base}/api/v1/jobs",
            timeout=30,
            files={"content": ("tubingen.jpg", photo), "style": ("starry_night.jpg", painting)},
            data={"size": str(size), "weights": "random", **{k: str(v) for k, v in QUICK.items()}},
        )
    assert response.status_code == 202, response.text
    return response.json()


def scrape(base: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """GET /metrics read by Prometheus's parser: {sample name: {sorted labels: value}}."""
    response = requests.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def labels(**pairs: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(pairs.items()))


def test_metrics_show_jobs_queues_durations_and_heartbeats(service):
    gpu, cpu = service.settings.queues
    before = scrape(service.base)
    job = submit(service, 64)  # at most IMPASTO_CPU_MAX_SIZE: the CPU queue, which the worker takes
    # Nobody takes the GPU queue: two jobs wait there, and a message sent at a priority waits in
    # a list of its own.
    waiting = [submit(service, 512)["id"] for _ in range(2)]
    make_celery(service.settings).send_task(STYLIZE, args=["no-such-job"], queue=gpu, priority=9)
    done = wait_for_status(service.base, job["id"], {"succeeded", "failed", "canceled"}, timeout=60)
    assert done["status"] == "succeeded", done
    after = scrape(service.base)

    jobs = {dict(key)["state"]: value for key, value in after["impasto_jobs"].items()}
    old = {dict(key)["state"]: value for key, value in before["impasto_jobs"].items()}
    assert set(jobs) == {"queued", "running", "succeeded", "failed", "canceled"}  # zeros included
    assert jobs["succeeded"] == old["succeeded"] + 1 and jobs["queued"] == old["queued"] + len(waiting)

    client = redis.Redis.from_url(SYSTEM_REDIS_URL)
    try:
        held = {queue: sum(client.llen(key) for key in client.scan_iter(match=f"{queue}*")) for queue in (gpu, cpu)}
    finally:
        client.close()
    assert after["impasto_queue_depth"] == {labels(queue=gpu): held[gpu], labels(queue=cpu): held[cpu]}
    assert held[gpu] == before["impasto_queue_depth"][labels(queue=gpu)] + 3 and held[cpu] == 0

    # The job's duration is in the histogram once, in the bucket its seconds fall in, and
    # about as long as the database's start and end times say.
    ours = labels(status="succeeded", queue=cpu)
    count = "impasto_job_duration_seconds_count"
    assert after[count][ours] == before[count][ours] + 1
    seconds = after["impasto_job_duration_seconds_sum"][ours] - before["impasto_job_duration_seconds_sum"][ours]
    recorded = _elapsed(done["started_at"], done["finished_at"])
    assert 0 < seconds and abs(seconds - recorded) < 2, (seconds, recorded)
    bounds = [*JOB_DURATION.buckets, math.inf]
    buckets = "impasto_job_duration_seconds_bucket"
    added = [
        after[buckets][labels(status="succeeded", queue=cpu, le=_le(b))]
        - before[buckets][labels(status="succeeded", queue=cpu, le=_le(b))]
        for b in bounds
    ]
    first = added.index(1)  # cumulative: 0 below the job's bucket, 1 from it on
    assert set(added[:first]) <= {0} and set(added[first:]) == {1}
    assert (bounds[first - 1] if first else 0) < seconds <= bounds[first]
    rate = after["impasto_job_iterations_per_second_sum"][ours] - before["impasto_job_iterations_per_second_sum"][ours]
    assert math.isclose(rate, ITERATIONS / seconds, rel_tol=1e-6)
    failed = labels(status="failed", queue=gpu)  # every status and queue is there before its first job
    assert after[count][failed] == 0 and after[buckets][labels(status="failed", queue=gpu, le="+Inf")] == 0

    heartbeats = {
        dict(key)["worker"]: (dict(key), value)
        for key, value in after["impasto_worker_last_heartbeat_timestamp_seconds"].items()
    }
    assert len(heartbeats) == 1, heartbeats  # the worker's one pool process
    [(name, (beat_labels, when))] = heartbeats.items()
    assert beat_labels["device"] == "cpu" and beat_labels["node"] == service.node
    assert time.time() - 60 < when <= time.time() + 1
    memory = {
        dict(key)["kind"]: value
        for key, value in after["impasto_worker_gpu_memory_bytes"].items()
        if dict(key)["worker"] == name
    }
    assert memory == {"allocated": 0, "reserved": 0, "total": 0}
    assert after["impasto_worker_busy"] == {labels(worker=name): 0}
    assert name.startswith(f"{socket.gethostname()}:")  # as on the job's row and in its log lines


def test_flower_on_the_same_broker_lists_the_worker_and_its_tasks(service, tmp_path):
    port = free_port()
    log = tmp_path / "flower.log"
    celery = str(Path(sys.executable).parent / "celery")
    # The command docs/monitoring.md gives; its API answers only with auth or this variable.
    with open(log, "wb") as out:
        flower = subprocess.Popen(
            [celery, f"--broker={SYSTEM_REDIS_URL}", "flower", f"--port={port}"],
            env={**service.env, "FLOWER_UNAUTHENTICATED_API": "true"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/healthcheck", flower, log, timeout=30)
        workers = _poll(
            lambda: requests.get(f"{base}/api/workers?refresh=1", timeout=10).json(),
            lambda found: service.node in found,
        )
        assert STYLIZE in workers[service.node]["registered"]
        assert {q["name"] for q in workers[service.node]["active_queues"]} == {service.settings.cpu_queue}
        _poll(
            lambda: requests.get(f"{base}/api/workers?status=1", timeout=10).json(),  # from the worker's events
            lambda alive: alive.get(service.node) is True,
        )
        assert service.node in requests.get(f"{base}/workers", timeout=10).text  # the page people look at

        # Flower turns the workers' task events on itself (every 5 s): no setting needed.
        wait_for_log(service.worker_log, "enabled by remote", flower, timeout=30)
        job = submit(service, 64)
        assert wait_for_status(service.base, job["id"], {"succeeded", "failed"}, timeout=60)["status"] == "succeeded"
        tasks = _poll(
            lambda: requests.get(f"{base}/api/tasks", timeout=10).json(),
            lambda found: any(job["id"] in (t.get("args") or "") and t["state"] == "SUCCESS" for t in found.values()),
        )
        assert any(t["name"] == STYLIZE and t["worker"] == service.node for t in tasks.values())
    finally:
        stop(flower)


def test_metrics_answer_503_when_the_broker_or_the_database_is_down(make_settings):
    settings = make_settings()
    upgrade(settings.database_url)
    for broken, what in [
        (settings.with_broker("redis://127.0.0.1:9/0"), "broker"),
        (make_settings(IMPASTO_DATABASE_URL="postgresql://postgres@127.0.0.1:9/none"), "database"),
    ]:
        response = create_app(broken).test_client().get("/metrics")
        assert response.status_code == 503 and response.mimetype == "text/plain"
        body = response.get_data(as_text=True)
        assert body.count("\n") == 1 and body.startswith("metrics unavailable:") and what in body, body
        assert response.headers["Retry-After"]


def test_the_scrape_parses_as_the_families_docs_monitoring_md_lists(make_settings):
    """render()'s text, read by prometheus_client's parser: exactly the families, types and labels
    of the table in docs/monitoring.md, with label values that need escaping coming back intact."""
    settings = make_settings()
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    client = redis.Redis.from_url(SYSTEM_REDIS_URL)
    odd = 'gpu "7"\\back\nslash'  # a quote, a backslash and a newline: each must be escaped
    try:
        recorder = Recorder(client, settings.queue)
        recorder.observe_job(status="succeeded", queue=settings.cpu_queue, seconds=3.5, iterations_per_second=2.0)
        recorder.worker_heartbeat(
            "host:1",
            node=odd,
            device="cuda:0",
            gpu_memory_allocated=1 << 30,
            gpu_memory_reserved=2 << 30,
            gpu_memory_total=80 << 30,
            job="j1",
        )
        with session_factory(engine)() as session:
            text = render(session, client, settings)
    finally:
        client.delete(*client.keys(f"impasto:{settings.queue}:metrics:*") or ["-"])
        client.close()
        engine.dispose()

    families = {family.name: family for family in text_string_to_metric_families(text)}
    documented = _documented_metrics()
    assert {name: family.type for name, family in families.items()} == {
        name: kind for name, (kind, _) in documented.items()
    }
    for name, family in families.items():
        label_names = {key for sample in family.samples for key in sample.labels} - {"le"}
        assert label_names == documented[name][1], name
    [beat] = families["impasto_worker_last_heartbeat_timestamp_seconds"].samples
    assert beat.labels == {"worker": "host:1", "node": odd, "device": "cuda:0"}
    memory = {s.labels["kind"]: s.value for s in families["impasto_worker_gpu_memory_bytes"].samples}
    assert memory == {"allocated": 1 << 30, "reserved": 2 << 30, "total": 80 << 30}
    duration = {
        (s.name, s.labels.get("le")): s.value
        for s in families["impasto_job_duration_seconds"].samples
        if s.labels["status"] == "succeeded" and s.labels["queue"] == settings.cpu_queue
    }
    assert duration[("impasto_job_duration_seconds_bucket", "2.5")] == 0
    assert duration[("impasto_job_duration_seconds_bucket", "5.0")] == 1
    assert duration[("impasto_job_duration_seconds_bucket", "+Inf")] == 1
    assert duration[("impasto_job_duration_seconds_count", None)] == 1
    assert duration[("impasto_job_duration_seconds_sum", None)] == 3.5


def _documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """docs/monitoring.md's table: {metric: (type, label names)}."""
    table = (Path(__file__).parents[1] / "docs" / "monitoring.md").read_text()
    found = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`impasto_"):
            # The labels cell: "`status`: `succeeded`, ...; `queue`" or "`worker` (what it is), `node`".
            names = set()
            for part in re.sub(r"\([^)]*\)", "", cells[2]).split(";"):
                names |= set(re.findall(r"`(\w+)`", re.split(r"(?<=`):", part)[0]))
            found[cells[0].strip("`")] = (cells[1], names)
    return found


# --- The runner's side, in-process. -----------------------------------------------------------


@pytest.fixture
def runner(make_settings):
    settings = make_settings()
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    client = redis.Redis.from_url(SYSTEM_REDIS_URL)
    yield JobRunner(
        settings,
        session_factory(engine),
        LocalStorage(settings.data_dir / "storage"),
        device="cpu",
        metrics=Recorder(client, settings.queue),
    )
    client.delete(*client.keys(f"impasto:{settings.queue}:metrics:*") or ["-"])
    client.close()
    engine.dispose()


def figures(runner: JobRunner) -> dict[str, float]:
    """What /metrics would say, as {'name[[label, value], ...]': value}."""
    with runner.sessions() as session:
        text = render(session, runner.metrics.client, runner.settings)
    return {
        sample.name + json.dumps(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_runner_counts_ended_jobs_but_not_handed_back_ones(runner):
    gpu = runner.settings.gpu_queue  # where a job with no queue on its row belongs
    assert runner.run(queue_job(runner, **QUICK)) == "succeeded"
    # A worker stopping mid-job hands it back: it has not ended, so it is not counted.
    assert runner.run(queue_job(runner, **{**QUICK, "iterations": 50}), should_abort=_after(3)) == "queued"
    counts = figures(runner)
    assert counts[f'impasto_job_duration_seconds_count[["queue", "{gpu}"], ["status", "succeeded"]]'] == 1
    assert sum(v for k, v in counts.items() if k.startswith("impasto_job_duration_seconds_count")) == 1
    assert counts[f'impasto_job_iterations_per_second_count[["queue", "{gpu}"], ["status", "succeeded"]]'] == 1


def test_a_failed_job_is_counted_without_a_rate(runner):
    job_id = queue_job(runner)
    runner.storage.delete("jobs/t/inputs/1-style.jpg")  # fails at once with input_missing
    assert runner.run(job_id) == "failed"
    counts = figures(runner)
    gpu = runner.settings.gpu_queue
    assert counts[f'impasto_job_duration_seconds_count[["queue", "{gpu}"], ["status", "failed"]]'] == 1
    assert counts[f'impasto_job_iterations_per_second_count[["queue", "{gpu}"], ["status", "failed"]]'] == 0


def test_a_broker_outage_costs_the_figure_never_the_job(runner, caplog):
    runner.metrics = Recorder(redis.Redis.from_url("redis://127.0.0.1:9/0"), runner.settings.queue)
    job_id = queue_job(runner, **QUICK)
    with caplog.at_level(logging.WARNING, logger="impasto.worker"):
        assert runner.run(job_id) == "succeeded"
    assert f"job={job_id} event=metrics-failed error=" in caplog.text


def _after(calls: int):
    """should_abort that turns true at its `calls`-th call: a worker stopping mid-job."""
    seen = [0]

    def should_abort() -> bool:
        seen[0] += 1
        return seen[0] >= calls

    return should_abort


def _poll(fetch, done, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        found = fetch()
        if done(found) or time.monotonic() > deadline:
            assert done(found), found
            return found
        time.sleep(0.5)


def _elapsed(start: str, end: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))
