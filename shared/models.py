"""The SQL schema: jobs and their snapshots, sweeps of jobs, API keys. SQL is the source of truth.

Changing a column means a new Alembic revision in migrations/versions.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED)
FINAL_STATUSES = (SUCCEEDED, FAILED, CANCELED)


def new_job_id() -> str:
    """128 random bits, URL-safe: a job id cannot be guessed from another."""
    return secrets.token_urlsafe(16)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use shared.models.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    status: Mapped[str] = mapped_column(String(16), index=True, default=QUEUED)
    # StyleParams as JSON, every default filled in, so a job repeats whatever defaults become.
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # {"content": {"key", "name"}, "styles": [{"key", "name"}], "style_preset": str | None}
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    iterations: Mapped[int] = mapped_column(Integer)
    losses: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    # When the running attempt expects to end, from the measured rate of its current scale;
    # None until the attempt has measured one (cleared at each claim).
    eta_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Written with each progress update; a running job whose heartbeat is old has lost its worker.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # starts, hand-backs on shutdown included
    # Attempts that ended with their worker lost (killed, its machine gone): the reconciler
    # fails the job with `worker_lost` once this reaches the service's max_attempts.
    workers_lost: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    weights: Mapped[str | None] = mapped_column(String(255), nullable=True)
    weights_warning: Mapped[str | None] = mapped_column(Text, nullable=True)
    output_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # When the job's message was last sent to the broker; the reconciler re-sends a queued job
    # the broker no longer holds, and this guards against two reconcilers both sending it.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # SHA-256 of the token returned when the job was created: it cancels or deletes the job.
    token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Who submitted it: "key:<api key id>", "browser:<hash of the browser's cookie>", or None.
    owner: Mapped[str | None] = mapped_column(String(80), nullable=True, index=True)
    # The queue its message is sent to (a device class's: shared.settings.Settings.queue_for).
    queue: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Set, and committed, when a delete begins: from then on the job is gone to every reader,
    # while its files and then its rows are removed (shared/deletion.py).
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    # A cell of a sweep: which sweep, and its place in the sweep's grid (row-major).
    sweep_id: Mapped[str | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="SET NULL"), nullable=True, index=True
    )
    cell: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # A clip (shared/clips.py) is a job of kind "clip" that no worker claims: its segments,
    # jobs of kind "segment" naming it as their parent, paint its frames; its status is derived.
    kind: Mapped[str] = mapped_column(String(16), default="image", server_default="image")
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True, index=True)

    snapshots: Mapped[list[Snapshot]] = relationship(
        back_populates="job", order_by="Snapshot.iteration", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class Snapshot(Base):
    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("job_id", "iteration", name="uq_snapshots_job_iteration"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    iteration: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(255))
    losses: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="snapshots")


class Sweep(Base):
    """A grid of jobs over one or two parameters (shared/sweeps.py); its cells are ordinary jobs."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    # [{"name": a StyleParams field, "values": [each value as the job field takes it]}]
    axes: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    owner: Mapped[str | None] = mapped_column(String(80), nullable=True, index=True)


class ApiKey(Base):
    """A key for the API: only its SHA-256 is stored; `id` is the public part shown in lists."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Jobs this key may submit per rolling 24 hours; None: no limit.
    jobs_per_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
