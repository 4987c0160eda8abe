"""A running job's lease and progress: the heartbeat that keeps the claim alive, and the
throttled progress writes (with the ETA) that also read the cancel flag. Both are fenced by
the attempt number: once the job is another attempt's, they say so (`lost`) and write nothing."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared.db import database_unreachable
from shared.jobs import heartbeat, record_progress
from shared.models import utcnow

log = logging.getLogger("impasto.worker")

# Progress goes to the database at most this often; the last iteration is always written.
PROGRESS_INTERVAL_S = 0.25


class Lease(threading.Thread):
    """Renews the job's heartbeat every third of the lease while the job runs, whatever the
    engine is doing; notices when the job is no longer this worker's."""

    def __init__(self, runner: Any, job_id: str, worker: str, number: int):
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


class ProgressWriter:
    """Progress writes at most every PROGRESS_INTERVAL_S; each write also reads the cancel flag.
    A write that fails while the database is away is skipped: the next one says more."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, worker: str, number: int, lease: Lease):
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
        return self._per_pixel * pixels * relative_work_left(event)


def relative_work_left(event: Any) -> float:
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
