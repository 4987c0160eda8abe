"""`impasto worker`: a Celery worker that runs stylization jobs, one at a time per process."""

from __future__ import annotations

import argparse
import logging
import sys

from celery import Celery
from celery.signals import worker_process_init

from shared.db import make_engine, session_factory
from shared.settings import Settings, SettingsError, load_settings
from shared.storage import open_storage
from shared.tasks import STYLIZE, make_celery

from .runner import JobRunner

log = logging.getLogger("impasto.worker")

# The runner of this process, built after the pool forks it: a database engine, storage
# client and CUDA context must not cross a fork.
_runner: JobRunner | None = None


def runner(settings: Settings, device: str | None) -> JobRunner:
    global _runner
    if _runner is None:
        _runner = JobRunner(settings, session_factory(make_engine(settings.database_url)),
                            open_storage(settings.storage_url, s3_endpoint_url=settings.s3_endpoint_url),
                            device=device)
    return _runner


def create_worker_app(settings: Settings, device: str | None = None, preload: str | None = "auto") -> Celery:
    """The Celery app with the stylize task bound to this process's runner."""
    app = make_celery(settings)

    @app.task(name=STYLIZE, bind=True)
    def stylize(task, job_id: str) -> str | None:
        return runner(settings, device).run(job_id)

    if preload:
        @worker_process_init.connect(weak=False)
        def load_vgg(**_: object) -> None:
            # VGG-19 is loaded once per process, after the fork, before the first job.
            weights = runner(settings, device).weights(preload)
            log.info("event=weights-loaded source=%s", weights.source)

    return app


def main(argv: list[str] | None = None) -> int:
    """Run a worker that takes stylization jobs from the queue."""
    parser = argparse.ArgumentParser(prog="impasto worker", description=main.__doc__)
    parser.add_argument("--concurrency", type=int, default=1,
                        help="jobs at once, one process each (default: 1; one per GPU is best)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the GPU if there is one)")
    parser.add_argument("--loglevel", default="INFO", help="log level (default: INFO)")
    parser.add_argument("--hostname", default="impasto@%h", help="worker name (default: impasto@%%h)")
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
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_worker_app(settings, device=args.device)
    app.worker_main([
        "worker", "--pool=prefork", f"--concurrency={args.concurrency}", f"--queues={settings.queue}",
        f"--loglevel={args.loglevel}", f"--hostname={args.hostname}", "--without-gossip", "--without-mingle",
    ])
    return 0
