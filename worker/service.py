"""`impasto worker`: a Celery worker that runs stylization jobs, one at a time per process."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

from celery import Celery
from celery.signals import (
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from shared.db import make_engine, session_factory
from shared.jobs import job_queue
from shared.logs import configure_logging
from shared.metrics import MetricsUnavailable, Recorder
from shared.settings import Settings, SettingsError, load_settings
from shared.storage import open_storage
from shared.tasks import STYLIZE, enqueue_stylize, make_celery

from .gpus import GpuError, children, gpu_count, parse_gpus, supervise
from .reconcile import reconciler_for
from .runner import JobRunner

log = logging.getLogger("impasto.worker")

# The runner of this process, built after the pool forks it: a database engine, storage
# client and CUDA context must not cross a fork.
_runner: JobRunner | None = None
# A worker's transactions last milliseconds; one left open longer is a frozen process's, whose
# lock on the job row would stop the reconciler from handing the job to another worker.
IDLE_IN_TRANSACTION_S = 10
# Set in a pool process by SIGTERM: its job stops at the next iteration and goes back to the queue.
_stopping = threading.Event()


def runner(app: Celery, settings: Settings, device: str | None) -> JobRunner:
    global _runner
    if _runner is None:
        sessions = session_factory(make_engine(settings.database_url, idle_in_transaction_s=IDLE_IN_TRANSACTION_S))

        def requeue(job_id: str) -> None:  # to the queue it came from
            with sessions() as session:
                queue = job_queue(session, job_id) or settings.gpu_queue
            enqueue_stylize(app, job_id, queue)

        _runner = JobRunner(
            settings,
            sessions,
            open_storage(settings.storage_url, s3_endpoint_url=settings.s3_endpoint_url),
            device=device,
            requeue=requeue,
            metrics=Recorder.from_settings(settings),
        )
    return _runner


def create_worker_app(
    settings: Settings, device: str | None = None, preload: str | None = "auto", max_memory: int | None = None
) -> Celery:
    """The Celery app with the stylize task bound to this process's runner. `max_memory`
    caps each pool process's host memory: a job too large for it fails with `out_of_memory`
    and the process takes the next job, instead of the kernel killing the worker."""
    app = make_celery(settings)

    @app.task(name=STYLIZE, bind=True)
    def stylize(task, job_id: str) -> str | None:
        # While a job runs, a stop is cooperative, like a cancel: SIGTERM sets a flag, the job
        # stops at its next iteration and goes back to the queue, and a second SIGTERM changes
        # nothing. Between jobs, billiard's own handler ends the idle process. A stop asked for
        # during an earlier job that did not end the process is forgotten: it was for that job.
        _stopping.clear()
        previous = signal.signal(signal.SIGTERM, _request_stop)
        try:
            return runner(app, settings, device).run(job_id, should_abort=_stopping.is_set)
        finally:
            signal.signal(signal.SIGTERM, previous)

    @worker_process_init.connect(weak=False)
    def prepare_pool_process(sender: str | None = None, **_: object) -> None:
        # The memory cap and the heartbeat first: whatever happens to the weights, they are in place.
        if max_memory:
            resource.setrlimit(resource.RLIMIT_DATA, (max_memory, max_memory))
        job_runner = runner(app, settings, device)
        job_runner.start_heartbeat(node=sender)  # for /metrics; sender: the Celery worker's name
        if preload:  # VGG-19 from this machine's disk, after the fork; never a download here
            job_runner.preload(preload)

    @worker_process_shutdown.connect(weak=False)
    def leave_metrics(**_: object) -> None:  # a pool process that ends on purpose is not a lost worker
        if _runner is not None:
            _runner.stop_heartbeat()

    @worker_ready.connect(weak=False)
    def start_reconciler(**_: object) -> None:
        # Every worker's main process reconciles now and then: jobs whose worker died or whose
        # message the broker lost are sent again, on whichever machines are still up.
        reconciler_for(settings, app).start()

    @worker_shutdown.connect(weak=False)
    def forget_pool_processes(sender: object = None, **_: object) -> None:
        # Idle pool processes end at SIGTERM without a word: their heartbeats go here, once all are gone.
        try:
            Recorder.from_settings(settings).forget_workers(node=getattr(sender, "hostname", None))
        except MetricsUnavailable as err:
            log.warning("event=metrics-forget-failed error=%r", str(err))

    @worker_shutting_down.connect(weak=False)
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

    return app


def _request_stop(signum: int, frame: object) -> None:
    _stopping.set()


def _busy_pool_pids() -> list[int]:
    """The pool processes running a job now: those Celery's worker state says took a request,
    among this process's children (Linux: /proc)."""
    from celery.worker import state

    children: set[int] = set()
    for listing in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        children.update(int(pid) for pid in listing.read_text().split())
    busy = {request.worker_pid for request in list(state.active_requests)}
    return sorted(children & busy)


