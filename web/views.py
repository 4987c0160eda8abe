"""The API's view of a job (the `Job` schema of the OpenAPI document), and finding the job a
URL names. Pages, the API and the sweeps all show jobs this way."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from flask import abort, url_for
from sqlalchemy.orm import selectinload

from shared.clips import CLIP
from shared.jobs import queue_position
from shared.models import Job, utcnow

from .services import services

JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def load_job(session, job_id: str) -> Job:
    if not JOB_ID.match(job_id):
        abort(404, f"no job {job_id[:40]!r}")
    job = session.get(Job, job_id, options=[selectinload(Job.snapshots)], populate_existing=True)
    if job is None or job.deleted_at is not None:  # a delete under way: gone already
        abort(404, f"no job {job_id}")
    return job


def position(session, job: Job) -> int | None:
    """The job's place in its own queue, in the order workers take them."""
    return queue_position(session, job, default_queue=services().settings.gpu_queue)


def job_json(job: Job, position: int | None, *, snapshots: bool = True) -> dict[str, Any]:
    """The API's view of a job (the `Job` schema of the OpenAPI document)."""
    fraction = job.iteration / job.iterations if job.iterations else 0.0
    body: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "progress": {
            "iteration": job.iteration,
            "iterations": job.iterations,
            "fraction": round(fraction, 4),
            "eta_seconds": _eta(job),
        },
        "losses": job.losses,
        "queue_position": position,
        "params": job.params,
        "style_preset": job.inputs.get("style_preset"),
        "inputs": [url_for("api.input_image", job_id=job.id, index=i) for i in range(1 + len(job.inputs["styles"]))],
        "style_masks": [
            url_for("api.input_image", job_id=job.id, index=1 + len(job.inputs["styles"]) + i)
            for i in range(len(job.inputs.get("style_masks", ())))
        ],
        "snapshots": [
            {"iteration": s.iteration, "url": url_for("api.snapshot", job_id=job.id, iteration=s.iteration)}
            for s in job.snapshots
        ]
        if snapshots
        else [],
        "output_url": url_for("api.output", job_id=job.id) if job.output_key else None,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "cancel_requested": job.cancel_requested,
        "weights": job.weights,
        "weights_warning": job.weights_warning,
        "attempts": job.attempts,
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
        "url": url_for("pages.job", job_id=job.id),
        "kind": job.kind,
        "clip": _clip_json(job, snapshots),
    }
    if job.kind == CLIP:
        info = job.inputs["clip"]
        body["output_url"] = (
            url_for("api.clip_output", job_id=job.id, extension=info["container"]) if job.output_key else None
        )
    return body


def _clip_json(job: Job, frames: bool) -> dict[str, Any] | None:
    """A clip's frames: how many, how many are painted, each painted one's URL, the latest's."""
    if job.kind != CLIP:
        return None
    info = job.inputs["clip"]
    latest = max(job.snapshots, key=lambda s: s.created_at, default=None) if frames else None
    return {
        "frames": info["frames"],
        "frames_done": job.iteration,
        "fps": info["fps"][0] / info["fps"][1],
        "container": info["container"],
        "size": info["size"],
        "audio": info["audio"] is not None,
        "frame_urls": [url_for("api.frame", job_id=job.id, frame=s.iteration) for s in job.snapshots] if frames else [],
        "latest_frame_url": url_for("api.frame", job_id=job.id, frame=latest.iteration) if latest else None,
    }


def _eta(job: Job) -> float | None:
    """Seconds until the running job ends, as its worker last estimated from the rate of its
    current scale; None while no estimate exists (the attempt has not timed enough iterations)."""
    if job.status != "running" or job.eta_at is None:
        return None
    return round(max((job.eta_at - utcnow()).total_seconds(), 0.0), 1)


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None
