"""The database goes away for a few seconds under a running `impasto web` (gunicorn): every
request that needs it answers 503 with Retry-After at once, never 500 and never a hang, and
the service answers 200 again by itself once the database is back.

PostgreSQL is reached through a TCP proxy (tests.faults) that the test cuts and restores; the
broker is this machine's Redis, on a queue no worker consumes.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import requests
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from shared.db import make_engine, session_factory
from shared.launcher import free_port
from shared.migrate import upgrade
from shared.models import Job, utcnow
from shared.storage import LocalStorage
from tests.conftest import PAINTING, PHOTO, POSTGRES_ADMIN_URL, SYSTEM_REDIS_URL
from tests.faults import tcp_proxy
from tests.servers import service_env, start, stop, temporary_postgres_database, wait_for_http
from web.app import create_app
from web.services import Services
from worker.retention import purge_orphans

# Each answer during the cut must come at least this fast: the proxy refuses connections, so
# anything slower is a request waiting on something it should not.
QUICK_S = 5.0


class Web:
    def __init__(self, base: str, database_url: str, storage: LocalStorage, log: Path, proxy):
        self.base, self.database_url, self.storage, self.log, self.proxy = base, database_url, storage, log, proxy

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.base + path, timeout=30, **kw)

    def submit(self) -> requests.Response:
        with open(PHOTO, "rb") as photo, open(PAINTING, "rb") as painting:
            return requests.post(
                f"{self.base}/api/v1/jobs",
                timeout=30,
                files={"content": ("photo.jpg", photo), "style": ("painting.jpg", painting)},
                data={"size": "64", "iterations": "10", "weights": "random"},
            )

    def count_jobs(self) -> int:
        """Straight to PostgreSQL, not through the proxy."""
        engine = make_engine(self.database_url)
        try:
            with session_factory(engine)() as session:
                return session.scalar(select(func.count()).select_from(Job))
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outage")
    database = make_url(POSTGRES_ADMIN_URL)
    with (
        temporary_postgres_database(POSTGRES_ADMIN_URL) as url,
        tcp_proxy(database.host or "127.0.0.1", database.port or 5432) as proxy,
    ):
        upgrade(url)
        proxied = make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        env = service_env(
            {
                "IMPASTO_DATA_DIR": str(folder / "data"),
                "IMPASTO_DATABASE_URL": proxied,
                "IMPASTO_BROKER_URL": SYSTEM_REDIS_URL,
                "IMPASTO_QUEUE": f"impasto-outage-{uuid.uuid4().hex[:8]}",
            }
        )
        port = free_port()
        log = folder / "web.log"
        process = start(["web", "--port", str(port), "--workers", "2", "--threads", "4"], env, log)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz", process, log)
            yield Web(f"http://127.0.0.1:{port}", url, LocalStorage(folder / "data" / "storage"), log, proxy)
        finally:
            stop(process)


def job_folders(storage: LocalStorage) -> set[str]:
    """The ids of the jobs that have files in storage."""
    return {item.key.split("/")[1] for item in storage.list_objects("jobs")}


def timed(call, *args) -> tuple[requests.Response, float]:
    began = time.monotonic()
    response = call(*args)
    return response, time.monotonic() - began


def assert_unavailable(response: requests.Response, elapsed: float, kind: str) -> None:
    assert response.status_code == 503, f"{response.request.url}: {response.status_code} {response.text[:300]}"
    assert int(response.headers["Retry-After"]) > 0
    assert elapsed < QUICK_S, f"{response.request.url} took {elapsed:.1f} s"
    if kind == "json":
        assert response.headers["Content-Type"] == "application/json"
        error = response.json()["error"]
        assert error["code"] == "unavailable" and error["field"] is None and "database" in error["message"]
    elif kind == "html":
        assert response.headers["Content-Type"].startswith("text/html")
        assert "Service Unavailable" in response.text and "try again" in response.text


def test_a_database_outage_answers_503_and_recovers_by_itself(web):
    created = web.submit()
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    # Every connection in both gunicorn processes' pools is alive before the cut.
    for _ in range(8):
        assert web.get(f"/api/v1/jobs/{job_id}").status_code == 200
    folders_before = job_folders(web.storage)

    web.proxy.cut()
    cut_at = time.monotonic()
    slowest, refused = 0.0, 0
    # Two rounds: the first meets pooled connections the cut has just reset, the second only
    # refused new ones.
    for _ in range(2):
        for path, kind in [
            (f"/api/v1/jobs/{job_id}", "json"),
            (f"/api/v1/jobs/{job_id}/events", "json"),
            (f"/jobs/{job_id}", "html"),
            ("/healthz", "health"),
        ]:
            response, elapsed = timed(web.get, path)
            assert_unavailable(response, elapsed, kind)
            slowest, refused = max(slowest, elapsed), refused + (kind != "health")
        response, elapsed = timed(web.submit)
        assert_unavailable(response, elapsed, "json")
        slowest, refused = max(slowest, elapsed), refused + 1
    health = web.get("/healthz").json()
    assert health["status"] == "unavailable" and health["database"].startswith("unreachable")
    assert web.get("/").status_code == 200  # the form needs no database
    # The form sent during the outage comes back filled in, with the reason, rather than lost.
    browser = requests.Session()
    token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get(web.base + "/", timeout=30).text)[1]
    with open(PHOTO, "rb") as photo:
        form = browser.post(
            web.base + "/jobs",
            timeout=30,
            files={"content": ("photo.jpg", photo)},
            data={"csrf_token": token, "style_preset": "starry_night", "iterations": "37"},
        )
    assert form.status_code == 503 and form.headers.get("Retry-After"), form.text[:500]
    assert "database cannot be reached" in form.text and 'value="37"' in form.text
    time.sleep(max(0.0, 3 - (time.monotonic() - cut_at)))  # a few seconds' outage in all

    web.proxy.restore()
    restored_at = time.monotonic()
    while web.get(f"/api/v1/jobs/{job_id}").status_code != 200:
        assert time.monotonic() - restored_at < 10, "the service did not recover within 10 s"
        time.sleep(0.1)
    recovered = time.monotonic() - restored_at
    for _ in range(4):  # both processes, every kind of request
        assert web.get(f"/api/v1/jobs/{job_id}").json()["status"] == "queued"
        assert web.get(f"/jobs/{job_id}").status_code == 200
        assert web.get("/healthz").json()["status"] == "ok"
    assert web.submit().status_code == 202 and web.submit().status_code == 202
    print(f"slowest answer during the cut {slowest:.3f} s; recovered {recovered:.3f} s after restore")

    # The submissions refused during the cut left no job: their inputs were stored before the
    # database refused the row, and those folders without a row are swept once they are old.
    assert web.count_jobs() == 3
    orphans = job_folders(web.storage) - folders_before
    assert len(orphans) == 5  # three refused (two API calls, the form), two accepted after the restore
    engine = make_engine(web.database_url)
    try:
        swept = purge_orphans(session_factory(engine), web.storage, now=utcnow() + timedelta(days=2))
    finally:
        engine.dispose()
    assert swept == 3
    assert len(job_folders(web.storage) - folders_before) == 2

    log = web.log.read_text()  # one line for each refused request (/healthz says why itself)
    assert "Traceback" not in log, log[-3000:]
    assert log.count("event=database-unavailable") == refused


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never says a word: a host that hangs."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept():
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()
    for sock in held:
        sock.close()


def test_a_database_host_that_hangs_fails_a_connection_within_seconds(silent_server):
    engine = make_engine(f"postgresql://impasto@127.0.0.1:{silent_server}/impasto")
    began = time.monotonic()
    with pytest.raises(OperationalError):
        with engine.connect():
            pass
    engine.dispose()
    assert time.monotonic() - began < 10


def test_a_connection_whose_ping_fails_is_replaced(postgres_url, monkeypatch):
    """psycopg reports a connection reset in the middle of the ping as ProgrammingError; the
    pool must still take it for a dead connection and open a new one."""
    engine = make_engine(postgres_url)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    failures = []

    def broken_ping(dbapi_connection):
        failures.append(dbapi_connection)
        raise psycopg.ProgrammingError("can't change 'autocommit' now: connection in transaction status ACTIVE")

    monkeypatch.setattr(engine.dialect, "do_ping", broken_ping)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
        assert connection.connection.dbapi_connection is not failures[0]
    assert len(failures) == 1  # a fresh connection is not pinged
    engine.dispose()


def test_a_full_pool_answers_503_with_retry_after(make_settings):
    settings = make_settings()
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    services = dataclasses.replace(Services.from_settings(settings), sessions=session_factory(engine))
    client = create_app(services=services).test_client()
    with engine.connect():  # every connection in use: the next request cannot have one
        api = client.get("/api/v1/jobs/nosuchjob")
        page = client.get("/jobs/nosuchjob")
    assert api.status_code == 503 and api.headers["Retry-After"] == "5"
    assert api.get_json()["error"]["code"] == "unavailable"
    assert page.status_code == 503 and page.headers["Retry-After"] == "5"
    assert page.mimetype == "text/html" and "cannot be reached" in page.get_data(as_text=True)
    assert client.get("/api/v1/jobs/nosuchjob").status_code == 404  # a connection is free again
    engine.dispose()


def test_an_unreachable_image_store_answers_503_not_500(make_settings, monkeypatch):
    """S3 down (nothing listens at its address): a submission cannot store its images."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # boto3's retries would only make the test slow
    settings = make_settings(
        IMPASTO_STORAGE_URL="s3://impasto/jobs", IMPASTO_S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"
    )
    upgrade(settings.database_url)
    client = create_app(settings).test_client()
    fields = {"size": "64", "iterations": "10", "weights": "random"}
    with open(PHOTO, "rb") as photo, open(PAINTING, "rb") as painting:
        api = client.post("/api/v1/jobs", data={**fields, "content": (photo, "p.jpg"), "style": (painting, "s.jpg")})
    assert api.status_code == 503 and api.headers["Retry-After"] == "5"
    assert api.get_json()["error"] == {
        "code": "unavailable",
        "field": None,
        "message": "the image storage cannot be reached right now; try again in a minute",
    }
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").get_data(as_text=True))[1]
    with open(PHOTO, "rb") as photo:
        page = client.post(
            "/jobs",
            data={**fields, "csrf_token": token, "content": (photo, "p.jpg"), "style_preset": "starry_night"},
            content_type="multipart/form-data",
        )
    assert page.status_code == 503 and page.mimetype == "text/html"
    assert "image storage cannot be reached" in page.get_data(as_text=True)
