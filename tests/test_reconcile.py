"""The reconciler on real databases and the real Redis: stranded jobs are found and sent again,
each exactly once however many reconcilers run."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import redis
from sqlalchemy import update

from shared.db import make_engine, session_factory
from shared.jobs import claim_job, create_job
from shared.migrate import upgrade
from shared.models import Job, utcnow
from shared.tasks import enqueue_stylize, make_celery
from tests.conftest import SYSTEM_REDIS_URL
from worker.reconcile import reconcile, redis_job_ids

PARAMS = {"iterations": 10, "size": 48}
INPUTS = {"content": {"key": "jobs/x/inputs/0-content.png"}, "styles": [], "style_preset": None}


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request, make_settings):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    settings = make_settings(
        **({"IMPASTO_DATABASE_URL": url} if url else {}),
        IMPASTO_JOB_LEASE=30,
        IMPASTO_MAX_ATTEMPTS=2,
        IMPASTO_ENQUEUE_GRACE=10,
    )
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)
    factory.settings = settings
    yield factory
    engine.dispose()


def new_job(
    sessions,
    *,
    running_for: float | None = None,
    workers_lost: int = 0,
    queued_for: float = 0,
    cancel_requested: bool = False,
) -> str:
    with sessions() as session:
        job_id = create_job(session, params=PARAMS, inputs=INPUTS).id
        if running_for is not None:
            claim_job(session, job_id, "gone:1")
            then = utcnow() - timedelta(seconds=running_for)
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(heartbeat_at=then, attempts=3, workers_lost=workers_lost, cancel_requested=cancel_requested)
            )
        else:
            session.execute(
                update(Job).where(Job.id == job_id).values(enqueued_at=utcnow() - timedelta(seconds=queued_for))
            )
        session.commit()
    return job_id


def get(sessions, job_id) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


def test_running_jobs_whose_lease_expired_go_back_to_the_queue(sessions):
    stale, fresh = new_job(sessions, running_for=60), new_job(sessions, running_for=5)
    sent = []
    with sessions() as session:
        report = reconcile(session, sessions.settings, lambda job_id, queue: sent.append(job_id), set)
    assert report.requeued == [stale] and sent == [stale]
    job = get(sessions, stale)
    assert (job.status, job.worker, job.heartbeat_at) == ("queued", None, None)
    assert get(sessions, fresh).status == "running"


def test_a_job_whose_worker_is_lost_too_often_ends_failed_with_worker_lost(sessions):
    # Three starts, but only one ended with its worker lost (the others were hand-backs): requeued.
    once, twice = new_job(sessions, running_for=60), new_job(sessions, running_for=60, workers_lost=1)
    sent = []
    with sessions() as session:
        report = reconcile(session, sessions.settings, lambda job_id, queue: sent.append(job_id), set)
    assert report.requeued == [once] and report.lost == [twice] and sent == [once]
    assert get(sessions, once).workers_lost == 1
    job = get(sessions, twice)
    assert (job.status, job.error_code, job.workers_lost) == ("failed", "worker_lost", 2)
    assert "lost 2 times" in job.error_message and "smaller size" in job.error_message


def test_a_lost_job_whose_owner_canceled_it_ends_canceled(sessions):
    job_id = new_job(sessions, running_for=60, cancel_requested=True)
    sent = []
    with sessions() as session:
        report = reconcile(session, sessions.settings, lambda job_id, queue: sent.append(job_id), set)
    assert sent == [] and report.requeued == []
    job = get(sessions, job_id)
    assert job.status == "canceled" and job.finished_at is not None


def test_queued_jobs_the_broker_lost_are_sent_again_once(sessions):
    lost, held, _new = new_job(sessions, queued_for=60), new_job(sessions, queued_for=60), new_job(sessions)
    sent = []
    with sessions() as session:
        report = reconcile(session, sessions.settings, lambda job_id, queue: sent.append(job_id), lambda: {held})
    assert report.resent == [lost] and sent == [lost]  # `new` is within its grace period
    with sessions() as session:  # sent just now: not again at the next pass
        assert not reconcile(session, sessions.settings, lambda job_id, queue: sent.append(job_id), lambda: {held})
    assert sent == [lost]


def test_many_reconcilers_at_once_send_each_job_once(sessions):
    jobs = {new_job(sessions, running_for=60) for _ in range(5)} | {new_job(sessions, queued_for=60) for _ in range(5)}
    sent: list[str] = []
    lock = threading.Lock()
    errors = []

    def send(job_id: str, queue: str) -> None:
        with lock:
            sent.append(job_id)

    def one_reconciler() -> None:
        try:
            with sessions() as session:
                reconcile(session, sessions.settings, send, set)
        except Exception as err:  # pragma: no cover - the assertion below reports it
            errors.append(err)

    threads = [threading.Thread(target=one_reconciler) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if sessions.kw["bind"].dialect.name == "sqlite":
        # SQLite has one writer at a time: a reconciler may give up on a locked database and
        # try again at its next pass, but none may send a job twice.
        assert all("locked" in str(e) for e in errors), errors
    else:
        assert errors == []
    assert len(sent) == len(set(sent)) and set(sent) <= jobs
    with sessions() as session:  # whatever a locked reconciler left, the next pass finishes
        reconcile(session, sessions.settings, send, set)
    assert sorted(sent) == sorted(jobs)


def test_redis_job_ids_reads_waiting_and_unacknowledged_messages(make_settings, queue_name):
    app = make_celery(make_settings())
    client = redis.Redis.from_url(SYSTEM_REDIS_URL)
    try:
        enqueue_stylize(app, "first-job", queue_name)
        enqueue_stylize(app, "second-job", queue_name)
        assert {"first-job", "second-job"} <= redis_job_ids(client, [queue_name])
        with app.connection_for_write() as connection:
            queue = connection.SimpleQueue(queue_name)
            taken = queue.get(timeout=5)  # delivered, as to a worker, and not yet acknowledged
            assert client.llen(queue_name) == 1
            assert {"first-job", "second-job"} <= redis_job_ids(client, [queue_name])
            assert {"first-job", "second-job"} <= redis_job_ids(client, [queue_name], delivered_since=time.time() - 60)
            # Taken longer ago than asked for: as if by a worker that died before claiming it.
            later = redis_job_ids(client, [queue_name], delivered_since=time.time() + 60)
            assert len({"first-job", "second-job"} & later) == 1
            taken.ack()
            assert len({"first-job", "second-job"} & redis_job_ids(client, [queue_name])) == 1
            queue.get(timeout=5).ack()
            queue.close()
        assert not {"first-job", "second-job"} & redis_job_ids(client, [queue_name])
    finally:
        client.delete(queue_name)


def test_each_reconciler_pass_also_deletes_expired_jobs(sessions, tmp_path):
    from dataclasses import replace

    from shared.models import SUCCEEDED
    from shared.storage import LocalStorage
    from worker.reconcile import Reconciler

    storage = LocalStorage(tmp_path / "storage")
    old, running = new_job(sessions), new_job(sessions, running_for=1)
    storage.put(f"jobs/{old}/output.png", b"png", "image/png")
    with sessions() as session:
        session.execute(
            update(Job)
            .where(Job.id == old)
            .values(status=SUCCEEDED, finished_at=utcnow() - timedelta(hours=2), output_key=f"jobs/{old}/output.png")
        )
        session.commit()
    settings = replace(sessions.settings, retention=3600)
    Reconciler(settings, sessions, send=lambda job_id, queue: None, broker_job_ids=set, storage=storage).run_once()
    assert get(sessions, old) is None and not storage.exists(f"jobs/{old}/output.png")
    assert get(sessions, running).status == "running"
