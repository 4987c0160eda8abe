"""Retention, one pass of which every worker runs from its reconciler: finished jobs older
than the retention period are deleted (shared/deletion.py says how a delete goes), deletes
abandoned half way are finished once ABANDONED_DELETE_AGE old, sweeps whose every cell is
gone are dropped, and stored files that no row leads to are swept once they are old. A job
that is queued or running is never touched, however old.

Files that no row leads to come only from a submission whose row was never committed (the
database was down) or a lost worker writing after its job was deleted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from shared.deletion import mark_deleted, remove_deleted
from shared.models import FINAL_STATUSES, Job, Sweep, utcnow
from shared.storage import Storage, StoredObject

log = logging.getLogger("impasto.retention")

# A job's folder in storage with no row is left alone for this long: a submission stores its
# inputs a moment before it commits the row.
ORPHAN_AGE = timedelta(days=1)


# A job marked deleted whose row is still there after this long: its deleter stopped half
# way; the retention pass finishes it (a delete in progress takes seconds, not minutes).
ABANDONED_DELETE_AGE = timedelta(minutes=10)


def purge_expired(
    sessions: sessionmaker[Session],
    storage: Storage,
    retention_seconds: int,
    now: datetime | None = None,
    batch: int = 100,
) -> int:
    """Delete every finished job that finished more than `retention_seconds` ago (0: keep
    forever), with its images, and finish deletes abandoned half way; returns how many jobs
    this call deleted."""
    now = now or utcnow()
    deleted = 0
    if retention_seconds > 0:
        before = now - timedelta(seconds=retention_seconds)
        for job_id in _pages(sessions, and_(_expired(before), Job.deleted_at.is_(None)), batch):
            with sessions() as session:
                guard = [Job.id == job_id, _expired(before), Job.deleted_at.is_(None)]
                if mark_deleted(session, guard):
                    deleted += remove_deleted(session, storage, job_id)
        if deleted:
            log.info("event=retention-purged jobs=%d finished_before=%s", deleted, before.isoformat())
    abandoned = 0
    for job_id in _pages(sessions, Job.deleted_at < now - ABANDONED_DELETE_AGE, batch):
        with sessions() as session:
            abandoned += remove_deleted(session, storage, job_id)
    if abandoned:
        log.info("event=abandoned-deletes-finished jobs=%d", abandoned)
    _purge_empty_sweeps(sessions, now - ABANDONED_DELETE_AGE)
    return deleted + abandoned


def _purge_empty_sweeps(sessions: sessionmaker[Session], before: datetime) -> None:
    """Sweeps whose every cell has been deleted (a sweep made before `before`: its cells are
    committed with it, so a younger one is never empty)."""
    with sessions() as session:
        empty = ~select(Job.id).where(Job.sweep_id == Sweep.id).exists()
        removed = session.execute(delete(Sweep).where(Sweep.created_at < before, empty)).rowcount
        session.commit()
    if removed:
        log.info("event=empty-sweeps-deleted sweeps=%d", removed)


def _pages(sessions: sessionmaker[Session], condition: Any, batch: int) -> Iterator[str]:
    """The ids of the jobs that meet `condition`, a page at a time by id, so that a pass ends
    even while other cleaners take some of the same jobs."""
    after = ""
    while True:
        with sessions() as session:
            ids = session.scalars(select(Job.id).where(condition, Job.id > after).order_by(Job.id).limit(batch)).all()
        yield from ids
        if len(ids) < batch:
            return
        after = ids[-1]


def purge_orphans(
    sessions: sessionmaker[Session],
    storage: Storage,
    *,
    older_than: timedelta = ORPHAN_AGE,
    now: datetime | None = None,
) -> int:
    """Delete the job folders in storage (`jobs/<id>/`) that no job row owns and that nothing
    was written to for `older_than`; returns how many folders were deleted.

    It lists every stored object, so it is for an hourly or daily pass, not every minute. It
    deletes nothing when such folders outnumber the ones a row owns: that is a database that
    is not this storage's (a wrong URL, a reset, an old backup), not litter."""
    folders: dict[str, list[StoredObject]] = defaultdict(list)
    for item in storage.list_objects("jobs"):
        job_id = item.key.split("/")[1]
        folders[job_id].append(item)
    cutoff = (now or utcnow()) - older_than
    stale = sorted(job_id for job_id, items in folders.items() if max(i.modified for i in items) < cutoff)
    owned: set[str] = set()
    with sessions() as session:
        for start in range(0, len(stale), 500):
            owned.update(session.scalars(select(Job.id).where(Job.id.in_(stale[start : start + 500]))))
    orphans = [job_id for job_id in stale if job_id not in owned]
    if len(orphans) > len(folders) - len(orphans):
        log.warning(
            "event=orphans-kept folders=%d without_row=%d reason=more folders without a row than with "
            "one; is this the right database? delete them by hand if it is",
            len(folders),
            len(orphans),
        )
        return 0
    for job_id in orphans:
        for item in folders[job_id]:
            storage.delete(item.key)
        log.info("event=orphan-deleted job=%s objects=%d", job_id, len(folders[job_id]))
    return len(orphans)


def _expired(before: datetime) -> Any:
    """Final, and finished before `before` (a final job with no finish time: created before)."""
    return and_(
        Job.status.in_(FINAL_STATUSES),
        or_(Job.finished_at < before, and_(Job.finished_at.is_(None), Job.created_at < before)),
    )


def main(argv: list[str] | None = None) -> int:
    """Delete finished jobs past the retention period, and stored files no job owns (one pass)."""
    parser = argparse.ArgumentParser(prog="impasto cleanup", description=main.__doc__)
    parser.add_argument(
        "--no-orphans", action="store_true", help="only jobs past the retention; do not look for files without a job"
    )
    args = parser.parse_args(argv)

    import sqlalchemy.exc

    from shared.db import describe_db_error, make_engine, session_factory
    from shared.settings import SettingsError, load_settings
    from shared.storage import StorageError, open_storage

    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"impasto cleanup: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="impasto cleanup: %(message)s")
    engine = make_engine(settings.database_url)
    sessions = session_factory(engine)
    storage = open_storage(settings.storage_url, s3_endpoint_url=settings.s3_endpoint_url)
    try:
        jobs = purge_expired(sessions, storage, settings.retention)
        orphans = 0 if args.no_orphans else purge_orphans(sessions, storage)
    except sqlalchemy.exc.SQLAlchemyError as err:
        print(f"impasto cleanup: error: the database: {describe_db_error(err)}", file=sys.stderr)
        return 1
    except StorageError as err:
        print(f"impasto cleanup: error: the storage: {err}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    kept = f"kept {settings.retention} s after they end" if settings.retention else "kept forever (IMPASTO_RETENTION=0)"
    print(f"impasto cleanup: deleted {jobs} finished jobs (jobs are {kept}) and {orphans} folders without a job")
    return 0


if __name__ == "__main__":
    sys.exit(main())
