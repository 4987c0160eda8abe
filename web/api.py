"""The JSON API under /api/v1, its server-sent events and images, and /healthz."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, abort, jsonify, redirect, request, stream_with_context, url_for
from sqlalchemy import text
from sqlalchemy.orm import selectinload
from werkzeug.exceptions import HTTPException

from shared.clips import CLIP, cancel_segments
from shared.db import database_unreachable, describe_db_error
from shared.jobs import queue_position, recent_jobs, request_cancel
from shared.keys import LimiterUnavailable, LimitExceeded, hash_secret, new_job_token
from shared.models import Job, utcnow
from shared.retention import delete_job
from shared.storage import MissingObject, S3Storage
from shared.video import ClipInfo

from .access import (
    JOB_TOKEN_HEADER,
    Unauthorized,
    api_key,
    counted,
    key_owner,
    limit_message,
    may_change,
    submission_limit,
)
from .openapi import openapi_document
from .services import Services, services
from .submit import SubmissionError, check_form_read, submit

bp = Blueprint("api", __name__)
log = logging.getLogger("impasto.web")

# How often the event stream looks at the job. How long one stream lasts is a setting
# (IMPASTO_EVENT_STREAM_LIMIT); at its end the server says `reconnect` and the page does.
EVENT_POLL_S = 0.3
# Each open stream holds one server thread; past this many per process a page is told to poll
# instead (503), so that streams never take every thread and leave none for requests.
EVENT_STREAMS_PER_PROCESS = 8

JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_streams = threading.BoundedSemaphore(EVENT_STREAMS_PER_PROCESS)


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "field": field}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def submission_error(err: SubmissionError) -> Response:
    """422 naming the first field at fault; `details` lists every problem found."""
    first = err.errors[0]
    details = [{"code": e.code, "message": e.message, "field": e.field} for e in err.errors]
    response = jsonify(
        {"error": {"code": first.code, "message": first.message, "field": first.field, "details": details}}
    )
    response.status_code = 422
    return response


@bp.errorhandler(Unauthorized)
def unauthorized(err: Unauthorized) -> Response:
    return error_response(401, "unauthorized", str(err), headers={"WWW-Authenticate": 'Bearer realm="impasto"'})


@bp.errorhandler(LimitExceeded)
def over_limit(err: LimitExceeded) -> Response:
    code = "quota_exceeded" if err.limit.bucket.startswith("key:") else "rate_limited"
    return error_response(429, code, limit_message(err), headers={"Retry-After": str(err.retry_after)})


@bp.errorhandler(LimiterUnavailable)
def limiter_unavailable(err: LimiterUnavailable) -> Response:
    return error_response(
        503, "unavailable", "the job queue cannot be reached; try again in a minute", headers={"Retry-After": "30"}
    )


@bp.post("/api/v1/jobs")
def create():
    key = api_key()
    if key is None and services().settings.require_api_key:
        raise Unauthorized("this service takes jobs from API keys only: send 'Authorization: Bearer KEY'")
    token = new_job_token()
    try:
        check_form_read(request)
        with counted(submission_limit(key)):
            job = submit(
                services(),
                request.form,
                request.files,
                owner=key_owner(key) if key else None,
                token_hash=hash_secret(token),
            )
    except SubmissionError as err:
        return submission_error(err)
    # The job as it was committed: a worker may already have claimed it, but the answer to a
    # submission is always the queued job.
    with services().sessions() as session:
        body = job_json(job, position(session, job))
    body["token"] = token  # shown this once: it cancels or deletes the job
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = url_for("api.show", job_id=job.id)
    return response


@bp.get("/api/v1/jobs")
def index():
    """The jobs of the API key sent; jobs sent without a key are reached by their own URLs."""
    key = api_key()
    if key is None:
        raise Unauthorized(
            "listing jobs takes an API key ('Authorization: Bearer KEY') and lists its jobs; "
            "a job submitted without a key is at the URL its submission returned"
        )
    limit = _int_arg("limit", 20, 1, 100)
    offset = _int_arg("offset", 0, 0, 10**9)
    with services().sessions() as session:
        jobs, total = recent_jobs(session, owner=key_owner(key), limit=limit, offset=offset)
        items = [job_json(job, position(session, job), snapshots=False) for job in jobs]
    return jsonify({"jobs": items, "total": total, "limit": limit, "offset": offset})


@bp.get("/api/v1/jobs/<job_id>")
def show(job_id: str):
    with services().sessions() as session:
        job = load_job(session, job_id)
        return jsonify(job_json(job, position(session, job)))


@bp.post("/api/v1/jobs/<job_id>/cancel")
def cancel(job_id: str):
    with services().sessions() as session:
        _refuse_unless_allowed(load_job(session, job_id), "cancel")
        job = request_cancel(session, job_id)
        if job is None:
            abort(404, f"no job {job_id}")
        if job.kind == CLIP:  # its segments stop too; the clip ends canceled when they have
            cancel_segments(session, job_id)
            session.commit()
        if job.status in ("succeeded", "failed"):
            return error_response(409, "conflict", f"the job has already {job.status}; nothing to cancel")
        job = load_job(session, job_id)
        response = jsonify(job_json(job, None))
    response.status_code = 202 if job.status == "running" else 200
    return response


@bp.delete("/api/v1/jobs/<job_id>")
def delete(job_id: str):
    """A finished job's images and rows, gone for good; a queued or running one is canceled first."""
    with services().sessions() as session:
        job = load_job(session, job_id)
        _refuse_unless_allowed(job, "delete")
        if not job.is_final:
            return error_response(
                409,
                "conflict",
                f"the job is {job.status}: cancel it first "
                f"(POST /api/v1/jobs/{job_id}/cancel), then delete it once it "
                f"has stopped",
            )
        delete_job(session, services().storage, job_id)  # False: another request deleted it first
    return Response(status=204)


