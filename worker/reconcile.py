"""The reconciler: SQL is the truth and the broker only a hint; this makes them agree again.

Two things can leave a job stranded:

- its worker died (SIGKILL, the kernel's OOM killer, a machine gone): the job stays `running`
  but its heartbeat stops. Once the heartbeat is older than the lease, the job goes back to
  `queued` and is sent again (it goes on from its latest snapshot), or, the
  `max_attempts`-th time its worker is lost, ends `failed` with the code `worker_lost`
  (a hand-back on shutdown is not a loss);
- its message was lost (Redis restarted without persistence, a send that never arrived): the
  job stays `queued` but no worker will ever be told. A queued job that the broker does not
  hold, and that was last sent longer ago than the grace period, is sent again.

Every change is one UPDATE guarded by what the pass saw, so any number of reconcilers (one
per worker, on every machine) can run at once: for each job exactly one of them wins, and a
message sent twice is harmless, since only one delivery can claim the job.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.clips import CLIP, settle_clip
from shared.db import database_unreachable, describe_db_error
from shared.models import CANCELED, FAILED, QUEUED, RUNNING, Job, utcnow
from shared.settings import Settings
from shared.tasks import STYLIZE, queue_keys

log = logging.getLogger("impasto.reconcile")

WORKER_LOST = "worker_lost"
# Storage folders that no job row owns are looked for this often (it lists every object).
ORPHAN_SWEEP_EVERY_S = 3600


@dataclass
class Report:
    requeued: list[str] = field(default_factory=list)  # running, lease expired: queued and sent again
    lost: list[str] = field(default_factory=list)  # running, lease expired, out of attempts: failed
    resent: list[str] = field(default_factory=list)  # queued, missing from the broker: sent again

    def __bool__(self) -> bool:
        return bool(self.requeued or self.lost or self.resent)


def reconcile(
    session: Session,
    settings: Settings,
    send: Callable[[str, str], None],
    broker_job_ids: Callable[[], set[str]],
    *,
    judge_leases: bool = True,
) -> Report:
    """One pass. `send(job_id, queue)` enqueues a job; `broker_job_ids()` says which jobs the broker
    holds a message for (waiting or delivered and not yet acknowledged). `judge_leases`: False
    while this reconciler has not yet watched the database for a whole lease (it just started,
    or the database just came back and workers have not had the chance to renew)."""
    report = Report()
    now = utcnow()
    expired = now - timedelta(seconds=settings.job_lease)
    last_sign = func.coalesce(Job.heartbeat_at, Job.started_at, Job.created_at)
    stale = (
        session.execute(
            # A clip is no worker's: its segments are (shared/clips.py).
            select(Job.id, Job.workers_lost, Job.queue).where(
                Job.status == RUNNING, last_sign < expired, Job.kind != CLIP
            )
        ).all()
        if judge_leases
        else []
    )
    for job_id, workers_lost, queue in stale:
        guard = update(Job).where(Job.id == job_id, Job.status == RUNNING, last_sign < expired)
        lost = workers_lost + 1
        if lost >= settings.max_attempts:
            if session.execute(
                guard.values(
                    status=FAILED,
                    finished_at=now,
                    worker=None,
                    workers_lost=lost,
                    error_code=WORKER_LOST,
                    error_message=f"the worker running this job was lost {lost} times (killed, or its machine gone); "
                    f"the job may be too large for the workers' memory: submit it again with a "
                    f"smaller size",
                )
            ).rowcount:
                report.lost.append(job_id)
            session.commit()
            continue
        # Back to the queue, or to `canceled` if its owner asked for that while it ran.
        status = session.execute(
            guard.values(
                status=case((Job.cancel_requested, CANCELED), else_=QUEUED),
                worker=None,
                heartbeat_at=None,
                workers_lost=lost,
                enqueued_at=now,
                finished_at=case((Job.cancel_requested, now), else_=None),
            ).returning(Job.status)
        ).scalar()
        session.commit()  # queued in SQL before its message exists: a worker can claim it
        if status == QUEUED:
            send(job_id, queue or settings.gpu_queue)
            report.requeued.append(job_id)

    for job_id in report.lost:  # a clip whose segment was lost for good fails with it
        parent = session.scalar(select(Job.parent_id).where(Job.id == job_id))
        if parent is not None:
            settle_clip(session, parent)

    unsent_before = now - timedelta(seconds=settings.enqueue_grace)
    last_sent = func.coalesce(Job.enqueued_at, Job.created_at)
    waiting = session.execute(
        select(Job.id, Job.queue).where(Job.status == QUEUED, last_sent < unsent_before, Job.kind != CLIP)
    ).all()
    if waiting:
        held = broker_job_ids()
        for job_id, queue in waiting:
            if job_id in held:
                continue
            won = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == QUEUED, last_sent < unsent_before)
                .values(enqueued_at=now)
            ).rowcount
            session.commit()
            if won:
                send(job_id, queue or settings.gpu_queue)
                report.resent.append(job_id)
    return report


def redis_job_ids(client: Any, queues: Sequence[str], delivered_since: float | None = None) -> set[str]:
    """The jobs a Celery Redis broker holds a stylize message for: waiting in one of `queues`
    (at any priority), or delivered to a worker and not yet acknowledged (any queue) at or after the
    Unix time `delivered_since` (None: whenever). A queued job whose message a worker took
    long ago but never claimed was taken by a worker that died: it counts as not held."""
    ids: set[str] = set()
    for key in (key for queue in queues for key in queue_keys(queue)):
        ids.update(_job_ids(client.lrange(key, 0, -1)))
    unacked = client.hgetall("unacked")
    if delivered_since is not None:
        recent = {
            tag for tag, when in client.zrange("unacked_index", 0, -1, withscores=True) if when >= delivered_since
        }
        unacked = {tag: raw for tag, raw in unacked.items() if tag in recent}
    ids.update(_job_ids(json.loads(raw)[0] for raw in unacked.values()))
    return ids


def _job_ids(messages: Iterable[Any]) -> Iterable[str]:
    for message in messages:
        try:
            if isinstance(message, (bytes, str)):
                message = json.loads(message)
            if message.get("headers", {}).get("task") != STYLIZE:
                continue
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
        except (ValueError, KeyError, TypeError, IndexError):
            continue  # not a message of ours
        if args and isinstance(args[0], str):
            yield args[0]


class Reconciler:
    """Runs a pass, then retention's cleanup, every `reconcile_interval` seconds in a thread."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        send: Callable[[str, str], None],
        broker_job_ids: Callable[[], set[str]],
        storage: Any = None,
    ):
        self.settings, self.sessions, self.send, self.broker_job_ids = settings, sessions, send, broker_job_ids
        self.storage = storage
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watching_since: float | None = None  # monotonic time of the first pass that reached the database
        self._orphans_swept: float | None = None

    def run_once(self, judge_leases: bool | None = None) -> Report:
        """One pass; by default leases are judged once this reconciler has watched for a whole lease."""
        now = time.monotonic()
        if judge_leases is None:
            self._watching_since = self._watching_since or now
            judge_leases = now - self._watching_since >= self.settings.job_lease
        with self.sessions() as session:
            report = reconcile(session, self.settings, self.send, self.broker_job_ids, judge_leases=judge_leases)
        if report:
            log.warning(
                "event=reconciled requeued=%s lost=%s resent=%s",
                ",".join(report.requeued) or "-",
                ",".join(report.lost) or "-",
                ",".join(report.resent) or "-",
            )
        for job_id in report.requeued:
            log.warning("job=%s event=requeued reason=lease-expired", job_id)
        for job_id in report.lost:
            log.error("job=%s event=failed code=%s", job_id, WORKER_LOST)
        for job_id in report.resent:
            log.warning("job=%s event=resent reason=missing-from-broker", job_id)
        if self.storage is not None:
            self._clean_up(now)
        return report

    def _clean_up(self, now: float) -> None:
        """Retention's passes; a failure here (storage refusing a delete, say) is logged and
        never stops the reconciling above."""
        from worker.retention import purge_expired, purge_orphans

        try:
            purge_expired(self.sessions, self.storage, self.settings.retention)
            if self._orphans_swept is None or now - self._orphans_swept >= ORPHAN_SWEEP_EVERY_S:
                self._orphans_swept = now
                purge_orphans(self.sessions, self.storage)
        except Exception as err:
            log.warning("event=cleanup-failed error=%r", describe_db_error(err), exc_info=not database_unreachable(err))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="impasto-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def wait(self) -> None:
        """Until stop(), or Ctrl-C in the main thread."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(1)

    def _loop(self) -> None:
        interval = self.settings.reconcile_interval
        # Reconcilers started together on many machines spread out over the interval.
        while not self._stop.wait(interval * random.uniform(0.5, 1.0)):
            try:
                self.run_once()
            except Exception as err:  # the database or the broker is away: try again next time
                if database_unreachable(err):
                    self._watching_since = None  # and give workers a whole lease to renew once it is back
                log.warning("event=reconcile-failed error=%r", describe_db_error(err))


def reconciler_for(settings: Settings, celery_app: Any) -> Reconciler:
    """A reconciler that sends through `celery_app` and reads its Redis broker; safe in a
    process that forks later (a Celery worker's main process)."""
    import os

    import redis

    from shared.db import make_engine, session_factory
    from shared.storage import open_storage
    from shared.tasks import enqueue_stylize

    client = redis.Redis.from_url(settings.require_broker())
    # A reconciler frozen mid-pass (its machine paused) must not hold rows locked for ever.
    engine = make_engine(settings.database_url, idle_in_transaction_s=10)
    # A forked child must not use, or close, the parent's pooled connections.
    os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
    return Reconciler(
        settings,
        session_factory(engine),
        send=lambda job_id, queue: enqueue_stylize(celery_app, job_id, queue),
        # A message a worker took more than a lease ago and whose job is still queued was taken
        # by a worker that died before it could claim the job.
        broker_job_ids=lambda: redis_job_ids(client, settings.queues, delivered_since=time.time() - settings.job_lease),
        storage=open_storage(settings.storage_url, s3_endpoint_url=settings.s3_endpoint_url),
    )


def main(argv: list[str] | None = None) -> int:
    """Re-send jobs whose worker or message was lost, and delete expired jobs.

    One pass, or one every IMPASTO_RECONCILE_INTERVAL seconds with --forever. Every worker
    already does this; the command is for operators."""
    import argparse
    import sys

    from shared.logs import configure_logging
    from shared.settings import SettingsError, load_settings
    from shared.tasks import make_celery

    parser = argparse.ArgumentParser(prog="impasto reconcile", description=main.__doc__)
    parser.add_argument("--forever", action="store_true", help="keep going until Ctrl-C")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        reconciler = reconciler_for(settings, make_celery(settings))
    except SettingsError as err:
        print(f"impasto reconcile: error: {err}", file=sys.stderr)
        return 2
    configure_logging("INFO")
    report = reconciler.run_once(judge_leases=True)
    print(f"requeued {len(report.requeued)}, failed as lost {len(report.lost)}, re-sent {len(report.resent)}")
    if args.forever:
        reconciler.start()
        try:
            reconciler.wait()
        except KeyboardInterrupt:
            reconciler.stop()
    return 0
