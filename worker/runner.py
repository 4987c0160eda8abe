"""One job from its row to its output: the plain object behind the Celery task.

It claims the job (a second delivery of the same job does nothing), runs the engine, writes
progress a few times a second, stores each snapshot with its row, stores the output, and
records success, failure (a code and a message a person can act on) or cancellation.
Testable without Celery: give it sessions, storage and settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from shared.clips import SEGMENT, settle_clip
from shared.db import database_unreachable, describe_db_error
from shared.flags import describe_invalid
from shared.images import ImageError, decode_image, decode_mask
from shared.jobs import (
    JobError,
    claim_job,
    finish_job,
    hand_back,
    latest_snapshot,
    record_weights,
)
from shared.metrics import MetricsUnavailable, Recorder
from shared.models import FAILED, QUEUED, RUNNING, Job
from shared.params import StyleParams
from shared.settings import Settings
from shared.storage import MissingObject, Storage
from worker.clips import run_segment

from .failures import JobFailed, classify, release_gpu_memory
from .heartbeat import MetricsHeartbeat, worker_name
from .lease import Lease, ProgressWriter
from .results import store_result, store_snapshot
from .weights import preload_weights, weights_for_job

log = logging.getLogger("impasto.worker")

# Waits between tries of a database write while the database is unreachable.
DB_RETRY_WAITS_S = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class Attempt:
    """The job a process runs now: named in its heartbeat, counted for /metrics when it ends."""

    job_id: str
    queue: str
    number: int = 0  # the job's attempt count at the claim: every write for the job names it (fencing)
    started: float = field(default_factory=time.perf_counter)  # at the claim
    resumed_at: int = 0  # the iteration it went on from; the ones before are an earlier attempt's


@dataclass
class JobRunner:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    device: str | None = None  # None: the GPU if there is one
    # Sends a handed-back job to the queue again (the Celery app's enqueue); None: no re-send.
    requeue: Callable[[str], None] | None = None
    # Where finished jobs and this process's heartbeats are counted for /metrics; None: nowhere.
    metrics: Recorder | None = None
    attempt: Attempt | None = None  # None: idle
    # Loaded weights by spec, kept for the life of the process (not an `auto` that fell back to
    # random weights: a later job tries ImageNet's again).
    _weights: dict[str, Any] = field(default_factory=dict)
    # Style Gram matrices of recent jobs (worker.engine.targets.TargetCache), made on first use.
    _targets: Any = None
    _heartbeat: MetricsHeartbeat | None = None

    def weights(self, spec: str) -> Any:
        """The weights a job asks for (worker/weights.py), kept for the life of the process."""
        return weights_for_job(self._weights, spec, strict=self.settings.strict_weights)

    def preload(self, spec: str) -> None:
        """At a pool process's start, the ImageNet weights `spec` may use, if they are on disk."""
        preload_weights(self._weights, spec, strict=self.settings.strict_weights)

    def targets_cache(self) -> Any:
        """The process's cache of style targets: the next job with a preset style skips that work."""
        from worker.engine.targets import TargetCache

        if self._targets is None:
            self._targets = TargetCache()
        return self._targets

    def run(self, job_id: str, should_abort: Callable[[], bool] = lambda: False) -> str | None:
        """Run the job if it is still queued; returns its final status, or None if someone
        else had it (or has it now)."""
        worker = worker_name()
        if should_abort():  # this worker is stopping: leave the job to another
            if self.requeue is not None:
                self.requeue(job_id)
            return None
        job = self.db(lambda session: self._claim(session, job_id, worker), job_id)
        if job is None:
            log.info("job=%s event=skipped reason=not-queued", job_id)
            return None
        return self._attempt(job, worker, should_abort)

    def _attempt(self, job: Job, worker: str, should_abort: Callable[[], bool]) -> str | None:
        """One attempt at a claimed job, under its lease; its status, or None once the job is
        another attempt's or the database cannot record the end."""
        job_id, number = job.id, job.attempts
        log.info("job=%s event=started worker=%s attempt=%d", job_id, worker, number)
        attempt = Attempt(job_id, job.queue or self.settings.gpu_queue, number)
        self._now_running(attempt)
        # The time limit counts from the claim, as Celery's backstop limits do from the task's start.
        deadline = time.monotonic() + self.settings.job_time_limit
        lease = Lease(self, job_id, worker, number)
        lease.start()
        failure: str | None = None  # the code of a failure already logged
        try:
            status = self._work(job, worker, number, should_abort, lease, deadline)
        except JobFailed as failed:
            status = self._failed(job_id, worker, number, failed)
            failure = failed.error.code
        except (SystemExit, KeyboardInterrupt):
            self.hand_back(job_id, worker, number)
            raise
        except BaseException as err:
            status, failure = self._crashed(job_id, worker, number, err), "crashed"
        finally:
            lease.stop()
            self._now_running(None)
            if job.parent_id is not None:  # the clip's status follows its segments'
                self.db(lambda session: settle_clip(session, job.parent_id), job_id)
        if failure == "out_of_memory" and status == FAILED:  # now that the failed job's frames are gone
            release_gpu_memory()
        elif failure is None and status is not None:
            log.info("job=%s event=%s seconds=%.2f", job_id, status, time.perf_counter() - attempt.started)
        return status

    def _work(self, job: Job, worker: str, number: int, should_abort, lease: Lease, deadline: float) -> str | None:
        if job.kind == SEGMENT:  # a run of a clip's frames (worker/clips.py)
            return run_segment(
                self, job.id, worker, number, params_of(job.params), job.inputs, job.parent_id or "",
                should_abort, lease, deadline, job.iteration,
            )  # fmt: skip
        return self._run(job.id, worker, number, params_of(job.params), job.inputs, should_abort, lease, deadline)

    def _failed(self, job_id: str, worker: str, number: int, failed: JobFailed) -> str | None:
        """A failure the runner expected by name: recorded with its code; None if refused."""
        if not self.finish(job_id, worker, number, FAILED, error=failed.error):
            return None
        log.warning("job=%s event=failed code=%s message=%r", job_id, failed.error.code, str(failed))
        return FAILED

    def _crashed(self, job_id: str, worker: str, number: int, err: BaseException) -> str | None:
        """A failure nobody expected: recorded as classified; raised again when it is a bug or
        has left this process unusable."""
        if database_unreachable(err):  # for longer than settings.db_retry: nothing can be recorded
            log.error(
                "job=%s event=abandoned reason=database-unreachable error=%r; the job goes on from its "
                "latest snapshot once its lease expires",
                job_id,
                describe_db_error(err),
            )
            return None
        code, message = classify(err)
        self.finish(job_id, worker, number, FAILED, error=JobError(code, message))
        log.exception("job=%s event=failed code=%s", job_id, code)
        if code in ("timeout", "out_of_memory"):
            # Celery's backstop limit interrupted torch from a signal handler, or an allocation
            # failed somewhere inside torch's native code: this process may be left unusable
            # (a half-built oneDNN primitive, a fragmented heap), so it ends and the pool
            # starts a fresh one for the next job.
            log.warning("job=%s event=process-recycled reason=%s", job_id, code)
            raise SystemExit(1) from err
        if code == "internal_error" or not isinstance(err, Exception):
            raise err  # a bug: logged with its traceback, recorded, not swallowed
        return FAILED

    @staticmethod
    def _claim(session: Session, job_id: str, worker: str) -> Job | None:
        claimed = claim_job(session, job_id, worker)
        job = session.get(Job, job_id, populate_existing=True)
        # A claim retried after the database went away may already have won the first time.
        if job is None or not (claimed or (job.status == RUNNING and job.worker == worker)):
            return None
        return job

    def _run(
        self,
        job_id: str,
        worker: str,
        number: int,
        params: StyleParams,
        inputs: dict[str, Any],
        should_abort: Callable[[], bool],
        lease: Lease,
        deadline: float,
    ) -> str | None:
        """The job's final status; None when the lease was lost (another attempt has the job)."""
        content = self.image(inputs["content"])
        styles = [self.image(style) for style in inputs["styles"]]
        masks = [self.image(mask, decode_mask) for mask in inputs.get("style_masks", ())] or None
        pictures = (content, styles, masks)

        from worker.engine import EngineError, WeightsError, resolve_device

        try:
            device = resolve_device(self.device)
            weights = self.weights(params.weights)
        except WeightsError as err:
            raise JobFailed("weights_unavailable", str(err)) from None
        except EngineError as err:
            raise JobFailed("bad_parameters", str(err)) from None
        if not self.db(
            lambda session: record_weights(session, job_id, worker, weights.source, weights.warning, attempt=number),
            job_id,
        ):
            return self.lease_lost(job_id, worker, number, "start")
        resume = self._resume_point(job_id, params)
        if resume is not None and self.attempt is not None:
            self.attempt.resumed_at = resume.iteration
        progress = ProgressWriter(self.sessions, job_id, worker, number, lease)
        # The time limit is kept here, between iterations; Celery's limits only back it up.
        timed_out = lambda: time.monotonic() > deadline  # noqa: E731
        should_stop = lambda: progress.cancel_requested or lease.lost or should_abort() or timed_out()  # noqa: E731
        run = (params, pictures, weights, device, resume)
        result = self._paint(job_id, worker, number, run, progress, lease, should_stop)
        if lease.lost:  # the lease expired and the job went to another attempt: leave it be
            return self.lease_lost(job_id, worker, number, "run")
        if result.canceled and should_abort() and not progress.cancel_requested:
            self.hand_back(job_id, worker, number)  # stopped by a worker shutdown, not by its owner
            return QUEUED
        return store_result(self, job_id, worker, number, params, result, progress.cancel_requested)

    def _paint(self, job_id, worker, number, run, progress, lease, should_stop):
        """The engine's run of the job: progress and snapshots written as they come; its Result."""
        import torch

        from worker.engine import EngineError, Progress, Result, Snapshot, stylize

        params, (content, styles, masks), weights, device, resume = run
        result = None
        targets = self.targets_cache()
        reused, computed = targets.hits, targets.misses
        try:
            for event in stylize(
                content,
                styles,
                params,
                device=device,
                weights=weights,
                resume=resume,
                targets_cache=targets,
                style_masks=masks,
                should_stop=should_stop,
            ):
                if isinstance(event, Progress):
                    progress.update(event)
                elif isinstance(event, Snapshot) and not event.final and not lease.lost:
                    store_snapshot(self, job_id, worker, number, event, lease)
                elif isinstance(event, Result):
                    result = event
        except EngineError as err:
            raise JobFailed("bad_parameters", str(err)) from None
        except torch.OutOfMemoryError:
            raise JobFailed(
                "out_of_memory", f"the GPU ran out of memory at size {params.size}; submit again with a smaller size"
            ) from None
        assert result is not None
        # A sweep's cells share their style targets when they run on the same worker process.
        log.info(
            "job=%s event=style-targets computed=%d reused=%d", job_id, targets.misses - computed, targets.hits - reused
        )
        return result

    def lease_lost(self, job_id: str, worker: str, number: int, stage: str) -> None:
        log.warning("job=%s event=lease-lost worker=%s attempt=%d stage=%s", job_id, worker, number, stage)

    def _resume_point(self, job_id: str, params: StyleParams) -> Any:
        """The latest snapshot of an earlier attempt, to go on from; None: start afresh."""
        from worker.engine import Resume

        snapshot = self.db(lambda session: latest_snapshot(session, job_id), job_id)
        if snapshot is None or not 0 < snapshot.iteration <= params.iterations:
            return None
        try:
            image = decode_image(self.storage.get(snapshot.key), name="the latest snapshot")
        except (MissingObject, ImageError) as err:
            log.warning("job=%s event=resume-skipped reason=%r", job_id, str(err))
            return None
        log.info("job=%s event=resumed iteration=%d", job_id, snapshot.iteration)
        return Resume(snapshot.iteration, image)

    def db(self, write: Callable[[Session], Any], job_id: str) -> Any:
        """Run `write` in a session, retrying while the database is unreachable, for up to
        settings.db_retry seconds: a database that restarts or fails over costs a pause, not the job."""
        deadline = time.monotonic() + self.settings.db_retry
        for attempt in range(1_000_000):
            try:
                with self.sessions() as session:
                    return write(session)
            except Exception as err:
                wait = DB_RETRY_WAITS_S[min(attempt, len(DB_RETRY_WAITS_S) - 1)]
                if not database_unreachable(err) or time.monotonic() + wait > deadline:
                    raise
                log.warning("job=%s event=db-retry attempt=%d error=%r", job_id, attempt + 1, describe_db_error(err))
                time.sleep(wait)
        raise AssertionError("unreachable")

    def image(self, item: dict[str, str], decode: Callable[..., Any] = decode_image):
        """An input from storage, decoded (`decode_mask` for a style mask)."""
        try:
            data = self.storage.get(item["key"])
        except MissingObject:
            raise JobFailed(
                "input_missing",
                f"the uploaded image {item.get('name') or ''} is no longer in storage; submit the job again",
            ) from None
        try:
            return decode(data, name=item.get("name") or "an input image", max_pixels=self.settings.max_pixels)
        except ImageError as err:
            raise JobFailed("bad_input", str(err)) from None

    def hand_back(self, job_id: str, worker: str, number: int) -> None:
        """The worker is stopping: the job goes back to the queue for another worker."""
        status = self.db(lambda session: hand_back(session, job_id, worker, attempt=number), job_id)
        log.warning("job=%s event=handed-back worker=%s status=%s", job_id, worker, status)
        if status == QUEUED and self.requeue is not None:
            self.requeue(job_id)

    def finish(self, job_id: str, worker: str, number: int, status: str, **fields: Any) -> bool:
        """Record the end; False (logged `lease-lost`) when this attempt no longer holds the job."""
        if not self.db(lambda session: finish_job(session, job_id, worker, status, attempt=number, **fields), job_id):
            self.lease_lost(job_id, worker, number, f"finish-{status}")
            return False
        self._count(job_id, status, fields.get("iteration"))
        return True

    def _count(self, job_id: str, status: str, iteration: int | None) -> None:
        """Add the ended job to /metrics' histograms: a broker outage costs the figure, never the job."""
        attempt = self.attempt
        if self.metrics is None or attempt is None or attempt.job_id != job_id:
            return
        seconds = time.perf_counter() - attempt.started
        done = (iteration or 0) - attempt.resumed_at  # iteration None: it failed, no rate to tell
        try:
            self.metrics.observe_job(
                status=status,
                queue=attempt.queue,
                seconds=seconds,
                iterations_per_second=done / seconds if done > 0 and seconds > 0 else None,
            )
        except MetricsUnavailable as err:
            log.warning("job=%s event=metrics-failed error=%r", job_id, str(err))

    def _now_running(self, attempt: Attempt | None) -> None:
        self.attempt = attempt
        if self._heartbeat is not None:  # /metrics shows the process busy or idle at once
            self._heartbeat.poke()

    def start_heartbeat(self, node: str | None = None) -> None:
        """Tell /metrics every WORKER_HEARTBEAT_S that this process is alive (`node`: its Celery
        worker's name); a pool process calls this after the fork, as CUDA may be touched."""
        if self.metrics is not None and self._heartbeat is None:
            self._heartbeat = MetricsHeartbeat(self, node)
            self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        """This process stops on purpose: its heartbeat goes from /metrics."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None


def params_of(stored: dict[str, Any]) -> StyleParams:
    try:
        return StyleParams(**stored)
    except ValidationError as err:  # stored by an older or newer version with other rules
        raise JobFailed("bad_parameters", describe_invalid(err)) from None
