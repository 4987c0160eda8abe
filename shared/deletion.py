"""Deleting a job: three short steps, and no transaction or row lock is held while storage
objects are removed: (1) one guarded UPDATE marks the finished job deleted (`deleted_at`) and
commits, from which moment every reader treats it as gone; (2) its files are deleted; (3) its
rows are. The guard (final, not yet marked) lets exactly one of any number of cleaners (the
API's DELETE, and the retention pass of every worker, worker/retention.py) take each job; a
second that meets it skips it or finds it gone.

A cleaner that stops between the steps (a crash, a storage or database outage) leaves a row
marked deleted, which no reader shows and the next retention pass finishes: never a visible
row whose images are gone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from .models import FINAL_STATUSES, Job, Snapshot, utcnow
from .storage import Storage

log = logging.getLogger("impasto.retention")


def delete_job(session: Session, storage: Storage, job_id: str) -> bool:
    """Mark a finished job deleted and commit, then delete its images, then its rows; False,
    with nothing touched, when there is no such job, it is still queued or running, or another
    cleaner marked it first. A storage or database error on the way leaves the job marked
    deleted (hidden from every reader) for the retention pass to finish, and is raised."""
    if not mark_deleted(session, [Job.id == job_id, Job.status.in_(FINAL_STATUSES), Job.deleted_at.is_(None)]):
        return False
    return remove_deleted(session, storage, job_id)


def mark_deleted(session: Session, guard: list[Any]) -> bool:
    """One guarded UPDATE, committed at once: whether this cleaner took the job."""
    try:
        taken = session.execute(update(Job).where(*guard).values(deleted_at=utcnow())).rowcount == 1
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return taken


def remove_deleted(session: Session, storage: Storage, job_id: str) -> bool:
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
    keys = set(stored_keys(row.inputs, row.output_key, snapshots))
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


def stored_keys(inputs: dict[str, Any] | None, output_key: str | None, snapshots: Iterable[str]) -> Iterable[str]:
    inputs = inputs or {}
    for item in [inputs.get("content"), *inputs.get("styles", [])]:
        if item and item.get("key"):
            yield item["key"]
    yield from snapshots
    if output_key:
        yield output_key
