"""Fixtures more than one test module uses; tests/conftest.py makes them every module's.

- `s3_server`, `s3`: moto's standalone S3 server as a process, and a bucket on it.
- `settings`, `app`, `client`, `queued`: the web app on SQLite, a local folder and this
  machine's Redis (each test on a queue of its own; no worker takes the messages).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from shared.launcher import free_port
from shared.migrate import upgrade
from shared.storage import open_storage
from web.app import create_app


@pytest.fixture(scope="module")
def s3_server():
    """moto's standalone S3 server, a separate process on a free port."""
    port = free_port()
    # The script beside this interpreter: the venv's bin need not be on PATH.
    binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    process = subprocess.Popen([binary, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(url, timeout=15)  # its first answer loads moto's backends: seconds
                break
            except requests.RequestException:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError("moto_server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def s3(s3_server, monkeypatch):
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="impasto")
    return open_storage("s3://impasto/some/prefix", s3_endpoint_url=s3_server)


@pytest.fixture
def settings(make_settings):
    settings = make_settings(IMPASTO_MAX_UPLOAD_BYTES=2_000_000, IMPASTO_MAX_SIZE=1024, IMPASTO_MAX_STYLES=2)
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def queued(settings):
    """How many messages wait on this test's queue."""
    connection = redis.Redis.from_url(settings.broker_url)
    yield lambda: sum(connection.llen(queue) for queue in settings.queues)
    connection.delete(*settings.queues)
    connection.close()
