"""`impasto up`, the README's run command: everything on one machine, then a curl submission,
as the issue's "done when" describes; and a clean stop on Ctrl-C."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import socket
import subprocess
import sys

import pytest
import requests
from PIL import Image

from shared.launcher import free_port
from tests.conftest import PAINTING, PHOTO, POSTGRES_ADMIN_URL, SYSTEM_REDIS_URL
from tests.servers import service_env, start, stop, temporary_postgres_database, wait_for_http, wait_for_status


def curl_submit(base: str) -> dict:
    run = subprocess.run(
        [
            "curl",
            "-sS",
            "-F",
            f"content=@{PHOTO}",
            "-F",
            f"style=@{PAINTING}",
            "-F",
            "size=128",
            "-F",
            "iterations=40",
            "-F",
            "weights=random",
            f"{base}/api/v1/jobs",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(run.stdout)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("backing", ["embedded", "postgresql+redis"])
def test_up_runs_a_curl_job_to_success_and_stops_cleanly_on_ctrl_c(backing, tmp_path, queue_name):
    with contextlib.ExitStack() as cleanup:
        env = {"IMPASTO_QUEUE": queue_name}
        if backing != "embedded":
            env.update(
                IMPASTO_DATABASE_URL=cleanup.enter_context(temporary_postgres_database(POSTGRES_ADMIN_URL)),
                IMPASTO_BROKER_URL=SYSTEM_REDIS_URL,
            )
        run_up_and_a_job(backing, tmp_path, env)


def run_up_and_a_job(backing, tmp_path, env):
    port = free_port()
    log = tmp_path / "up.log"
    # Embedded: no IMPASTO_SECRET_KEY given, so `impasto up` makes one into its data folder.
    up_env = service_env(env, secret_key=backing != "embedded")
    up = start(["up", "--port", str(port), "--data-dir", str(tmp_path / "data")], up_env, log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/healthz", up, log)
        job = curl_submit(base)
        assert job["status"] == "queued"
        job = wait_for_status(base, job["id"], {"succeeded", "failed", "canceled"})
        assert job["status"] == "succeeded", job["error"]
        assert len(job["snapshots"]) >= 2
        output = Image.open(io.BytesIO(requests.get(f"{base}{job['output_url']}?download=1", timeout=5).content))
        assert output.format == "PNG" and max(output.size) == 128
        if backing == "embedded":
            assert (tmp_path / "data" / "impasto.db").is_file()
            assert (tmp_path / "data" / "storage" / "jobs" / job["id"] / "attempt-1" / "output.png").is_file()
            key = tmp_path / "data" / "secret_key"
            assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_text().strip()) >= 32
        else:
            assert not (tmp_path / "data" / "impasto.db").exists()
        assert f"Impasto is running at {base}/" in log.read_text()

        up.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert up.wait(timeout=60) == 0, log.read_text()[-3000:]
        # A clean stop: no pool process dies of the signal (an error line), none is started anew.
        text = log.read_text(errors="replace")
        assert "level=error" not in text and "exited with" not in text, text[-3000:]
        assert text.count("event=weights-deferred") == 1, text[-3000:]  # one pool process started, ever
        assert not port_open(port)
        children = subprocess.run(["pgrep", "-f", f"--data-dir {tmp_path}|--port {port}"], capture_output=True)
        assert children.stdout == b"", "processes left behind after Ctrl-C"
    finally:
        stop(up)


def test_up_refuses_a_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "shared.cli", "up", "--port", str(port), "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=service_env({}),
        )
    assert run.returncode == 2
    assert run.stderr.strip() == f"impasto up: error: port {port} is already in use; pick another with --port"
