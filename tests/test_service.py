"""End to end, with every part real: `impasto web` (gunicorn) and `impasto worker` (Celery)
as processes, on PostgreSQL with this machine's Redis, and on SQLite with a Redis the test
starts. Jobs are tiny (64 px, random weights) so each runs in a few seconds on CPU."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from shared.storage import LocalStorage
from tests.conftest import PAINTING, PHOTO, SYSTEM_REDIS_URL
from tests.servers import (
    Service,
    running_service,
    service_env,
    stop,
    wait_for_log,
    wait_for_status,
)


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def service(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"service-{request.param}")
    redis_url = request.getfixturevalue("own_redis") if request.param == "sqlite" else None
    with running_service(request.param, folder, redis_url) as found:
        yield found


def submit(service: Service, **fields) -> requests.Response:
    with open(PHOTO, "rb") as photo, open(PAINTING, "rb") as painting:
        return requests.post(
            f"{service.base}/api/v1/jobs",
            timeout=30,
            files={"content": ("tubingen.jpg", photo), "style": ("starry_night.jpg", painting)},
            data={"size": "64", "iterations": "20", "snapshot_every": "4", "weights": "random", **fields},
        )


def test_a_job_goes_queued_running_succeeded_with_snapshots_and_output(service):
    response = submit(service)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    seen = [job["status"]]
    while seen[-1] not in ("succeeded", "failed", "canceled"):
        status = requests.get(service.base + response.headers["Location"], timeout=5).json()["status"]
        if status != seen[-1]:
            seen.append(status)
    assert seen == ["queued", "running", "succeeded"]

    job = requests.get(f"{service.base}/api/v1/jobs/{job['id']}", timeout=5).json()
    assert job["progress"]["iteration"] == 20 and job["progress"]["fraction"] == 1.0
    assert job["weights"] == "random" and job["weights_warning"] is None  # asked for by name
    assert [s["iteration"] for s in job["snapshots"]] == [4, 8, 12, 16]
    for snapshot in job["snapshots"]:
        image = requests.get(service.base + snapshot["url"], timeout=5)
        assert image.headers["Content-Type"] == "image/png" and Image.open(io.BytesIO(image.content)).size
    download = requests.get(service.base + job["output_url"] + "?download=1", timeout=5)
    assert download.headers["Content-Disposition"] == f'attachment; filename="impasto-{job["id"]}.png"'
    output = Image.open(io.BytesIO(download.content))
    assert output.format == "PNG" and output.size == (64, 48)

    row = service.row(job["id"])  # what is stored, not only what the API says
    assert row.status == "succeeded" and row.attempts == 1 and row.worker and row.error_code is None
    assert row.created_at <= row.started_at <= row.finished_at
    assert row.iteration == row.iterations == 20 and row.losses["total"] > 0 and row.weights == "random"
    storage = LocalStorage(Path(service.settings.storage_url.removeprefix("file://")))
    assert len(row.snapshots) >= 2 and all(storage.exists(s.key) for s in row.snapshots)
    assert storage.get(row.output_key) == download.content


def test_a_running_job_can_be_canceled(service):
    job = submit(service, size="96", iterations="5000", snapshot_every="0").json()
    running = wait_for_status(service.base, job["id"], {"running"})
    assert running["progress"]["iteration"] < 5000
    token = {"X-Job-Token": job["token"]}  # from the answer to the submission
    response = requests.post(f"{service.base}/api/v1/jobs/{job['id']}/cancel", headers=token, timeout=5)
    assert response.status_code in (200, 202)
    final = wait_for_status(service.base, job["id"], {"canceled", "succeeded", "failed"}, timeout=60)
    assert final["status"] == "canceled" and final["progress"]["iteration"] < 5000
    row = service.row(job["id"])
    assert row.cancel_requested and row.finished_at and row.output_key  # the picture so far is kept
    again = requests.post(f"{service.base}/api/v1/jobs/{job['id']}/cancel", headers=token, timeout=5)
    assert again.json()["status"] == "canceled"


def test_events_stream_progress_snapshots_and_the_final_status(service):
    job = submit(service).json()
    names, last = [], None
    with requests.get(f"{service.base}/api/v1/jobs/{job['id']}/events", stream=True, timeout=60) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                names.append(name)
                last = json.loads(line.removeprefix("data: "))
    assert {"status", "progress", "snapshot"} <= set(names)
    assert last["status"] == "succeeded" and last["output_url"]


@pytest.mark.parametrize("whom", ["process group", "main process"])
def test_a_worker_stopped_with_sigterm_hands_its_job_back(service, whom):
    job = submit(service, iterations="40", snapshot_every="4").json()
    wait_for_status(service.base, job["id"], {"running"})
    while requests.get(f"{service.base}/api/v1/jobs/{job['id']}", timeout=5).json()["progress"]["iteration"] < 10:
        time.sleep(0.05)
    if whom == "process group":  # as `impasto up` and systemd signal it
        stop(service.worker, signal.SIGTERM)
    else:  # as `docker stop` does: the main process only, which tells its pool processes
        service.worker.send_signal(signal.SIGTERM)
        service.worker.wait(timeout=60)
    handed = requests.get(f"{service.base}/api/v1/jobs/{job['id']}", timeout=5).json()
    assert handed["status"] == "queued" and handed["attempts"] == 1, handed
    latest = max(s["iteration"] for s in handed["snapshots"])
    log = service.restart_worker()
    done = wait_for_status(service.base, job["id"], {"succeeded", "failed", "canceled"})
    # The same job, taken up again elsewhere, neither lost nor run twice: it went on from
    # its latest snapshot and was finished once, by the new worker.
    assert (done["status"], done["attempts"], done["progress"]["iteration"]) == ("succeeded", 2, 40), done
    # The worker logs the end just after recording it.
    wait_for_log(log, f"job={job['id']} event=succeeded", service.worker, timeout=30)
    text = log.read_text()
    assert f"job={job['id']} event=resumed iteration={latest}" in text
    assert text.count(f"job={job['id']} event=succeeded") == 1


def test_worker_refuses_a_device_it_cannot_use(tmp_path):
    env = service_env({"IMPASTO_BROKER_URL": SYSTEM_REDIS_URL, "IMPASTO_DATA_DIR": str(tmp_path)})
    run = subprocess.run(
        [sys.executable, "-m", "shared.cli", "worker", "--device", "cuda"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.startswith("impasto worker: error: --device: device 'cuda' was asked for but no CUDA GPU")
