"""Job state changes: each one atomic, so a second delivery or a late cancel changes nothing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.db import make_engine, session_factory
from shared.jobs import (
    JobError,
    add_snapshot,
    claim_job,
    create_job,
    fail_unclaimed,
    finish_job,
    hand_back,
    heartbeat,
    queue_position,
    recent_jobs,
    record_progress,
    record_weights,
    request_cancel,
)
from shared.migrate import upgrade
from shared.models import Job, Snapshot
from shared.params import StyleParams

INPUTS = {
    "content": {"key": "jobs/x/inputs/0-content.png", "name": "photo.png"},
    "styles": [],
    "style_preset": "starry_night",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request, tmp_path):
    url = (
        f"sqlite:///{tmp_path / 'impasto.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    )
    upgrade(url)
    engine = make_engine(url)
    yield session_factory(engine)
    engine.dispose()


def new_job(sessions, owner=None, **params):
    with sessions() as session:
        return create_job(session, params=StyleParams(**params).model_dump(mode="json"), inputs=INPUTS, owner=owner)


def fetch(sessions, job_id):
    with sessions() as session:
        return session.get(Job, job_id)


def test_a_job_is_claimed_once(sessions):
    job = new_job(sessions, iterations=10)
    assert len(job.id) >= 22 and job.status == "queued" and job.iterations == 10
    with ThreadPoolExecutor(4) as pool:  # four deliveries of the same message at once
        won = list(pool.map(lambda n: claim_job(sessions(), job.id, f"w{n}"), range(4)))
    assert sorted(won) == [False, False, False, True]
    stored = fetch(sessions, job.id)
    assert stored.status == "running" and stored.attempts == 1 and stored.started_at is not None
    assert stored.worker == f"w{won.index(True)}"


def test_progress_reports_cancel_and_only_the_holder_writes(sessions):
    job = new_job(sessions, iterations=10)
    with sessions() as session:
        assert claim_job(session, job.id, "w1")
        assert record_progress(session, job.id, 3, {"total": 1.5}, "w1") is False
        assert record_progress(session, job.id, 4, {"total": 1.0}, "someone-else") is None
    with sessions() as session:
        request_cancel(session, job.id)
        assert record_progress(session, job.id, 5, {"total": 0.9}, "w1") is True
    stored = fetch(sessions, job.id)
    assert (stored.iteration, stored.losses, stored.status) == (5, {"total": 0.9}, "running")


def test_finish_is_guarded_by_the_status_and_the_worker(sessions):
    job = new_job(sessions, iterations=10)
    with sessions() as session:
        claim_job(session, job.id, "w1")
        assert not finish_job(session, job.id, "w2", "succeeded")
        add_snapshot(session, job.id, 5, "jobs/x/snapshots/000005.png", {"total": 2.0})
        add_snapshot(session, job.id, 5, "jobs/x/snapshots/000005b.png", {"total": 1.0})  # replaces
        assert finish_job(
            session,
            job.id,
            "w1",
            "succeeded",
            iteration=10,
            losses={"total": 0.5},
            output_key="jobs/x/output.png",
            weights="random",
            weights_warning="w",
        )
        assert not finish_job(session, job.id, "w1", "failed", error=JobError("late", "too late"))
    stored = fetch(sessions, job.id)
    assert stored.status == "succeeded" and stored.output_key == "jobs/x/output.png" and stored.error_code is None
    assert stored.finished_at >= stored.started_at >= stored.created_at
    assert stored.weights == "random" and stored.iteration == 10
    with sessions() as session:
        snapshots = session.query(Snapshot).filter_by(job_id=job.id).all()
    assert [(s.iteration, s.key) for s in snapshots] == [(5, "jobs/x/snapshots/000005b.png")]


def test_cancel_a_queued_job_ends_it_at_once(sessions):
    job = new_job(sessions)
    with sessions() as session:
        assert request_cancel(session, job.id).status == "canceled"
        assert not claim_job(session, job.id, "w1")  # its message arrives later: nothing runs
        assert request_cancel(session, "no-such-job") is None


def test_a_job_that_cannot_run_fails_with_its_code(sessions):
    job = new_job(sessions)
    with sessions() as session:
        assert fail_unclaimed(session, job.id, JobError("queue_unavailable", "try again"))
    stored = fetch(sessions, job.id)
    assert (stored.status, stored.error_code) == ("failed", "queue_unavailable")


def test_queue_position_and_recent_jobs(sessions):
    jobs = [new_job(sessions, owner="key:a") for _ in range(3)]
    someone_elses = new_job(sessions, owner="key:b")
    with sessions() as session:
        claim_job(session, jobs[0].id, "w1")
        positions = [queue_position(session, fetch(sessions, j.id)) for j in jobs]
        listed, total = recent_jobs(session, owner="key:a", limit=2)
        theirs, their_total = recent_jobs(session, owner="key:b", limit=2)
    assert positions == [None, 0, 1]
    assert total == 3 and [j.id for j in listed] == [jobs[2].id, jobs[1].id]
    assert their_total == 1 and [j.id for j in theirs] == [someone_elses.id]


def test_a_job_handed_back_goes_to_the_queue_or_to_canceled_if_its_owner_asked(sessions):
    from shared.jobs import hand_back

    kept, canceled = new_job(sessions), new_job(sessions)
    with sessions() as session:
        for job in (kept, canceled):
            claim_job(session, job.id, "w1")
        request_cancel(session, canceled.id)
        assert hand_back(session, kept.id, "someone-else") is None  # not theirs to hand back
        assert hand_back(session, kept.id, "w1") == "queued"
        assert hand_back(session, canceled.id, "w1") == "canceled"
    assert fetch(sessions, kept.id).worker is None and fetch(sessions, canceled.id).finished_at is not None


def test_a_stale_claim_writes_nothing_even_under_the_same_worker_name(sessions):
    """Fencing: the same process (same name) claims a job twice, as when its lease expired while
    it was paused and the requeued job came back to it. Every write made under the first claim is
    refused; the second claim's go through."""
    from sqlalchemy import update

    job = new_job(sessions, iterations=10)
    with sessions() as session:
        assert claim_job(session, job.id, "w1")
        assert add_snapshot(session, job.id, 2, "jobs/x/attempt-1/snapshots/000002.png", None, worker="w1", attempt=1)
        # The lease expired: the reconciler requeues the job, and the same worker claims it again.
        session.execute(update(Job).where(Job.id == job.id).values(status="queued", worker=None))
        session.commit()
        assert claim_job(session, job.id, "w1")
        assert fetch(sessions, job.id).attempts == 2
        assert not heartbeat(session, job.id, "w1", attempt=1)
        assert record_progress(session, job.id, 7, {"total": 9.0}, "w1", attempt=1) is None
        assert not record_weights(session, job.id, "w1", "random", "stale", attempt=1)
        assert not add_snapshot(
            session, job.id, 4, "jobs/x/attempt-1/snapshots/000004.png", None, worker="w1", attempt=1
        )
        assert not add_snapshot(
            session, job.id, 2, "jobs/x/attempt-1/snapshots/000002b.png", None, worker="w1", attempt=1
        )
        assert hand_back(session, job.id, "w1", attempt=1) is None
        assert not finish_job(session, job.id, "w1", "succeeded", output_key="jobs/x/attempt-1/output.png", attempt=1)
        assert record_progress(session, job.id, 3, {"total": 1.0}, "w1", attempt=2) is False
        assert add_snapshot(session, job.id, 3, "jobs/x/attempt-2/snapshots/000003.png", None, worker="w1", attempt=2)
        assert finish_job(session, job.id, "w1", "succeeded", output_key="jobs/x/attempt-2/output.png", attempt=2)
    stored = fetch(sessions, job.id)
    assert (stored.status, stored.iteration, stored.output_key) == ("succeeded", 3, "jobs/x/attempt-2/output.png")
    assert stored.weights_warning is None
    with sessions() as session:
        snapshots = session.query(Snapshot).filter_by(job_id=job.id).order_by(Snapshot.iteration).all()
        assert [(s.iteration, s.key) for s in snapshots] == [
            (2, "jobs/x/attempt-1/snapshots/000002.png"),  # made while the first claim held the job
            (3, "jobs/x/attempt-2/snapshots/000003.png"),
        ]
