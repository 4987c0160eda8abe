"""The job runner, without Celery: from a queued row to stored snapshots and an output."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import pytest
from PIL import Image

from shared.db import make_engine, session_factory
from shared.jobs import request_cancel
from shared.migrate import upgrade
from shared.models import Job
from shared.storage import LocalStorage
from tests.conftest import PHOTO
from tests.helpers import queue_job
from worker.failures import classify
from worker.lease import EtaEstimate
from worker.runner import JobRunner


@pytest.fixture
def runner(make_settings):
    settings = make_settings()
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    yield JobRunner(settings, session_factory(engine), LocalStorage(settings.data_dir / "storage"), device="cpu")
    engine.dispose()


def row(runner, job_id) -> Job:
    with runner.sessions() as session:
        job = session.get(Job, job_id)
        _ = job.snapshots  # load them while the session is open
        return job


def test_a_job_runs_to_success_with_snapshots_and_an_output(runner):
    job_id = queue_job(runner)
    assert runner.run(job_id) == "succeeded"
    job = row(runner, job_id)
    assert (job.status, job.iteration, job.attempts, job.weights) == ("succeeded", 8, 1, "random")
    assert job.error_code is None and job.finished_at and job.losses["total"] > 0
    assert [s.iteration for s in job.snapshots] == [2, 4, 6]
    for snapshot in job.snapshots:
        assert Image.open(io.BytesIO(runner.storage.get(snapshot.key))).format == "PNG"
    output = Image.open(io.BytesIO(runner.storage.get(job.output_key)))
    assert output.format == "PNG" and max(output.size) == 48


def test_a_second_delivery_does_nothing(runner):
    job_id = queue_job(runner)
    assert runner.run(job_id) == "succeeded"
    assert runner.run(job_id) is None
    assert row(runner, job_id).attempts == 1


def test_a_cancel_stops_the_job_between_iterations(runner, monkeypatch):
    job_id = queue_job(runner, iterations=500, snapshot_every=0)
    calls = []

    def cancel_after_a_few() -> bool:  # the web tier's cancel, arriving while the job runs
        calls.append(1)
        if len(calls) == 3:
            with runner.sessions() as session:
                request_cancel(session, job_id)
        return False

    monkeypatch.setattr("worker.lease.PROGRESS_INTERVAL_S", 0.0)  # read the flag at every iteration
    assert runner.run(job_id, should_abort=cancel_after_a_few) == "canceled"
    job = row(runner, job_id)
    assert job.status == "canceled" and 1 <= job.iteration < 10 and job.output_key


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        ("not an image", "bad_input", "not an image that can be read"),
        ("missing", "input_missing", "no longer in storage"),
    ],
)
def test_bad_inputs_fail_with_a_code(runner, change, code, says):
    job_id = queue_job(runner, content=b"<svg></svg>" if change == "not an image" else PHOTO.read_bytes())
    if change == "missing":
        runner.storage.delete("jobs/t/inputs/0-content.jpg")
    assert runner.run(job_id) == "failed"
    job = row(runner, job_id)
    assert job.error_code == code and says in job.error_message and job.finished_at


def test_strict_weights_refuse_the_random_fallback(make_settings):
    settings = make_settings(IMPASTO_STRICT_WEIGHTS=1)
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    strict = JobRunner(settings, session_factory(engine), LocalStorage(settings.data_dir / "storage"), device="cpu")
    job_id = queue_job(strict, weights="auto")
    assert strict.run(job_id) == "failed"
    job = row(strict, job_id)
    engine.dispose()
    assert job.error_code == "weights_unavailable" and "IMPASTO_VGG_WEIGHTS" in job.error_message


def test_a_weights_path_in_a_stored_job_is_refused(runner):
    job_id = queue_job(runner)
    with runner.sessions() as session:  # a row written by something other than the web tier
        job = session.get(Job, job_id)
        job.params = {**job.params, "weights": "/etc/passwd"}
        session.commit()
    assert runner.run(job_id) == "failed"
    assert row(runner, job_id).error_code == "bad_parameters"


def test_stored_params_that_no_longer_validate_fail_with_a_code(runner):
    job_id = queue_job(runner)
    with runner.sessions() as session:
        job = session.get(Job, job_id)
        job.params = {**job.params, "style_layers": ["conv9_9"]}
        session.commit()
    assert runner.run(job_id) == "failed"
    job = row(runner, job_id)
    assert job.error_code == "bad_parameters" and "conv9_9" in job.error_message


def test_a_stopping_worker_hands_its_job_back(runner):
    job_id = queue_job(runner, iterations=12)  # stopped at its third poll, long before the end
    requeued = []
    runner.requeue = requeued.append
    calls = []

    def shutdown_after_a_few() -> bool:  # as billiard raises SystemExit in a pool process on SIGTERM
        calls.append(1)
        if len(calls) == 3:
            raise SystemExit(0)
        return False

    with pytest.raises(SystemExit):
        runner.run(job_id, should_abort=shutdown_after_a_few)
    job = row(runner, job_id)
    assert (job.status, job.worker, job.attempts) == ("queued", None, 1)
    assert requeued == [job_id]
    assert runner.run(job_id) == "succeeded" and row(runner, job_id).attempts == 2


def test_a_job_interrupted_goes_on_from_its_latest_snapshot(runner, caplog):
    job_id = queue_job(runner, iterations=12, snapshot_every=2)
    polls = []

    def stop_after_five_iterations() -> bool:  # a worker shutting down, polled once per iteration
        polls.append(1)
        return len(polls) > 6

    assert runner.run(job_id, should_abort=stop_after_five_iterations) == "queued"
    interrupted = row(runner, job_id)
    assert interrupted.status == "queued" and [s.iteration for s in interrupted.snapshots] == [2, 4]
    caplog.set_level("INFO", logger="impasto.worker")
    assert runner.run(job_id) == "succeeded"
    job = row(runner, job_id)
    assert "event=resumed iteration=4" in caplog.text
    assert (job.iteration, job.attempts) == (12, 2)
    assert [s.iteration for s in job.snapshots] == [2, 4, 6, 8, 10]


def test_a_missing_snapshot_means_starting_afresh_not_failing(runner, caplog):
    job_id = queue_job(runner, iterations=8, snapshot_every=2)
    polls = []
    runner.run(job_id, should_abort=lambda: polls.append(1) or len(polls) > 4)
    for snapshot in row(runner, job_id).snapshots:
        runner.storage.delete(snapshot.key)
    caplog.set_level("INFO", logger="impasto.worker")
    assert runner.run(job_id) == "succeeded"
    assert "event=resume-skipped" in caplog.text and row(runner, job_id).iteration == 8


def test_the_lease_is_renewed_and_a_worker_that_lost_the_job_notices(runner):
    from worker.lease import Lease

    job_id = queue_job(runner)
    with runner.sessions() as session:
        from shared.jobs import claim_job

        assert claim_job(session, job_id, "me")
    before = row(runner, job_id).heartbeat_at
    lease = Lease(runner, job_id, "me", 1)
    assert lease.renew() and row(runner, job_id).heartbeat_at > before
    with runner.sessions() as session:
        request_cancel(session, job_id)
    assert lease.renew()  # canceled but still running here: the worker finishes the cancel
    lease_of_another = Lease(runner, job_id, "someone-else", 1)
    assert not lease_of_another.renew() and lease_of_another.lost
    stale_attempt = Lease(runner, job_id, "me", 0)  # the same worker's earlier claim
    assert not stale_attempt.renew() and stale_attempt.lost


def test_the_next_job_with_the_same_style_reuses_its_targets(runner):
    assert runner.run(queue_job(runner)) == "succeeded"
    cache = runner.targets_cache()
    assert cache.hits == 0 and len(cache) > 0
    assert runner.run(queue_job(runner, iterations=4)) == "succeeded"
    assert cache.hits == len(cache)


@pytest.mark.parametrize(
    "error, code",
    [
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried "
                "to allocate 805306368 bytes"
            ),
            "out_of_memory",
        ),
        (RuntimeError("std::bad_alloc"), "out_of_memory"),
        (RuntimeError("CUDA error: out of memory"), "out_of_memory"),
        (MemoryError(), "out_of_memory"),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), "internal_error"),
        (ValueError("out of memory"), "internal_error"),  # not torch's way of saying it
    ],
)
def test_unexpected_failures_are_classified_by_what_they_say(error, code):
    assert classify(error)[0] == code


def progress(iteration, scale=1, scales=1, size=(48, 36), iterations=40):
    """A Progress event as the engine yields it (only the fields the ETA reads)."""
    return SimpleNamespace(iteration=iteration, iterations=iterations, scale=scale, scales=scales, size=size)


def test_the_eta_weighs_the_finer_scales_still_to_come():
    eta = EtaEstimate()
    # Coarse scale 1 of 2 at 32x24, one second an iteration; 40 iterations split 10 and 30.
    left = [eta.seconds_left(progress(i, 1, 2, (32, 24)), float(i)) for i in range(1, 6)]
    assert left[:3] == [None, None, None]  # not timed enough yet: absent, not a guess
    # At iteration 4: 6 coarse iterations left, then 30 at twice the side (4x the pixels).
    assert left[3] == pytest.approx(6 + 30 * 4)
    assert left[4] == pytest.approx(5 + 30 * 4)
    # The fine scale starts: the coarse scale's rate per pixel stands in until this one is timed.
    assert eta.seconds_left(progress(11, 2, 2, (64, 48)), 11.0) == pytest.approx(29 * 4)
    assert eta.seconds_left(progress(14, 2, 2, (64, 48)), 12.5) == pytest.approx(26 * 0.5)  # measured: 0.5 s


def test_the_eta_survives_a_resume_and_is_absent_until_it_is_known(runner):
    from web.app import create_app

    client = create_app(runner.settings).test_client()
    job_id = queue_job(runner, iterations=30, snapshot_every=2, scales=1)
    polls = []
    runner.run(job_id, should_abort=lambda: polls.append(1) or len(polls) > 13)  # stopped at iteration 12
    seen: list[tuple[float, int, float | None]] = []

    def look() -> bool:  # polled once per iteration by the engine: what a client sees meanwhile
        job = client.get(f"/api/v1/jobs/{job_id}").get_json()
        if job["status"] == "running":
            seen.append((time.monotonic(), job["progress"]["iteration"], job["progress"]["eta_seconds"]))
        return False

    assert runner.run(job_id, should_abort=look) == "succeeded"
    ended = time.monotonic()
    # Where the first attempt's last (throttled) progress write left it, and no estimate: the new
    # attempt has timed nothing, and says nothing rather than something wrong.
    assert seen[0][1] <= 12 and seen[0][2] is None
    known = [(ended - when, eta) for when, iteration, eta in seen if eta is not None and iteration < 26]
    assert len(known) >= 5, seen
    # Not collapsed (an estimate from the attempt's start time and the whole job's iteration count
    # says a fraction of a second here), and not wild: within a factor of 4 of what it took.
    ratios = sorted(eta / actual for actual, eta in known)
    assert 0.25 < ratios[len(ratios) // 2] < 4, (ratios, seen)
