"""One job from its row to its output: the plain object behind the Celery task.

It claims the job (a second delivery of the same job does nothing), runs the engine, writes
progress a few times a second, stores each snapshot with its row, stores the output, and
records success, failure (a code and a message a person can act on) or cancellation.
Testable without Celery: give it sessions, storage and settings.
"""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from shared.clips import SEGMENT, settle_clip
from shared.db import database_unreachable, describe_db_error
from shared.flags import describe_invalid
from shared.images import ImageError, decode_image, decode_mask
from shared.jobs import (
    JobError,
    add_snapshot,
    claim_job,
    finish_job,
    hand_back,
    heartbeat,
    latest_snapshot,
    record_progress,
    record_weights,
)
from shared.metrics import WORKER_HEARTBEAT_S, MetricsUnavailable, Recorder
from shared.models import CANCELED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job, utcnow
from shared.params import WEIGHT_CHOICES, StyleParams
from shared.settings import Settings
from shared.storage import MissingObject, Storage, job_key
from worker.clips import run_segment

log = logging.getLogger("impasto.worker")

# Progress goes to the database at most this often; the last iteration is always written.
PROGRESS_INTERVAL_S = 0.25
# Waits between tries of a database write while the database is unreachable.
DB_RETRY_WAITS_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class JobFailed(Exception):
    """A failure with a code and a message for the person who submitted the job."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.error = JobError(code, message)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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
        """The weights a job asks for, loaded when a job first needs them: a job with `random`
        never waits on an ImageNet download. Those that cannot be had fail the job with
        `weights_unavailable`."""
        from worker.engine import WeightsError, load_weights

        if spec not in WEIGHT_CHOICES:  # a job never names a file for the worker to read
            raise JobFailed("bad_parameters", f"weights must be one of {', '.join(WEIGHT_CHOICES)}")
        if self.settings.strict_weights and spec == "auto":
            spec = "imagenet"  # production: never a silent fallback to random weights
        if spec in self._weights:
            return self._weights[spec]
        try:
            loaded = load_weights(spec)
        except WeightsError as err:
            raise JobFailed("weights_unavailable", str(err)) from None
        if not (spec == "auto" and loaded.source == "random"):  # a fallback is tried again next time
            self._weights[spec] = loaded
        return loaded

    def preload(self, spec: str) -> None:
        """At a pool process's start, load the ImageNet weights `spec` may use if they are on this
        machine (a named file, or torchvision's cache), so that the first job does not wait. Never
        a download: only a job that asks for these weights may start one. A file that is there but
        unreadable is logged once, with its reason; jobs that need it fail with `weights_unavailable`."""
        from worker.engine import WeightsError, load_weights
        from worker.engine.errors import WeightsUnavailable

        if spec == "random" or spec not in WEIGHT_CHOICES:
            return
        try:
            loaded = load_weights("imagenet", offline=True)
        except WeightsUnavailable as err:  # nothing here to load: the first job that needs them does
            log.info("event=weights-deferred reason=%r", str(err))
            return
        except WeightsError as err:
            log.error("event=weights-unavailable spec=%s reason=%r", spec, str(err))
            return
        self._weights["imagenet"] = loaded
        if not self.settings.strict_weights or spec == "imagenet":
            self._weights[spec] = loaded
        log.info("event=weights-loaded source=%s", loaded.source)

    def targets_cache(self) -> Any:
        """The process's cache of style targets: the next job with a preset style skips that work."""
        from worker.engine.targets import TargetCache

        if self._targets is None:
            self._targets = TargetCache()
        return self._targets

    def run(self, job_id: str, should_abort: Callable[[], bool] = lambda: False) -> str | None:
        """Run the job if it is still queued; returns its final status, or None if someone
        else had it."""
        worker = worker_name()
        if should_abort():  # this worker is stopping: leave the job to another
            if self.requeue is not None:
                self.requeue(job_id)
            return None
        job = self._db(lambda session: self._claim(session, job_id, worker), job_id)
        if job is None:
            log.info("job=%s event=skipped reason=not-queued", job_id)
            return None
        log.info("job=%s event=started worker=%s attempt=%d", job_id, worker, job.attempts)
        number = job.attempts
        attempt = Attempt(job_id, job.queue or self.settings.gpu_queue, number)
        self._now_running(attempt)
        started = attempt.started
        # The time limit counts from the claim, as Celery's backstop limits do from the task's start.
        deadline = time.monotonic() + self.settings.job_time_limit
        lease = _Lease(self, job_id, worker, number)
        lease.start()
        failed: JobError | None = None
        status: str | None = None
        try:
            if job.kind == SEGMENT:  # a run of a clip's frames (worker/clips.py)
                status = run_segment(
                    self, job_id, worker, number, _params(job.params), job.inputs, job.parent_id or "",
                    should_abort, lease, deadline, job.iteration,
                )  # fmt: skip
            else:
                status = self._run(
                    job_id, worker, number, _params(job.params), job.inputs, should_abort, lease, deadline
                )
        except JobFailed as failure:
            if self._finish(job_id, worker, number, FAILED, error=failure.error):
                log.warning("job=%s event=failed code=%s message=%r", job_id, failure.error.code, str(failure))
                failed = failure.error
        except (SystemExit, KeyboardInterrupt):
            self._hand_back(job_id, worker, number)
            raise
        except BaseException as err:
            if database_unreachable(err):  # for longer than settings.db_retry: nothing can be recorded
                log.error(
                    "job=%s event=abandoned reason=database-unreachable error=%r; the job goes on from its "
                    "latest snapshot once its lease expires",
                    job_id,
                    describe_db_error(err),
                )
                return None
            code, message = _classify(err)
            self._finish(job_id, worker, number, FAILED, error=JobError(code, message))
            log.exception("job=%s event=failed code=%s", job_id, code)
            if code in ("timeout", "out_of_memory"):
                # Celery's backstop limit interrupted torch from a signal handler, or an allocation
                # failed somewhere inside torch's native code: this process may be left unusable
                # (a half-built oneDNN primitive, a fragmented heap), so it ends and the pool
                # starts a fresh one for the next job.
                log.warning("job=%s event=process-recycled reason=%s", job_id, code)
                raise SystemExit(1) from err
            if code == "internal_error" or not isinstance(err, Exception):
                raise  # a bug: logged with its traceback, recorded, not swallowed
            return FAILED
        finally:
            lease.stop()
            self._now_running(None)
            if job.parent_id is not None:  # the clip's status follows its segments'
                self._db(lambda session: settle_clip(session, job.parent_id), job_id)
        if failed is not None:
            if failed.code == "out_of_memory":  # now that the failed job's frames are gone
                _release_gpu_memory()
            return FAILED
        if status is not None:
            log.info("job=%s event=%s seconds=%.2f", job_id, status, time.perf_counter() - started)
        return status

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
        lease: _Lease,
        deadline: float,
    ) -> str | None:
        """The job's final status; None when the lease was lost (another attempt has the job)."""
        content = self._image(inputs["content"])
        styles = [self._image(style) for style in inputs["styles"]]
        masks = [self._image(mask, decode_mask) for mask in inputs.get("style_masks", ())] or None

        import torch

        from worker.engine import EngineError, Progress, Result, Snapshot, WeightsError, resolve_device, stylize

        try:
            device = resolve_device(self.device)
            weights = self.weights(params.weights)
        except WeightsError as err:
            raise JobFailed("weights_unavailable", str(err)) from None
        except EngineError as err:
            raise JobFailed("bad_parameters", str(err)) from None
        if not self._db(
            lambda session: record_weights(session, job_id, worker, weights.source, weights.warning, attempt=number),
            job_id,
        ):
            return self._lease_lost(job_id, worker, number, "start")
        resume = self._resume_point(job_id, params)
        if resume is not None and self.attempt is not None:
            self.attempt.resumed_at = resume.iteration
        progress = _Throttle(self.sessions, job_id, worker, number, lease)
        # The time limit is kept here, between iterations; Celery's limits only back it up.
        timed_out = lambda: time.monotonic() > deadline  # noqa: E731
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
                should_stop=lambda: progress.cancel_requested or lease.lost or should_abort() or timed_out(),
            ):
                if isinstance(event, Progress):
                    progress.update(event)
                elif isinstance(event, Snapshot) and not event.final and not lease.lost:
                    self._snapshot(job_id, worker, number, event, lease)
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
            "job=%s event=style-targets computed=%d reused=%d",
            job_id,
            targets.misses - computed,
            targets.hits - reused,
        )
        if lease.lost:  # the lease expired and the job went to another attempt: leave it be
            return self._lease_lost(job_id, worker, number, "run")
        if result.canceled and should_abort() and not progress.cancel_requested:
            self._hand_back(job_id, worker, number)  # stopped by a worker shutdown, not by its owner
            return QUEUED
        # Under this attempt's own key: a stale attempt's output can never replace a newer one's.
        output_key = job_key(job_id, f"{_attempt_folder(number)}/output.png")
        self.storage.put(output_key, _png(result.image), "image/png")  # kept when stopped early too
        status, error = SUCCEEDED, None
        if result.canceled and progress.cancel_requested:
            status = CANCELED
        elif result.canceled:
            status, error = (
                FAILED,
                JobError(
                    "timeout",
                    (
                        f"the job ran past this service's time limit of {self.settings.job_time_limit} s at iteration "
                        f"{result.iterations} of {params.iterations}; the picture so far is kept. Submit it with fewer "
                        f"iterations or a smaller size"
                    ),
                ),
            )
            log.warning("job=%s event=failed code=timeout iteration=%d", job_id, result.iterations)
        if not self._finish(
            job_id,
            worker,
            number,
            status,
            iteration=result.iterations,
            losses=result.losses.as_dict(),
            output_key=output_key,
            weights=result.weights,
            weights_warning=result.weights_warning,
            error=error,
        ):
            self._discard(job_id, output_key)  # refused: no row names it
            return None
        return status

    def _snapshot(self, job_id: str, worker: str, number: int, event: Any, lease: _Lease) -> None:
        """Store a snapshot under this attempt's key, then its row, guarded by the claim. A refused
        row means the lease is lost: the file is removed, and no resume can ever pick it (a resume
        reads the rows), even if the removal fails."""
        key = job_key(job_id, f"{_attempt_folder(number)}/snapshots/{event.iteration:06d}.png")
        self.storage.put(key, _png(event.image), "image/png")
        if not self._db(
            lambda session: add_snapshot(
                session, job_id, event.iteration, key, event.losses.as_dict(), worker=worker, attempt=number
            ),
            job_id,
        ):
            self._discard(job_id, key)
            lease.lost = True

    def _discard(self, job_id: str, key: str) -> None:
        """Remove a file a refused write left; one that stays is named by no row, so nothing reads
        it, and it goes with the job's folder."""
        try:
            self.storage.delete(key)
        except Exception as err:  # storage's errors have no common base; the job is not ours anyway
            log.warning("job=%s event=discard-failed key=%s error=%r", job_id, key, str(err))

    def _lease_lost(self, job_id: str, worker: str, number: int, stage: str) -> None:
        log.warning("job=%s event=lease-lost worker=%s attempt=%d stage=%s", job_id, worker, number, stage)

    def _resume_point(self, job_id: str, params: StyleParams) -> Any:
        """The latest snapshot of an earlier attempt, to go on from; None: start afresh."""
        from worker.engine import Resume

        snapshot = self._db(lambda session: latest_snapshot(session, job_id), job_id)
        if snapshot is None or not 0 < snapshot.iteration <= params.iterations:
            return None
        try:
            image = decode_image(self.storage.get(snapshot.key), name="the latest snapshot")
        except (MissingObject, ImageError) as err:
            log.warning("job=%s event=resume-skipped reason=%r", job_id, str(err))
            return None
        log.info("job=%s event=resumed iteration=%d", job_id, snapshot.iteration)
        return Resume(snapshot.iteration, image)

    def _db(self, write: Callable[[Session], Any], job_id: str) -> Any:
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

    def _image(self, item: dict[str, str], decode: Callable[..., Any] = decode_image):
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

    def _hand_back(self, job_id: str, worker: str, number: int) -> None:
        """The worker is stopping: the job goes back to the queue for another worker."""
        status = self._db(lambda session: hand_back(session, job_id, worker, attempt=number), job_id)
        log.warning("job=%s event=handed-back worker=%s status=%s", job_id, worker, status)
        if status == QUEUED and self.requeue is not None:
            self.requeue(job_id)

    def _finish(self, job_id: str, worker: str, number: int, status: str, **fields: Any) -> bool:
        """Record the end; False (logged `lease-lost`) when this attempt no longer holds the job."""
        if not self._db(lambda session: finish_job(session, job_id, worker, status, attempt=number, **fields), job_id):
            self._lease_lost(job_id, worker, number, f"finish-{status}")
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


