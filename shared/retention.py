"""Retention: a finished job's images and rows are deleted once it is older than the retention
period; a job that is queued or running is never touched, however old.

A delete is three short steps, and no transaction or row lock is held while storage objects
are removed: (1) one guarded UPDATE marks the finished job deleted (`deleted_at`) and commits,
from which moment every reader treats it as gone; (2) its files are deleted; (3) its rows are.
The guard (final, not yet marked) lets exactly one of any number of cleaners, one per worker
machine and the API's DELETE, take each job; a second that meets it skips it or finds it gone.

A cleaner that stops between the steps (a crash, a storage or database outage) leaves a row
marked deleted, which no reader shows and the next retention pass finishes once it is
ABANDONED_DELETE_AGE old: never a visible row whose images are gone. Images that no row leads
to come only from a submission whose row was never committed (the database was down) or a
lost worker writing after its job was deleted; `purge_orphans` sweeps them once they are old.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from .models import FINAL_STATUSES, Job, Snapshot, Sweep, utcnow
from .storage import Storage, StoredObject

log = logging.getLogger("impasto.retention")

# A job's folder in storage with no row is left alone for this long: a submission stores its
# inputs a moment before it commits the row.
ORPHAN_AGE = timedelta(days=1)


# A job marked deleted whose row is still there after this long: its deleter stopped half
# way; the retention pass finishes it (a delete in progress takes seconds, not minutes).
ABANDONED_DELETE_AGE = timedelta(minutes=10)


def delete_job(session: Session, storage: Storage, job_id: str) -> bool:
    """Mark a finished job deleted and commit, then delete its images, then its rows; False,
    with nothing touched, when there is no such job, it is still queued or running, or another
    cleaner marked it first. A storage or database error on the way leaves the job marked
    deleted (hidden from every reader) for the retention pass to finish, and is raised."""
    if not _mark_deleted(session, [Job.id == job_id, Job.status.in_(FINAL_STATUSES), Job.deleted_at.is_(None)]):
        return False
    return _remove(session, storage, job_id)


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
                if _mark_deleted(session, guard):
                    deleted += _remove(session, storage, job_id)
        if deleted:
            log.info("event=retention-purged jobs=%d finished_before=%s", deleted, before.isoformat())
    abandoned = 0
    for job_id in _pages(sessions, Job.deleted_at < now - ABANDONED_DELETE_AGE, batch):
        with sessions() as session:
            abandoned += _remove(session, storage, job_id)
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


def _mark_deleted(session: Session, guard: list[Any]) -> bool:
    """One guarded UPDATE, committed at once: whether this cleaner took the job."""
    try:
        taken = session.execute(update(Job).where(*guard).values(deleted_at=utcnow())).rowcount == 1
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return taken


def _remove(session: Session, storage: Storage, job_id: str) -> bool:
    """The files, then the rows, of a job marked deleted; True when this call deleted its row."""
    try:
        row = session.execute(
            select(Job.inputs, Job.output_key).where(Job.id == job_id, Job.deleted_at.is_not(None))
        ).first()
        snapshots = session.scalars(select(Snapshot.key).where(Snapshot.job_id == job_id)).all()
    finally:
        session.rollback()  # a read only: end its transaction before the storage calls
    if row is None:
        return False
    keys = set(_keys(row.inputs, row.output_key, snapshots))
    keys.update(item.key for item in storage.list_objects(f"jobs/{job_id}"))
    for key in sorted(keys):
        storage.delete(key)
    try:
        # Snapshots first, whether or not the database cascades (SQLite without its pragma).
        session.execute(delete(Snapshot).where(Snapshot.job_id == job_id))
        deleted = session.execute(delete(Job).where(Job.id == job_id, Job.deleted_at.is_not(None))).rowcount == 1
        session.commit()
    except BaseException:
        session.rollback()
        raise
    if deleted:
        log.info("event=job-deleted job=%s objects=%d", job_id, len(keys))
    return deleted


def _keys(inputs: dict[str, Any] | None, output_key: str | None, snapshots: Iterable[str]) -> Iterable[str]:
    inputs = inputs or {}
    for item in [inputs.get("content"), *inputs.get("styles", [])]:
        if item and item.get("key"):
            yield item["key"]
    yield from snapshots
    if output_key:
        yield output_key


def main(argv: list[str] | None = None) -> int:
    """Delete finished jobs past the retention period, and stored files no job owns (one pass)."""
    parser = argparse.ArgumentParser(prog="impasto cleanup", description=main.__doc__)
    parser.add_argument(
        "--no-orphans", action="store_true", help="only jobs past the retention; do not look for files without a job"
    )
    args = parser.parse_args(argv)

    import sqlalchemy.exc

    from .db import describe_db_error, make_engine, session_factory
    from .settings import SettingsError, load_settings
    from .storage import StorageError, open_storage

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
