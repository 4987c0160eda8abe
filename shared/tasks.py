"""The Celery app and the task names: what the web tier sends and the worker runs.

The web tier enqueues by name (`enqueue_stylize`), never by importing the worker.
"""

from __future__ import annotations

from celery import Celery

from .settings import Settings

STYLIZE = "impasto.stylize"

# Kombu's Redis transport keeps a message of priority p in the list `queue`, or, for p above
# 0, in `queue\x06\x16STEP` (STEP: the least of these that is at least p).
PRIORITY_STEPS = (3, 6, 9)

# The runner stops a job at its time limit between two iterations. Celery's limits back it up
# for an iteration that never ends: past the soft limit the job is interrupted and marked
# failed with `timeout`; past the hard one the process running it is killed.
BACKSTOP_MARGIN = 60


def make_celery(settings: Settings) -> Celery:
    """A Celery app for long GPU jobs: one job per process at a time, acknowledged only when
    done, so a worker that dies hands its job back instead of losing it."""
    app = Celery("impasto", broker=settings.require_broker(), set_as_current=False)
    app.conf.update(
        task_default_queue=settings.gpu_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        # The margin also covers the database retries a job may make while it finishes.
        task_soft_time_limit=settings.job_time_limit + settings.db_retry + BACKSTOP_MARGIN,
        task_time_limit=settings.job_time_limit + settings.db_retry + 2 * BACKSTOP_MARGIN,
        # Redis re-delivers an unacknowledged message after this long: it must exceed the
        # longest job, or a running job would be handed to a second worker.
        broker_transport_options={"visibility_timeout": 2 * (settings.job_time_limit + settings.db_retry) + 600},
        broker_connection_retry_on_startup=True,
        # A broker blip must not kill a running job: after a reconnect its message is
        # delivered again, and the atomic claim makes that second delivery a no-op.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # A replacement pool process loads VGG-19 before it reports for work (seconds from a
        # cold disk); Celery's default of 4 s would kill it over and over.
        worker_proc_alive_timeout=300,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold a queue's waiting messages, one per priority step."""
    return [queue, *(f"{queue}\x06\x16{step}" for step in PRIORITY_STEPS)]


def enqueue_stylize(app: Celery, job_id: str, queue: str) -> None:
    app.send_task(STYLIZE, args=[job_id], queue=queue)
