"""Job state changes, each one atomic in SQL so that two processes can never both win.

The web tier creates and cancels jobs; the worker claims them, reports progress and finishes
them. Every transition is a single UPDATE guarded by the status it expects, so a second
delivery of the same message, or a cancel racing a finish, changes nothing.

Fencing: a claim is the pair (worker, attempt number). A worker's writes for a job (progress,
snapshot rows, weights, finish, hand-back) name the attempt they were made under, and the
guarded UPDATE refuses them once the job has been taken from that worker (its lease expired,
the reconciler requeued it, another worker claimed it as the next attempt): a paused or
partitioned worker that wakes up can change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from .models import CANCELED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job, Snapshot, new_job_id, utcnow


@dataclass(frozen=True)
class JobError:
    """Why a job failed: a short machine code and a message a person can act on."""

    code: str
    message: str


def create_job(session: Session, **fields: Any) -> Job:
    """Insert a queued job and commit: from now on the job exists, whatever the broker does
    (a job whose message never reaches the broker is sent again by the reconciler).
    `fields` are `new_job`'s."""
    job = new_job(**fields)
    session.add(job)
    session.commit()
    return job


def new_job(
    *,
    params: dict[str, Any],
    inputs: dict[str, Any],
    job_id: str | None = None,
    token_hash: str | None = None,
    owner: str | None = None,
    queue: str | None = None,
    sweep_id: str | None = None,
    cell: int | None = None,
) -> Job:
    """A queued job's row, not yet added to a session (a sweep adds all its cells at once)."""
    now = utcnow()
    return Job(
        id=job_id or new_job_id(),
        status=QUEUED,
        params=params,
        inputs=inputs,
        iterations=int(params["iterations"]),
        iteration=0,
        attempts=0,
        cancel_requested=False,
        created_at=now,
        enqueued_at=now,
        token_hash=token_hash,
        owner=owner,
        queue=queue,
        sweep_id=sweep_id,
        cell=cell,
        snapshots=[],
    )


def job_queue(session: Session, job_id: str) -> str | None:
    """The queue the job's message goes to (None for jobs from before queues per device class)."""
    return session.scalar(select(Job.queue).where(Job.id == job_id))


def _held(job_id: str, worker: str, attempt: int | None) -> list[Any]:
    """The WHERE clause of a write by the worker holding the job: `attempt` fences a stale claim
    (None: any attempt of this worker's, for callers that hold no attempt number)."""
    conditions = [Job.id == job_id, Job.status == RUNNING, Job.worker == worker]
    if attempt is not None:
        conditions.append(Job.attempts == attempt)
    return conditions


def claim_job(session: Session, job_id: str, worker: str) -> bool:
    """queued -> running for this worker; False when someone else has it or it is over."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED)
        .values(
            status=RUNNING,
            started_at=now,
            heartbeat_at=now,
            eta_at=None,  # this attempt measures its own rate
            worker=worker,
            attempts=Job.attempts + 1,
            error_code=None,
            error_message=None,
        )
    )
    session.commit()
    return result.rowcount == 1


def heartbeat(session: Session, job_id: str, worker: str, *, attempt: int | None = None) -> bool:
    """The worker still holds the job: renew its lease. False when it no longer does."""
    result = session.execute(update(Job).where(*_held(job_id, worker, attempt)).values(heartbeat_at=utcnow()))
    session.commit()
    return result.rowcount == 1


def latest_snapshot(session: Session, job_id: str) -> Snapshot | None:
    """The snapshot with the highest iteration: where a job interrupted before goes on from."""
    return session.scalars(
        select(Snapshot).where(Snapshot.job_id == job_id).order_by(Snapshot.iteration.desc()).limit(1)
    ).first()


def record_progress(
    session: Session,
    job_id: str,
    iteration: int,
    losses: dict[str, float] | None,
    worker: str,
    *,
    attempt: int | None = None,
    eta_at: datetime | None = None,
) -> bool | None:
    """Write progress, the expected end (None: not known yet) and the heartbeat; returns whether
    a cancel was asked for, or None when the job is no longer this worker's attempt's."""
    row = session.execute(
        update(Job)
        .where(*_held(job_id, worker, attempt))
        .values(iteration=iteration, losses=losses, eta_at=eta_at, heartbeat_at=utcnow())
        .returning(Job.cancel_requested)
    ).first()
    session.commit()
    return None if row is None else bool(row[0])


def add_snapshot(
    session: Session,
    job_id: str,
    iteration: int,
    key: str,
    losses: dict[str, float] | None,
    *,
    worker: str | None = None,
    attempt: int | None = None,
) -> bool:
    """Record a stored snapshot image; a snapshot at an iteration already recorded replaces it.
    With `worker` (and `attempt`), only while that claim holds the job: False when it does not.
    The guarded UPDATE of the job row also renews the lease, and on PostgreSQL it locks the row
    until the commit, so the reconciler cannot take the job away between the check and the insert."""
    if worker is not None:
        held = session.execute(update(Job).where(*_held(job_id, worker, attempt)).values(heartbeat_at=utcnow()))
        if held.rowcount != 1:
            session.rollback()
            return False
    existing = session.scalar(select(Snapshot).where(Snapshot.job_id == job_id, Snapshot.iteration == iteration))
    if existing is None:
        session.add(Snapshot(job_id=job_id, iteration=iteration, key=key, losses=losses, created_at=utcnow()))
    else:
        existing.key, existing.losses = key, losses
    session.commit()
    return True


def finish_job(
    session: Session,
    job_id: str,
    worker: str,
    status: str,
    *,
    iteration: int | None = None,
    losses: dict[str, float] | None = None,
    output_key: str | None = None,
    error: JobError | None = None,
    weights: str | None = None,
    weights_warning: str | None = None,
    attempt: int | None = None,
) -> bool:
    """running -> succeeded | failed | canceled, only for the worker (and attempt) that holds the job."""
    if status not in (SUCCEEDED, FAILED, CANCELED):
        raise ValueError(f"not a final status: {status}")
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "output_key": output_key}
    if iteration is not None:
        values["iteration"] = iteration
    if losses is not None:
        values["losses"] = losses
    if weights is not None:
        values["weights"] = weights
        values["weights_warning"] = weights_warning
    if error is not None:
        values["error_code"], values["error_message"] = error.code, error.message
    result = session.execute(update(Job).where(*_held(job_id, worker, attempt)).values(**values))
    session.commit()
    return result.rowcount == 1


def record_weights(
    session: Session, job_id: str, worker: str, weights: str, warning: str | None, *, attempt: int | None = None
) -> bool:
    """Which VGG-19 weights the running job uses, shown from the start (random ones are marked)."""
    result = session.execute(
        update(Job).where(*_held(job_id, worker, attempt)).values(weights=weights, weights_warning=warning)
    )
    session.commit()
    return result.rowcount == 1


def hand_back(session: Session, job_id: str, worker: str, *, attempt: int | None = None) -> str | None:
    """running -> queued, for a worker that is shutting down: another worker takes it next
    (canceled instead, if its owner asked for that meanwhile). Returns the new status, or None
    when the job was not this worker's."""
    now = utcnow()
    row = session.execute(
        update(Job)
        .where(*_held(job_id, worker, attempt))
        .values(
            status=case((Job.cancel_requested, CANCELED), else_=QUEUED),
            worker=None,
            heartbeat_at=None,
            enqueued_at=now,
            finished_at=case((Job.cancel_requested, now), else_=None),
        )
        .returning(Job.status)
    ).first()
    session.commit()
    return None if row is None else row[0]