def device_problem(device: str) -> str | None:
    """Why `device` cannot be used, asked in a separate process: CUDA must not be initialised
    in this one before the pool forks."""
    check = (
        "import sys\nfrom worker.engine import EngineError, resolve_device\n"
        f"try:\n    resolve_device({device!r})\nexcept EngineError as err:\n    sys.exit(str(err))\n"
    )
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    return None if run.returncode == 0 else (run.stderr.strip().splitlines() or ["unusable"])[-1]


def _bytes(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    number, unit = (text[:-1], text[-1].upper()) if text[-1:].upper() in units else (text, "")
    try:
        value = int(float(number) * units.get(unit, 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use a number with K, M or G, as 6G") from None
    if value < 2**30:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too little: torch and VGG-19 alone take about 1 GB; give at least 1G"
        )
    return value


def worker_queues(settings: Settings, names: str | None) -> list[str]:
    """--queues: `gpu` and `cpu` stand for the device classes' queues; other names are taken as
    they are. None: both classes, GPU first."""
    if names is None:
        return list(settings.queues)
    aliases = {"gpu": settings.gpu_queue, "cpu": settings.cpu_queue}
    queues = [aliases.get(name.strip(), name.strip()) for name in names.split(",")]
    if not all(queues) or len(set(queues)) != len(queues):
        raise ValueError(f"--queues {names!r}: name each queue once, as gpu,cpu")
    return queues


def main(argv: list[str] | None = None) -> int:
    """Run a worker that takes stylization jobs from the queue."""
    parser = argparse.ArgumentParser(prog="impasto worker", description=main.__doc__)
    parser.add_argument(
        "--gpus",
        default=None,
        metavar="all|0,1,...",
        help="one worker process per GPU, each pinned to its device with concurrency 1 "
        "(all: every GPU; a machine without one runs one CPU worker)",
    )
    parser.add_argument(
        "--queues",
        default=None,
        metavar="Q[,Q]",
        help="queues to take jobs from: gpu, cpu, or queue names (default: both device "
        "classes' queues, so that no job waits for a kind of worker that is not there)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="jobs at once, one process each (default: 1; one per GPU is best)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the GPU if there is one)")
    parser.add_argument(
        "--max-memory",
        type=_bytes,
        default=None,
        metavar="SIZE",
        help="host memory per job process, as 6G or 4096M: a job that needs more fails with "
        "out_of_memory instead of the machine killing the worker (default: no cap)",
    )
    parser.add_argument("--loglevel", default="INFO", help="log level (default: INFO)")
    parser.add_argument(
        "--hostname",
        default=f"impasto-{os.getpid()}@%h",
        help="worker name, unique per process (default: impasto-PID@HOST)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        settings.require_broker()
    except SettingsError as err:
        print(f"impasto worker: error: {err}", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print("impasto worker: error: --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        queues = worker_queues(settings, args.queues)
    except ValueError as err:
        print(f"impasto worker: error: {err}", file=sys.stderr)
        return 2
    configure_logging(args.loglevel)
    if args.gpus is not None:
        if args.device or args.concurrency != 1:
            print(
                "impasto worker: error: --gpus picks each process's device and runs one job per GPU; "
                "leave out --device and --concurrency",
                file=sys.stderr,
            )
            return 2
        try:
            gpus = parse_gpus(args.gpus, gpu_count())
        except GpuError as err:
            print(f"impasto worker: error: {err}", file=sys.stderr)
            return 2
        if not gpus:
            log.info("event=no-gpu workers=1 device=cpu")
            args.device = "cpu"
        elif gpus != [0]:  # GPU 0 alone runs in this process; others need CUDA_VISIBLE_DEVICES
            shared_args = [f"--queues={','.join(queues)}", f"--loglevel={args.loglevel}"]
            if args.max_memory:
                shared_args.append(f"--max-memory={args.max_memory}")
            return supervise(children(gpus, shared_args, args.hostname))
        else:
            args.device = "cuda:0"
    if args.device and (problem := device_problem(args.device)):
        print(f"impasto worker: error: --device: {problem}", file=sys.stderr)
        return 2
    app = create_worker_app(settings, device=args.device, max_memory=args.max_memory)
    log.info(
        "event=worker-starting queues=%s device=%s concurrency=%d",
        ",".join(queues),
        args.device or "auto",
        args.concurrency,
    )
    app.worker_main(
        [  # --quiet: no banner, so that every line is key=value (the settings are logged above)
            "--quiet",
            "worker",
            "--pool=prefork",
            f"--concurrency={args.concurrency}",
            f"--queues={','.join(queues)}",
            f"--loglevel={args.loglevel}",
            f"--hostname={args.hostname}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0
