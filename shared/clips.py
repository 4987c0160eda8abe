"""Clips as jobs: one job row the person sees (kind "clip"), cut into segments (kind "segment",
naming it as their parent) that workers claim and run at once, each an ordinary job with its
own lease, attempts and fencing.

A segment paints a run of frames. All but the first begin `lead_in` frames early: those
frames are painted only to settle the temporal chain, and the finished clip fades from the
previous segment's frames into them (so segments never wait on each other). Each finished
frame is stored as it is made and counted in the segment's `iteration` (frames done) by a
guarded UPDATE, and the clip's own frames become the clip's snapshot rows (its frame strip):
a worker lost mid-segment costs the frame it was painting, and the next attempt goes on from
the last stored one. The segment that stores the clip's last missing frame assembles the
clip; the clip's status is derived from its segments' by guarded UPDATEs (`settle_clip`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .jobs import _held, new_job
from .models import CANCELED, FAILED, FINAL_STATUSES, QUEUED, RUNNING, SUCCEEDED, Job, Snapshot, utcnow
from .storage import job_key

CLIP, SEGMENT = "clip", "segment"


@dataclass(frozen=True)
class Segment:
    """Frames `first` to `last` (inclusive) of a clip, painted after `lead_in` earlier ones."""

    index: int
    first: int
    last: int
    lead_in: int

    @property
    def start(self) -> int:
        """The first frame the segment paints (its lead-in's first)."""
        return self.first - self.lead_in

    @property
    def count(self) -> int:
        """Frames it paints, lead-in included."""
        return self.last - self.start + 1

    def as_dict(self) -> dict[str, int]:
        return {"index": self.index, "first": self.first, "last": self.last, "lead_in": self.lead_in}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Segment:
        return cls(int(data["index"]), int(data["first"]), int(data["last"]), int(data["lead_in"]))


def plan_segments(frames: int, segment_frames: int, overlap: int) -> list[Segment]:
    """The clip's frames in runs of `segment_frames`; every run after the first leads in with
    up to `overlap` frames of the one before."""
    segments = []
    for index, first in enumerate(range(0, frames, segment_frames)):
        last = min(first + segment_frames, frames) - 1
        segments.append(Segment(index, first, last, min(overlap, first)))
    return segments


def frame_key(clip_id: str, frame: int) -> str:
    return job_key(clip_id, f"frames/{frame:05d}.png")


def lead_key(clip_id: str, frame: int) -> str:
    """A lead-in frame: painted by the next segment, faded into this frame of the clip."""
    return job_key(clip_id, f"lead/{frame:05d}.png")


def blend_key(clip_id: str, frame: int) -> str:
    return job_key(clip_id, f"blend/{frame:05d}.png")


def output_key(clip_id: str, extension: str) -> str:
    return job_key(clip_id, f"clip{extension}")


def new_clip(
    *,
    params: dict[str, Any],
    inputs: dict[str, Any],
    frames: int,
    segment_frames: int,
    overlap: int,
    job_id: str,
    token_hash: str | None,
    owner: str | None,
    queue: str | None,
) -> tuple[Job, list[Job]]:
    """The clip's row and its segments' rows (queued), not yet added to a session."""
    clip = new_job(params=params, inputs=inputs, job_id=job_id, token_hash=token_hash, owner=owner, queue=queue)
    clip.kind, clip.iterations = CLIP, frames
    segments = []
    for segment in plan_segments(frames, segment_frames, overlap):
        row = new_job(params=params, inputs={**inputs, "segment": segment.as_dict()}, queue=queue)
        row.kind, row.parent_id, row.iterations = SEGMENT, clip.id, segment.count
        segments.append(row)
    return clip, segments


def start_clip(session: Session, clip_id: str) -> None:
    """queued -> running, when its first segment is claimed."""
    now = utcnow()
    session.execute(update(Job).where(Job.id == clip_id, Job.status == QUEUED).values(status=RUNNING, started_at=now))
    session.execute(update(Job).where(Job.id == clip_id).values(heartbeat_at=now))
    session.commit()


def record_frame(
    session: Session,
    segment_id: str,
    worker: str,
    attempt: int,
    done: int,
    *,
    clip_id: str,
    frame: int,
    key: str | None,
) -> bool | None:
    """The segment's frame number `done` (0-based in its run) is stored: count it, and for one
    of the clip's own frames (`key` not None) add it to the clip's frames. Returns whether a
    cancel was asked for (of the segment or the clip), or None when the claim no longer holds."""
    now = utcnow()
    held = session.execute(
        update(Job)
        .where(*_held(segment_id, worker, attempt), Job.iteration == done)
        .values(iteration=done + 1, heartbeat_at=now)
        .returning(Job.cancel_requested)
    ).first()
    if held is None:
        session.rollback()
        return None
    if key is not None:
        session.add(Snapshot(job_id=clip_id, iteration=frame, key=key, losses=None, created_at=now))
        session.execute(update(Job).where(Job.id == clip_id).values(iteration=Job.iteration + 1, heartbeat_at=now))
    clip_canceled = session.scalar(select(Job.cancel_requested).where(Job.id == clip_id))
    session.commit()
    return bool(held[0] or clip_canceled)


def cancel_requested(session: Session, segment_id: str, clip_id: str) -> bool:
    return bool(session.scalar(select(Job.id).where(Job.id.in_((segment_id, clip_id)), Job.cancel_requested)))


def segments_of(session: Session, clip_id: str) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.parent_id == clip_id).order_by(Job.created_at, Job.id)))


