"""Queues per device class and `impasto worker --gpus`: where a job is sent, which worker
takes it, and the per-GPU supervisor, with real Redis, real worker processes and a real
database. This machine has no GPU: `--gpus` is shown to fall back to one CPU worker and to
refuse GPUs it does not have; the supervisor is run over CPU workers, which exercises all of
it but the CUDA_VISIBLE_DEVICES it sets (checked in the command lines it builds)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import redis
import requests

from shared.launcher import free_port
from shared.settings import load_settings
from tests.conftest import PAINTING, PHOTO, SYSTEM_REDIS_URL
from tests.servers import ROOT, service_env, start, stop, wait_for_http, wait_for_log, wait_for_status
from worker.gpus import GpuError, children, parse_gpus
from worker.service import worker_queues


def test_a_job_goes_to_the_cpu_queue_up_to_the_preview_size_and_to_the_gpu_queue_above():
    settings = load_settings({"IMPASTO_QUEUE": "q"})
    assert settings.queues == ("q.gpu", "q.cpu")
    assert settings.queue_for(64) == settings.queue_for(256) == "q.cpu"
    assert settings.queue_for(257) == "q.gpu"
    every_job_on_gpus = load_settings({"IMPASTO_CPU_MAX_SIZE": "0", "IMPASTO_GPU_QUEUE": "gpu"})
    assert every_job_on_gpus.queue_for(16) == "gpu"


def test_worker_queues_take_device_classes_or_names():
    settings = load_settings({"IMPASTO_QUEUE": "q"})
    assert worker_queues(settings, None) == ["q.gpu", "q.cpu"]  # by default no job waits for a kind of worker
    assert worker_queues(settings, "cpu") == ["q.cpu"]
    assert worker_queues(settings, "gpu,other") == ["q.gpu", "other"]
    with pytest.raises(ValueError, match="once"):
        worker_queues(settings, "cpu,cpu")


def test_parse_gpus():
    assert parse_gpus("all", 4) == [0, 1, 2, 3]
    assert parse_gpus("all", 0) == []  # a CPU-only machine: one CPU worker
    assert parse_gpus("1,3", 4) == [1, 3]
    with pytest.raises(GpuError, match="there is no GPU 2; this machine has GPUs 0 to 1"):
        parse_gpus("0,2", 2)
    with pytest.raises(GpuError, match="no GPU"):
        parse_gpus("0", 0)
    for bad in ("x", "0,0", "-1", ""):
        with pytest.raises(GpuError):
            parse_gpus(bad, 2)


def test_each_gpu_gets_a_process_pinned_to_it_with_concurrency_one():
    built = children([0, 2], ["--queues=a,b"], "impasto-7@host")
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in built] == ["0", "2"]
    for child in built:
        assert child.argv[:4] == [sys.executable, "-m", "shared.cli", "worker"]
        assert child.argv[4:] == [
            "--queues=a,b",
            "--device",
            "cuda:0",
            "--concurrency",
            "1",
            "--hostname",
            f"{child.name}.impasto-7@host",
        ]
    assert len({c.argv[-1] for c in built}) == 2  # Celery needs a name per process


def test_gpus_names_only_gpus_the_machine_has(tmp_path):
    env = service_env({"IMPASTO_DATA_DIR": str(tmp_path), "IMPASTO_BROKER_URL": SYSTEM_REDIS_URL})
    run = subprocess.run(
        [sys.executable, "-m", "shared.cli", "worker", "--gpus", "0"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "impasto worker: error: --gpus '0': there is no GPU 0; this machine has no GPU "
        "(use --gpus all to run one CPU worker)"
    ]
    run = subprocess.run(
        [sys.executable, "-m", "shared.cli", "worker", "--gpus", "all", "--device", "cpu"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "leave out --device and --concurrency" in run.stderr


@pytest.fixture
def web(tmp_path, postgres_url):
    """`impasto web` on PostgreSQL and this machine's Redis, with queues of this test's own."""
    env = service_env(
        {
            "IMPASTO_DATA_DIR": str(tmp_path / "data"),
            "IMPASTO_DATABASE_URL": postgres_url,
            "IMPASTO_BROKER_URL": SYSTEM_REDIS_URL,
            "IMPASTO_QUEUE": f"q-{uuid.uuid4().hex[:8]}",
        }
    )
    migrate = start(["db", "upgrade"], env, tmp_path / "migrate.log")
    assert migrate.wait(timeout=120) == 0, (tmp_path / "migrate.log").read_text()
    port = free_port()
    process = start(["web", "--port", str(port)], env, tmp_path / "web.log")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", process, tmp_path / "web.log")
        yield f"http://127.0.0.1:{port}", env
    finally:
        stop(process)
        connection = redis.Redis.from_url(SYSTEM_REDIS_URL)
        connection.delete(*load_settings(env).queues)
        connection.close()


def submit(base: str, size: int, iterations: int = 10) -> dict:
    with open(PHOTO, "rb") as photo, open(PAINTING, "rb") as painting:
        response = requests.post(
            f"{base}/api/v1/jobs",
            timeout=30,
            files={"content": ("photo.jpg", photo), "style": ("painting.jpg", painting)},
            data={"size": str(size), "iterations": str(iterations), "weights": "random"},
        )
    assert response.status_code == 202, response.text
    return response.json()


def test_a_cpu_only_worker_takes_previews_and_leaves_gpu_jobs_waiting(web, tmp_path):
    base, env = web
    settings = load_settings(env)
    preview, large = submit(base, 64), submit(base, 300)
    connection = redis.Redis.from_url(SYSTEM_REDIS_URL)
    waiting = {
        queue: [json.loads(m)["headers"]["argsrepr"] for m in connection.lrange(queue, 0, -1)]
        for queue in settings.queues
    }
    assert [preview["id"] in repr(m) for m in waiting[settings.cpu_queue]] == [True]
    assert [large["id"] in repr(m) for m in waiting[settings.gpu_queue]] == [True]

    # `--gpus all` on a machine without a GPU: one CPU worker process; `--queues cpu`: previews only.
    log = tmp_path / "worker.log"
    worker = start(["worker", "--gpus", "all", "--queues", "cpu"], env, log)
    try:
        wait_for_log(log, "ready.", worker)
        assert wait_for_status(base, preview["id"], {"succeeded", "failed"})["status"] == "succeeded"
        time.sleep(1)
        assert requests.get(f"{base}/api/v1/jobs/{large['id']}", timeout=5).json()["status"] == "queued"
        assert connection.llen(settings.gpu_queue) == 1
    finally:
        stop(worker)
        connection.close()
    text = log.read_text()
    assert "event=no-gpu workers=1 device=cpu" in text
    assert f"event=worker-starting queues={settings.cpu_queue} device=cpu" in text
    assert f"job={preview['id']} event=started" in text
    # Every line the worker logs, Celery's own included, is key=value pairs (Celery prints its
    # shutdown notice straight to the terminal from a signal handler, not through logging).
    lines = [line for line in text.splitlines() if line.strip() and "Warm shutdown" not in line]
    assert lines and all(line.startswith("ts=") and " level=" in line for line in lines), lines[:5]


def test_the_supervisor_keeps_one_worker_per_device_and_stops_them_all(web, tmp_path):
    """Two supervised CPU workers, as `--gpus 0,1` runs two GPU workers: both take jobs, one
    that dies is started again, and SIGTERM to the supervisor stops both cleanly."""
    base, env = web
    logs = [tmp_path / "gpu0.log", tmp_path / "gpu1.log"]
    for log in logs:
        log.touch()
    script = (
        "import sys\n"
        "from shared.logs import configure_logging\n"
        "from worker.gpus import Child, supervise\n"
        "configure_logging()\n"
        "base = [sys.executable, '-m', 'shared.cli', 'worker', '--device', 'cpu', '--concurrency', '1']\n"
        f"logs = {[str(p) for p in logs]!r}\n"
        "workers = [Child(f'gpu{i}', ['sh', '-c', 'exec \"$@\" >>' + logs[i] + ' 2>&1', 'sh', *base,\n"
        "           '--hostname', f'gpu{i}.test@%h'], {'IMPASTO_GPU_INDEX': str(i)}) for i in range(2)]\n"
        "sys.exit(supervise(workers, restart_delay=0.5, stop_grace=60))\n"
    )
    with open(tmp_path / "supervisor.log", "wb") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-c", script],
            env=env,
            cwd=ROOT,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        for log in logs:
            wait_for_log(log, "ready.", supervisor)
        jobs = [submit(base, 64, iterations=40) for _ in range(4)]
        for job in jobs:
            assert wait_for_status(base, job["id"], {"succeeded", "failed"})["status"] == "succeeded"
        ran = {log.name for log in logs if "event=started" in log.read_text()}
        assert ran == {"gpu0.log", "gpu1.log"}

        # A worker that dies (a GPU fault, the OOM killer) is started again.
        first = _main_worker_pid(logs[0])
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and logs[0].read_text().count("ready.") < 2:
            time.sleep(0.3)
        assert logs[0].read_text().count("ready.") == 2
        assert "event=worker-exited child=gpu0" in (tmp_path / "supervisor.log").read_text()
        job = submit(base, 64)
        assert wait_for_status(base, job["id"], {"succeeded", "failed"})["status"] == "succeeded"

        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=90) == 0
        for log in logs:  # each worker was told and stopped as on its own SIGTERM
            assert "Warm shutdown" in log.read_text()
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-f", "gpu[01].test@"], check=False)


def _main_worker_pid(log) -> int:
    """The worker's main process: the one that logs the reconciler start and `ready.`."""
    for line in log.read_text().splitlines():
        if "event=worker-starting" in line:
            return int(line.split(" pid=")[1].split()[0])
    raise AssertionError(log.read_text()[-2000:])
