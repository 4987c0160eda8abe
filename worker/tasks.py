"""The Celery task a worker runs: one stylization job, by id."""

from __future__ import annotations

import signal

from celery import shared_task

from shared.tasks import STYLIZE

from .process import current


@shared_task(name=STYLIZE, bind=True)
def stylize(task, job_id: str) -> str | None:
    # While a job runs, a stop is cooperative, like a cancel: SIGTERM sets a flag, the job
    # stops at its next iteration and goes back to the queue, and a second SIGTERM changes
    # nothing. Between jobs, billiard's own handler ends the idle process. A stop asked for
    # during an earlier job that did not end the process is forgotten: it was for that job.
    process = current()
    process.stopping.clear()
    previous = signal.signal(signal.SIGTERM, _request_stop)
    try:
        return process.job_runner().run(job_id, should_abort=process.stopping.is_set)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _request_stop(signum: int, frame: object) -> None:
    current().stopping.set()