@bp.get("/api/v1/jobs/<job_id>/events")
def events(job_id: str):
    with services().sessions() as session:
        load_job(session, job_id)  # 404 before the stream starts
    if not _streams.acquire(blocking=False):
        return error_response(
            503,
            "unavailable",
            f"too many live pages on this server; poll GET /api/v1/jobs/{job_id} instead",
            headers={"Retry-After": "5"},
        )
    response = Response(
        stream_with_context(_event_stream(job_id)),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    # Released when the server closes the response: the stream ended, the client left, or the
    # body was never sent at all (HEAD).
    response.call_on_close(_streams.release)
    return response


def _event_stream(job_id: str) -> Iterator[str]:
    """A `status` event with the job's JSON, then `snapshot`, `progress` and `status` events as
    those change, each with the job's JSON; the stream ends after the final status, or after
    the stream limit with a `reconnect` event (the job's JSON too): the page opens a new stream."""
    last: dict[str, Any] | None = None
    deadline = time.monotonic() + services().settings.event_stream_limit
    yield "retry: 1000\n\n"
    while True:
        try:
            with services().sessions() as session:
                job = load_job(session, job_id)
                body = job_json(job, position(session, job))
        except HTTPException:  # deleted meanwhile: nothing more to tell
            return
        except Exception as err:
            if not database_unreachable(err):
                raise
            # The page falls back to polling, which answers 503 until the database is back.
            reason = describe_db_error(err)
            log.warning("event=stream-ended reason=database-unavailable job=%s error=%r", job_id, reason)
            return
        seen = {
            "status": body["status"],
            "progress": body["progress"]["iteration"],
            "snapshot": len(body["snapshots"]),
            "queue_position": body["queue_position"],
        }
        if last is None:
            yield f"event: status\ndata: {json.dumps(body)}\n\n"
        else:
            changed = [name for name in ("snapshot", "progress", "status") if seen[name] != last[name]]
            if not changed and seen["queue_position"] != last["queue_position"]:
                changed = ["status"]
            for name in changed:
                yield f"event: {name}\ndata: {json.dumps(body)}\n\n"
        last = seen
        if job.is_final:
            return
        if time.monotonic() >= deadline:
            # A normal end, not a failure: without this the page could not tell it from a
            # broken stream, and would poll for the rest of the job.
            yield f"event: reconnect\ndata: {json.dumps(body)}\n\n"
            return
        time.sleep(EVENT_POLL_S)
        yield ": keep-alive\n\n"


@bp.get("/api/v1/jobs/<job_id>/output.png")
def output(job_id: str):
    with services().sessions() as session:
        job = load_job(session, job_id)
    if not job.output_key:
        abort(404, f"job {job_id} has no output yet (status {job.status})")
    return _image(job.output_key, f"impasto-{job_id}.png")


@bp.get("/api/v1/jobs/<job_id>/output.<any(mp4, webm, gif):extension>")
def clip_output(job_id: str, extension: str):
    with services().sessions() as session:
        job = load_job(session, job_id)
    clip = job.inputs.get("clip")
    if job.kind != CLIP or not job.output_key or clip is None or clip["container"] != extension:
        abort(404, f"job {job_id} has no {extension} clip (status {job.status})")
    info = ClipInfo.from_dict(clip)
    return _image(job.output_key, f"impasto-{job_id}{info.extension}", info.content_type)


@bp.get("/api/v1/jobs/<job_id>/frames/<int:frame>.png")
def frame(job_id: str, frame: int):
    """A clip's stylized frame (0-based), as soon as it is painted."""
    with services().sessions() as session:
        job = load_job(session, job_id)
        found = next((s for s in job.snapshots if s.iteration == frame), None) if job.kind == CLIP else None
    if found is None:
        abort(404, f"job {job_id} has no stylized frame {frame} (yet)")
    return _image(found.key, f"impasto-{job_id}-frame-{frame}.png")


@bp.get("/api/v1/jobs/<job_id>/snapshots/<int:iteration>.png")
def snapshot(job_id: str, iteration: int):
    with services().sessions() as session:
        job = load_job(session, job_id)
        found = next((s for s in job.snapshots if s.iteration == iteration), None)
    if found is None:
        abort(404, f"job {job_id} has no snapshot at iteration {iteration}")
    return _image(found.key, f"impasto-{job_id}-{iteration}.png")


@bp.get("/api/v1/jobs/<job_id>/inputs/<int:index>")
def input_image(job_id: str, index: int):
    with services().sessions() as session:
        job = load_job(session, job_id)
    items = [job.inputs["content"], *job.inputs["styles"], *job.inputs.get("style_masks", ())]
    if index >= len(items):
        abort(404, f"job {job_id} has no input {index}")
    return _image(items[index]["key"], None, items[index].get("content_type", "application/octet-stream"))


@bp.get("/api/v1/openapi.json")
def openapi():
    return jsonify(openapi_document(services().settings))


@bp.get("/healthz")
def healthz():
    checks = {"database": "ok", "broker": "ok"}
    try:
        with services().sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as err:
        if not database_unreachable(err):
            raise
        checks["database"] = f"unreachable: {describe_db_error(err)}"
    try:
        import redis

        client = redis.Redis.from_url(services().settings.require_broker(), socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as err:  # redis raises several unrelated types for one cause
        checks["broker"] = f"unreachable: {err}"
    healthy = all(v == "ok" for v in checks.values())
    response = jsonify({"status": "ok" if healthy else "unavailable", **checks})
    response.status_code = 200 if healthy else 503
    return response


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


def _refuse_unless_allowed(job: Job, action: str) -> None:
    if not may_change(job):
        abort(
            error_response(
                403,
                "forbidden",
                f"to {action} a job, send its token (header {JOB_TOKEN_HEADER}, "
                f"from the answer to its submission) or the API key that "
                f"submitted it, or use the page of the browser that submitted it",
            )
        )


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


def redirect_storage(found: Services) -> S3Storage | None:
    """The S3 storage whose presigned URLs images are redirected to, or None: this process
    streams them (a local folder, or IMPASTO_S3_DOWNLOADS=stream)."""
    if found.settings.s3_downloads == "redirect" and isinstance(found.storage, S3Storage):
        return found.storage
    return None


def _image(key: str, download_name: str | None, content_type: str = "image/png") -> Response:
    """The image's bytes, or a redirect to them on the S3 server; only after the caller's checks."""
    download_name = download_name if request.args.get("download") else None
    storage = redirect_storage(services())
    if storage is not None:
        return _image_redirect(storage, key, download_name, content_type)
    try:
        data = services().storage.get(key)
    except MissingObject:
        abort(404, "the image is no longer stored")
    response = Response(data, mimetype=content_type)
    response.headers["Cache-Control"] = "private, max-age=3600"
    if download_name:
        response.headers["Content-Disposition"] = f'attachment; filename="{download_name}"'
    return response


def _image_redirect(storage: S3Storage, key: str, download_name: str | None, content_type: str) -> Response:
    # A HEAD first, so that a deleted image is this API's 404 and not the S3 server's error.
    if not storage.exists(key):
        abort(404, "the image is no longer stored")
    settings = services().settings
    url = storage.presigned_url(
        key,
        settings.s3_url_expiry,
        endpoint_url=settings.s3_public_endpoint_url,
        content_type=content_type,
        download_name=download_name,
    )
    response = redirect(url, 302)
    response.headers["Cache-Control"] = "private, no-store"  # the URL expires: never reuse this answer
    return response


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    given = request.args.getlist(name)
    if not given:
        return default
    try:
        value = int(given[0]) if len(given) == 1 else None
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        abort(error_response(400, "bad_request", f"{name} must be a whole number from {low} to {high}", name))
    return value