class MetricsHeartbeat(threading.Thread):
    """Writes this process's heartbeat for /metrics: its device, its GPU memory and its job."""

    def __init__(self, runner: JobRunner, node: str | None):
        super().__init__(name="metrics-heartbeat", daemon=True)
        assert runner.metrics is not None
        self.runner, self.metrics, self.node = runner, runner.metrics, node
        self.worker = worker_name()  # as on the job rows and in the log lines
        self._done = threading.Event()
        self._wake = threading.Event()
        self._failing = False

    def run(self) -> None:
        device = _device(self.runner.device)
        while not self._done.is_set():
            self.beat(device)
            self._wake.wait(WORKER_HEARTBEAT_S)
            self._wake.clear()

    def poke(self) -> None:
        """Beat now: the process took a job or ended one."""
        self._wake.set()

    def beat(self, device: str) -> None:
        allocated, reserved, total = _gpu_memory(device)
        attempt = self.runner.attempt
        try:
            self.metrics.worker_heartbeat(
                self.worker,
                node=self.node,
                device=device,
                gpu_memory_allocated=allocated,
                gpu_memory_reserved=reserved,
                gpu_memory_total=total,
                job=attempt.job_id if attempt else None,
            )
        except MetricsUnavailable as err:
            if not self._failing:  # one line per outage, not one per beat
                log.warning("event=metrics-heartbeat-failed worker=%s error=%r", self.worker, str(err))
            self._failing = True
        else:
            self._failing = False

    def stop(self) -> None:
        self._done.set()
        self._wake.set()
        self.join(timeout=WORKER_HEARTBEAT_S)  # so that no beat lands after the entry is gone
        try:
            self.metrics.forget_workers(name=self.worker)
        except MetricsUnavailable:
            pass  # the entry is dropped when read, WORKER_SILENT_S after its last beat


