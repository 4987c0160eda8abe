"""The worker's Celery signal handlers: a pool process's start and end, and the main
process's ready and shutdown. Connected when this module is imported (by `impasto worker`)."""

from __future__ import annotations

import logging
import os
import resource
import signal
from pathlib import Path

from celery.signals import (
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from shared.metrics import MetricsUnavailable, Recorder

from .process import current
from .reconcile import reconciler_for

log = logging.getLogger("impasto.worker")


@worker_process_init.connect
def prepare_pool_process(sender: str | None = None, **_: object) -> None:
    # The memory cap and the heartbeat first: whatever happens to the weights, they are in place.
    process = current()
    if process.max_memory:
        resource.setrlimit(resource.RLIMIT_DATA, (process.max_memory, process.max_memory))
    job_runner = process.job_runner()
    job_runner.start_heartbeat(node=sender)  # for /metrics; sender: the Celery worker's name
    if process.preload:  # VGG-19 from this machine's disk, after the fork; never a download here
        job_runner.preload(process.preload)


@worker_process_shutdown.connect
def leave_metrics(**_: object) -> None:  # a pool process that ends on purpose is not a lost worker
    runner = current().runner
    if runner is not None:
        runner.stop_heartbeat()


@worker_ready.connect
def start_reconciler(**_: object) -> None:
    # Every worker's main process reconciles now and then: jobs whose worker died or whose
    # message the broker lost are sent again, on whichever machines are still up.
    process = current()
    reconciler_for(process.settings, process.app).start()


@worker_shutdown.connect
def forget_pool_processes(sender: object = None, **_: object) -> None:
    # Idle pool processes end at SIGTERM without a word: their heartbeats go here, once all are gone.
    try:
        Recorder.from_settings(current().settings).forget_workers(node=getattr(sender, "hostname", None))
    except MetricsUnavailable as err:
        log.warning("event=metrics-forget-failed error=%r", str(err))


@worker_shutting_down.connect
def stop_pool_processes(**_: object) -> None:
    # Celery's warm shutdown would wait for the running job to end; instead each pool
    # process running one hands its job back (docker and `impasto up` signal only the main
    # process). Idle ones are left to the warm shutdown, which closes them: one killed by
    # the signal now would be logged as an error and replaced while the worker stops.
    for pid in _busy_pool_pids():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _busy_pool_pids() -> list[int]:
    """The pool processes running a job now: those Celery's worker state says took a request,
    among this process's children (Linux: /proc)."""
    from celery.worker import state

    children: set[int] = set()
    for listing in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        children.update(int(pid) for pid in listing.read_text().split())
    busy = {request.worker_pid for request in list(state.active_requests)}
    return sorted(children & busy)