def clip_complete(session: Session, clip_id: str) -> bool:
    """Whether every segment has stored every frame it paints."""
    return all(s.iteration >= s.iterations for s in segments_of(session, clip_id))


def finish_clip(session: Session, clip_id: str, output: str, blended: dict[int, str]) -> bool:
    """running -> succeeded with its clip; the frames faded across a segment boundary point at
    their blended pictures. False when the clip is already over (assembled by another segment)."""
    done = session.execute(
        update(Job)
        .where(Job.id == clip_id, Job.status == RUNNING)
        .values(status=SUCCEEDED, finished_at=utcnow(), output_key=output)
    )
    if done.rowcount != 1:
        session.rollback()
        return False
    for frame, key in blended.items():
        session.execute(update(Snapshot).where(Snapshot.job_id == clip_id, Snapshot.iteration == frame).values(key=key))
    session.commit()
    return True


def settle_clip(session: Session, clip_id: str) -> str | None:
    """Derive the clip's end from its segments': failed when one failed (the others are told to
    stop), canceled when all are over and one was canceled. Returns the clip's status."""
    now = utcnow()
    segments = segments_of(session, clip_id)
    failed = next((s for s in segments if s.status == FAILED), None)
    open_clip = (Job.id == clip_id, Job.status.in_((QUEUED, RUNNING)))
    if failed is not None:
        session.execute(
            update(Job)
            .where(*open_clip)
            .values(
                status=FAILED,
                finished_at=now,
                error_code=failed.error_code,
                error_message=f"frames {_frames(failed)}: {failed.error_message}",
            )
        )
        cancel_segments(session, clip_id)
    elif segments and all(s.status in FINAL_STATUSES for s in segments) and any(s.status == CANCELED for s in segments):
        session.execute(update(Job).where(*open_clip).values(status=CANCELED, finished_at=now))
    session.commit()
    return session.scalar(select(Job.status).where(Job.id == clip_id))


def cancel_segments(session: Session, clip_id: str) -> None:
    """A clip's queued segments end at once; running ones stop after their current iteration."""
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.parent_id == clip_id, Job.status == QUEUED)
        .values(status=CANCELED, finished_at=now, cancel_requested=True)
    )
    session.execute(update(Job).where(Job.parent_id == clip_id, Job.status == RUNNING).values(cancel_requested=True))


def _frames(segment: Job) -> str:
    part = Segment.from_dict(segment.inputs["segment"])
    return f"{part.first}-{part.last}"


__all__ = [
    "CLIP",
    "SEGMENT",
    "Segment",
    "blend_key",
    "cancel_requested",
    "cancel_segments",
    "clip_complete",
    "finish_clip",
    "frame_key",
    "lead_key",
    "new_clip",
    "output_key",
    "plan_segments",
    "record_frame",
    "segments_of",
    "settle_clip",
    "start_clip",
]