def _device(spec: str | None) -> str:
    """The device this process's jobs run on, as `cpu` or `cuda:N`."""
    import torch

    from worker.engine import resolve_device

    device = resolve_device(spec)
    if device.type != "cuda":
        return "cpu"
    return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"


def _gpu_memory(device: str) -> tuple[int, int, int]:
    """Bytes allocated by tensors, reserved by PyTorch's caching allocator, and the device's total
    (0 on a CPU)."""
    if not device.startswith("cuda"):
        return 0, 0, 0
    import torch

    return (
        torch.cuda.memory_allocated(device),
        torch.cuda.memory_reserved(device),
        torch.cuda.get_device_properties(device).total_memory,
    )


class _Lease(threading.Thread):
    """Renews the job's heartbeat every third of the lease while the job runs, whatever the
    engine is doing; notices when the job is no longer this worker's."""

    def __init__(self, runner: JobRunner, job_id: str, worker: str, number: int):
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.runner, self.job_id, self.worker, self.number = runner, job_id, worker, number
        self.every = max(0.5, runner.settings.job_lease / 3)
        self.lost = False  # canceled while queued, or handed to another worker
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every):
            self.renew()

    def renew(self) -> bool:
        try:
            with self.runner.sessions() as session:
                self.lost = self.lost or not heartbeat(session, self.job_id, self.worker, attempt=self.number)
        except Exception as err:
            if not database_unreachable(err):
                raise
            log.warning("job=%s event=heartbeat-failed reason=database-unreachable", self.job_id)
        return not self.lost

    def stop(self) -> None:
        self._done.set()


