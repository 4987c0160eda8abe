"""`impasto worker`: a Celery worker that runs stylization jobs, one at a time per process."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from celery import Celery

from shared.logs import configure_logging
from shared.settings import Settings, SettingsError, load_settings
from shared.tasks import make_celery

from .gpus import GpuError, children, gpu_count, parse_gpus, supervise
from .process import WorkerProcess, configure

log = logging.getLogger("impasto.worker")


def create_worker_app(
    settings: Settings, device: str | None = None, preload: str | None = "auto", max_memory: int | None = None
) -> Celery:
    """The Celery app with the stylize task (worker/tasks.py) and the signal handlers
    (worker/signals.py), for this process's settings. `max_memory` caps each pool process's
    host memory: a job too large for it fails with `out_of_memory` and the process takes the
    next job, instead of the kernel killing the worker."""
    app = make_celery(settings)
    configure(WorkerProcess(settings, app, device=device, preload=preload, max_memory=max_memory))
    from . import signals, tasks  # noqa: F401  (registering them is their import)

    return app


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
