"""Several machines, on one: a store host (PostgreSQL, Redis, an S3-compatible server), a web
host and two worker hosts, each in a network namespace of its own with its own address and
hostname (tests/netns.py). Every part is a real process started with the commands of
docs/deploy.md. A batch of jobs is shared by both workers; then one worker host is cut off
the network in the middle of a job, and the job finishes on the other, from its latest
snapshot in S3. Nothing is mocked; the S3 server is moto's standalone server, run as a
process on the store host."""

from __future__ import annotations

import glob
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from PIL import Image
from sqlalchemy import create_engine, text

from tests.conftest import PAINTING, PHOTO
from tests.netns import Network, available
from tests.servers import ROOT, service_env

DEPLOY_DOC = ROOT / "docs" / "deploy.md"
# The commands each host runs, exactly as docs/deploy.md gives them.
WEB_COMMANDS = ["impasto db upgrade", "impasto web --host 0.0.0.0 --port 8000"]
WORKER_COMMAND = "impasto worker --gpus all"

pytestmark = pytest.mark.skipif(available() is not None, reason=f"multi-host test: {available()}")


def impasto(command: str) -> list[str]:
    """A documented `impasto ...` command line, run with this interpreter's installation."""
    script = Path(sys.executable).parent / "impasto"
    words = command.split()
    assert words[0] == "impasto"
    return [str(script), *words[1:]] if script.exists() else [sys.executable, "-m", "shared.cli", *words[1:]]


def test_the_commands_run_here_are_the_documented_ones():
    doc = DEPLOY_DOC.read_text()
    for command in [*WEB_COMMANDS, WORKER_COMMAND]:
        assert command in doc, f"docs/deploy.md no longer says {command!r}"


def wait_until(check, timeout: float, what: str, logs: list[Path] = ()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # not up yet
            value = None
        if value:
            return value
        time.sleep(0.3)
    tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}" for log in logs if log.exists())
    raise AssertionError(f"{what}: not within {timeout} s\n{tails}")


