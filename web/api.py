"""The JSON API under /api/v1, its server-sent events and images, and /healthz."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, abort, jsonify, request, stream_with_context, url_for
from sqlalchemy import text
from werkzeug.exceptions import HTTPException

from shared.clips import CLIP, cancel_segments
from shared.db import database_unreachable, describe_db_error
from shared.deletion import delete_job
from shared.jobs import recent_jobs, request_cancel
from shared.keys import LimiterUnavailable, LimitExceeded, hash_secret, new_job_token
from shared.models import Job, Sweep

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
from .forms import SubmissionError, check_form_read
from .openapi import openapi_document
from .services import services
from .submit import submit
from .views import job_json, load_job, position

bp = Blueprint("api", __name__)
log = logging.getLogger("impasto.web")

# How often the event stream looks at the job. How long one stream lasts is a setting
# (IMPASTO_EVENT_STREAM_LIMIT); at its end the server says `reconnect` and the page does.
EVENT_POLL_S = 0.3
# Each open stream holds one server thread; past this many per process a page is told to poll
# instead (503), so that streams never take every thread and leave none for requests.
EVENT_STREAMS_PER_PROCESS = 8

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
        refuse_unless_allowed(load_job(session, job_id), "cancel")
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
        refuse_unless_allowed(job, "delete")
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
    return event_stream_response(lambda: _event_stream(job_id), f"/api/v1/jobs/{job_id}")


def event_stream_response(stream: Callable[[], Iterator[str]], poll_path: str) -> Response:
    """A server-sent event stream, one of at most EVENT_STREAMS_PER_PROCESS in this process
    (job and sweep pages alike); past that a 503 tells the page to poll `poll_path`."""
    if not _streams.acquire(blocking=False):
        return error_response(
            503,
            "unavailable",
            f"too many live pages on this server; poll GET {poll_path} instead",
            headers={"Retry-After": "5"},
        )
    response = Response(
        stream_with_context(stream()),
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


def refuse_unless_allowed(thing: Job | Sweep, action: str, kind: str = "job") -> None:
    """A 403 unless this request may change the job (or the sweep's cells)."""
    if not may_change(thing):
        abort(
            error_response(
                403,
                "forbidden",
                f"to {action} a {kind}, send its token (header {JOB_TOKEN_HEADER}, "
                f"from the answer to its submission) or the API key that "
                f"submitted it, or use the page of the browser that submitted it",
            )
        )


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