class _Throttle:
    """Progress writes at most every PROGRESS_INTERVAL_S; each write also reads the cancel flag.
    A write that fails while the database is away is skipped: the next one says more."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, worker: str, number: int, lease: _Lease):
        self.sessions, self.job_id, self.worker, self.number, self.lease = sessions, job_id, worker, number, lease
        self.cancel_requested = False
        self._last = 0.0
        self._eta = EtaEstimate()

    def update(self, event: Any) -> None:
        now = time.monotonic()
        left = self._eta.seconds_left(event, now)
        if now - self._last < PROGRESS_INTERVAL_S:
            return
        self._last = now
        eta_at = None if left is None else utcnow() + timedelta(seconds=left)
        iteration, losses = event.iteration, event.losses.as_dict()
        try:
            with self.sessions() as session:
                flag = record_progress(
                    session, self.job_id, iteration, losses, self.worker, attempt=self.number, eta_at=eta_at
                )
        except Exception as err:
            if not database_unreachable(err):
                raise
            log.warning("job=%s event=progress-skipped reason=database-unreachable", self.job_id)
            return
        if flag is None:  # no longer this attempt's (its lease expired): stop working on it
            self.lease.lost = True
        else:
            self.cancel_requested = flag


# Iterations an attempt times at a scale before it trusts the rate: the first one of a scale also
# builds its targets, and one interval alone is noise.
ETA_MIN_ITERATIONS = 3


class EtaEstimate:
    """Seconds left in a job, from the rate this attempt measured at its current scale: an
    iteration's cost grows with the scale's pixels, so the finer scales still to come cost more per
    iteration than the current one. None until a rate is measured (a fresh attempt, a resume)."""

    def __init__(self) -> None:
        self._scale: int | None = None
        self._since: tuple[int, float] = (0, 0.0)  # (iteration, monotonic time) the timing starts at
        self._per_pixel: float | None = None  # seconds per iteration per pixel, last measured

    def seconds_left(self, event: Any, now: float) -> float | None:
        pixels = event.size[0] * event.size[1]
        if event.scale != self._scale:  # a new scale (or the first event): time it from here
            self._scale, self._since = event.scale, (event.iteration, now)
        elif event.iteration - self._since[0] >= ETA_MIN_ITERATIONS:
            self._per_pixel = (now - self._since[1]) / (event.iteration - self._since[0]) / pixels
        if self._per_pixel is None:
            return None
        return self._per_pixel * pixels * _relative_work_left(event)


def _relative_work_left(event: Any) -> float:
    """Iterations left, each weighed by its scale's pixels over the current scale's."""
    from worker.engine.optimize import split_iterations

    budgets = split_iterations(event.iterations, event.scales)
    long_side = max(event.size)
    final_long = long_side * 2 ** (event.scales - event.scale)  # each scale about half the next
    work = float(sum(budgets[: event.scale]) - event.iteration)
    for scale in range(event.scale + 1, event.scales + 1):
        side = final_long / 2 ** (event.scales - scale)
        work += budgets[scale - 1] * (side / long_side) ** 2
    return max(work, 0.0)


def _attempt_folder(number: int) -> str:
    """Where an attempt's snapshots and output are stored, under the job's folder."""
    return f"attempt-{number}"


def _params(stored: dict[str, Any]) -> StyleParams:
    try:
        return StyleParams(**stored)
    except ValidationError as err:  # stored by an older or newer version with other rules
        raise JobFailed("bad_parameters", describe_invalid(err)) from None


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _release_gpu_memory() -> None:
    """Give the allocator's cached blocks back once the failed job's tensors are gone, so the
    next job starts with the whole GPU."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# How torch's native code words a failed host allocation: its own allocator, C++'s, oneDNN's.
_HOST_OOM = re.compile(r"can't allocate memory|not enough memory|std::bad_alloc|out of memory", re.IGNORECASE)


def _classify(err: BaseException) -> tuple[str, str]:
    """A failure code and message for an exception the runner did not expect by name."""
    name = type(err).__name__
    if name == "SoftTimeLimitExceeded":
        return "timeout", "the job ran past its time limit; submit it with fewer iterations or a smaller size"
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and _HOST_OOM.search(str(err))):
        return "out_of_memory", "the worker ran out of memory; submit again with a smaller size"
    return "internal_error", f"the worker failed unexpectedly ({name}); the operators have the details in its log"
