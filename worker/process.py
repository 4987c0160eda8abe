"""What one worker process holds: its settings and device, and, built after the pool forks it
(a database engine, storage client and CUDA context must not cross a fork), its job runner.

`impasto worker` configures it once in the main process before the pool forks; the task and
the signal handlers (worker/tasks.py, worker/signals.py) read it with `current()`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from celery import Celery

from shared.db import make_engine, session_factory
from shared.jobs import job_queue
from shared.metrics import Recorder
from shared.settings import Settings
from shared.storage import open_storage
from shared.tasks import enqueue_stylize

from .runner import JobRunner

# A worker's transactions last milliseconds; one left open longer is a frozen process's, whose
# lock on the job row would stop the reconciler from handing the job to another worker.
IDLE_IN_TRANSACTION_S = 10


@dataclass
class WorkerProcess:
    settings: Settings
    app: Celery
    device: str | None = None
    preload: str | None = "auto"  # VGG-19 weights loaded when a pool process starts
    max_memory: int | None = None  # each pool process's host memory cap, in bytes
    # Set in a pool process by SIGTERM: its job stops at the next iteration and goes back to the queue.
    stopping: threading.Event = field(default_factory=threading.Event)
    _runner: JobRunner | None = None

    @property
    def runner(self) -> JobRunner | None:
        """The runner, if this process has built one."""
        return self._runner

    def job_runner(self) -> JobRunner:
        """This process's runner, built on first use."""
        if self._runner is None:
            settings = self.settings
            sessions = session_factory(make_engine(settings.database_url, idle_in_transaction_s=IDLE_IN_TRANSACTION_S))

            def requeue(job_id: str) -> None:  # to the queue it came from
                with sessions() as session:
                    queue = job_queue(session, job_id) or settings.gpu_queue
                enqueue_stylize(self.app, job_id, queue)

            self._runner = JobRunner(
                settings,
                sessions,
                open_storage(settings.storage_url, s3_endpoint_url=settings.s3_endpoint_url),
                device=self.device,
                requeue=requeue,
                metrics=Recorder.from_settings(settings),
            )
        return self._runner


_current: WorkerProcess | None = None


def configure(process: WorkerProcess) -> None:
    global _current
    _current = process


def current() -> WorkerProcess:
    if _current is None:
        raise RuntimeError("this process is not an impasto worker (worker.process.configure was not called)")
    return _current