def start_postgres(host, logs: Path, folder: Path) -> None:
    """A PostgreSQL server of the store host's own in `folder` (PostgreSQL refuses to run as
    root, so the folder is the postgres user's, outside pytest's root-only temporary folders)."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not binaries:
        pytest.fail("PostgreSQL's server binaries are not installed (Debian package postgresql)")
    shutil.chown(folder, "postgres", "postgres")
    initdb = subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            f"{binaries[-1]}/initdb",
            "-D",
            str(folder / "db"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
    )
    assert initdb.returncode == 0, initdb.stderr
    subnet = host.address.rsplit(".", 1)[0] + ".0/24"
    with open(folder / "db" / "pg_hba.conf", "a") as hba:  # the other hosts of the network may connect
        hba.write(f"host all all {subnet} trust\n")
    host.start(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            f"{binaries[-1]}/postgres",
            "-D",
            str(folder / "db"),
            "-c",
            f"listen_addresses={host.address}",
            "-c",
            f"unix_socket_directories={folder}",
            "-c",
            "fsync=off",
            "-p",
            "5432",
        ],
        os.environ.copy(),
        logs / "postgres.log",
    )


@pytest.fixture
def cluster(tmp_path):
    network = Network()
    store, web = network.add("store"), network.add("web")
    workers = [network.add("gpu1"), network.add("gpu2")]
    logs = tmp_path
    pg_folder = Path(tempfile.mkdtemp(prefix="impasto-pg-"))
    try:
        start_postgres(store, logs, pg_folder)
        store.start(
            [
                "redis-server",
                "--bind",
                store.address,
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            os.environ.copy(),
            logs / "redis.log",
        )
        moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        store.start([moto, "-H", store.address, "-p", "9000"], os.environ.copy(), logs / "s3.log")
        admin = create_engine(
            f"postgresql+psycopg://postgres@{store.address}:5432/postgres", isolation_level="AUTOCOMMIT"
        )
        wait_until(lambda: admin.connect().close() or True, 60, "PostgreSQL on the store host", [logs / "postgres.log"])
        with admin.connect() as connection:
            connection.execute(text("CREATE DATABASE impasto"))
        admin.dispose()
        wait_until(
            lambda: requests.get(f"http://{store.address}:9000", timeout=15).ok,
            60,
            "S3 on the store host",
            [logs / "s3.log"],
        )

        # The settings every Impasto host is given (docs/deploy.md, "Several GPU machines").
        env = service_env(
            {
                "IMPASTO_DATABASE_URL": f"postgresql://postgres@{store.address}:5432/impasto",
                "IMPASTO_BROKER_URL": f"redis://{store.address}:6379/0",
                "IMPASTO_STORAGE_URL": "s3://impasto/jobs",
                "IMPASTO_S3_ENDPOINT_URL": f"http://{store.address}:9000",
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1",
                # Short enough for a test: a lost worker is noticed after 6 s without a heartbeat.
                "IMPASTO_JOB_LEASE": "6",
                "IMPASTO_RECONCILE_INTERVAL": "1",
                "IMPASTO_ENQUEUE_GRACE": "5",
                "IMPASTO_DB_RETRY": "5",
                "OMP_NUM_THREADS": "1",
            }
        )
        import boto3

        boto3.client(
            "s3",
            endpoint_url=f"http://{store.address}:9000",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        ).create_bucket(Bucket="impasto")

        for command in WEB_COMMANDS:
            log = logs / ("migrate.log" if "upgrade" in command else "web.log")
            process = web.start(impasto(command), {**env, "IMPASTO_DATA_DIR": str(tmp_path / "web")}, log, cwd=ROOT)
            if "upgrade" in command:
                assert process.wait(timeout=120) == 0, log.read_text()
        base = f"http://{web.address}:8000"
        wait_until(lambda: requests.get(f"{base}/healthz", timeout=5).ok, 90, "the web host", [logs / "web.log"])
        for worker in workers:
            worker.start(
                impasto(WORKER_COMMAND),
                {**env, "IMPASTO_DATA_DIR": str(tmp_path / worker.name)},
                logs / f"{worker.name}.log",
                cwd=ROOT,
            )
        for worker in workers:
            wait_until(
                lambda log=logs / f"{worker.name}.log": "ready." in log.read_text(),
                120,
                f"the worker on {worker.name}",
                [logs / f"{worker.name}.log"],
            )
        database = create_engine(f"postgresql+psycopg://postgres@{store.address}:5432/impasto")
        yield base, workers, database, logs, store
        database.dispose()
    finally:
        network.close()
        shutil.rmtree(pg_folder, ignore_errors=True)


def submit(base: str, **fields: str) -> dict:
    with open(PHOTO, "rb") as photo, open(PAINTING, "rb") as painting:
        response = requests.post(
            f"{base}/api/v1/jobs",
            timeout=30,
            files={"content": ("photo.jpg", photo), "style": ("painting.jpg", painting)},
            data={"weights": "random", **fields},
        )
    assert response.status_code == 202, response.text
    return response.json()


def row(database, job_id: str):
    with database.connect() as connection:
        return connection.execute(
            text("SELECT status, worker, attempts, workers_lost, iteration, iterations FROM jobs WHERE id = :id"),
            {"id": job_id},
        ).one()


@pytest.mark.timeout(600)
def test_workers_on_two_hosts_share_jobs_and_a_cut_off_host_loses_none(cluster):
    base, workers, database, logs, store = cluster
    worker_logs = [logs / f"{w.name}.log" for w in workers]

    # A batch: both worker hosts take jobs.
    batch = [submit(base, size="64", iterations="30", snapshot_every="10") for _ in range(6)]
    for job in batch:
        wait_until(
            lambda job_id=job["id"]: row(database, job_id).status in ("succeeded", "failed"),
            180,
            f"job {job['id']}",
            worker_logs,
        )
    rows = [row(database, job["id"]) for job in batch]
    assert {r.status for r in rows} == {"succeeded"}
    assert {r.worker.split(":")[0] for r in rows} == {"gpu1", "gpu2"}  # the hosts' own names
    done = requests.get(f"{base}/api/v1/jobs/{batch[0]['id']}", timeout=10).json()
    # Written to S3 by a worker host, served by the web host as a redirect to the store host.
    redirect = requests.get(f"{base}{done['output_url']}?download=1", timeout=30, allow_redirects=False)
    assert redirect.status_code == 302
    assert redirect.headers["Location"].startswith(f"http://{store.address}:9000/impasto/jobs/jobs/{done['id']}/")
    output = requests.get(redirect.headers["Location"], timeout=30)
    assert output.status_code == 200 and Image.open(io.BytesIO(output.content)).format == "PNG"

    # A long job; its host is cut off the network once it has stored a snapshot.
    job = submit(base, size="96", iterations="120", snapshot_every="10", scales="1")
    running = wait_until(
        lambda: (r := row(database, job["id"])).status == "running" and r.iteration >= 20 and r,
        120,
        "the long job running past its first snapshots",
        worker_logs,
    )
    lost_name = running.worker.split(":")[0]
    lost = next(w for w in workers if w.name == lost_name)
    survivor = next(w for w in workers if w is not lost)
    cut_at = row(database, job["id"]).iteration
    lost.cut()

    final = wait_until(
        lambda: (r := row(database, job["id"])).status in ("succeeded", "failed") and r,
        240,
        "the cut-off host's job finishing elsewhere",
        worker_logs,
    )
    assert final.status == "succeeded" and final.iteration == final.iterations == 120
    assert final.worker.split(":")[0] == survivor.name
    assert final.attempts == 2 and final.workers_lost == 1
    survivor_log = (logs / f"{survivor.name}.log").read_text()
    assert f"job={job['id']} event=requeued reason=lease-expired" in survivor_log
    resumed = [line for line in survivor_log.splitlines() if f"job={job['id']} event=resumed" in line]
    assert resumed, survivor_log[-3000:]
    resumed_at = int(resumed[0].split("iteration=")[1].split()[0])
    assert 10 <= resumed_at <= cut_at + 10  # from a snapshot the lost host stored, not from scratch
    shown = requests.get(f"{base}/api/v1/jobs/{job['id']}", timeout=10).json()
    assert shown["status"] == "succeeded"
    assert requests.get(f"{base}{shown['output_url']}", timeout=30).status_code == 200