def fail_unclaimed(session: Session, job_id: str, error: JobError) -> bool:
    """queued -> failed, for a job that cannot be run at all (its inputs are gone, say)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED)
        .values(status=FAILED, finished_at=utcnow(), error_code=error.code, error_message=error.message)
    )
    session.commit()
    return result.rowcount == 1


def request_cancel(session: Session, job_id: str) -> Job | None:
    """Cancel: a queued job ends at once; a running one is flagged and its worker stops at the
    next iteration. Returns the job as it now stands, or None if there is no such job."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED)
        .values(status=CANCELED, finished_at=utcnow(), cancel_requested=True)
    )
    session.execute(update(Job).where(Job.id == job_id, Job.status == RUNNING).values(cancel_requested=True))
    session.commit()
    return session.get(Job, job_id, populate_existing=True)


def queue_position(session: Session, job: Job, *, default_queue: str | None = None) -> int | None:
    """How many queued jobs are ahead of this one in its own queue (0: it starts next); None
    unless queued. Workers take a queue's messages in the order they were sent, and a job that
    went back to the queue (handed back, re-sent by the reconciler) was sent again at
    `enqueued_at`, behind those already waiting. `default_queue`: the queue of jobs from before
    queues per device class (their `queue` is NULL), as the reconciler sends them."""
    if job.status != QUEUED:
        return None
    sent = func.coalesce(Job.enqueued_at, Job.created_at)
    mine = job.enqueued_at or job.created_at
    queue = job.queue or default_queue
    same_queue = func.coalesce(Job.queue, default_queue) == queue if queue is not None else Job.queue.is_(None)
    ahead = or_(sent < mine, and_(sent == mine, Job.id < job.id))
    return session.scalar(select(func.count()).select_from(Job).where(Job.status == QUEUED, same_queue, ahead)) or 0


def recent_jobs(session: Session, *, owner: str, limit: int, offset: int = 0) -> tuple[list[Job], int]:
    """An owner's jobs ("key:ID", "browser:HASH"), newest first, and how many there are in all."""
    mine = select(Job).where(Job.owner == owner, Job.deleted_at.is_(None))
    jobs = session.scalars(mine.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
    total = session.scalar(select(func.count()).select_from(mine.subquery())) or 0
    return list(jobs), total


__all__ = [
    "CANCELED",
    "FAILED",
    "QUEUED",
    "RUNNING",
    "SUCCEEDED",
    "JobError",
    "add_snapshot",
    "claim_job",
    "create_job",
    "new_job",
    "fail_unclaimed",
    "finish_job",
    "hand_back",
    "heartbeat",
    "latest_snapshot",
    "queue_position",
    "recent_jobs",
    "record_progress",
    "record_weights",
    "request_cancel",
]
