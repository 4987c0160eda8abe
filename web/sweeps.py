"""Sweeps over HTTP: submit one (API and form), follow it, cancel it, and its contact sheet.

A sweep is submitted with every field a job takes plus its axes; the photo and styles are
checked once, each cell's parameters as a job's would be, and the sweep row and all its cells
are committed together, then each cell is sent to its queue as any job is.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

from flask import Blueprint, Response, abort, jsonify, request, url_for
from PIL import Image
from werkzeug.datastructures import FileStorage, MultiDict

from shared.jobs import new_job, request_cancel
from shared.keys import LimiterUnavailable, LimitExceeded, hash_secret, new_job_token
from shared.models import Job, Sweep, new_job_id
from shared.params import StyleParams
from shared.sheet import contact_sheet
from shared.storage import MissingObject
from shared.sweeps import (
    Axis,
    AxisError,
    axes_from_json,
    check_axes,
    create_sweep,
    grid,
    load_axes,
    sweep_cells,
    sweep_status,
)

from .access import Unauthorized, api_key, counted, key_owner, submission_limit
from .api import (
    event_stream_response,
    limiter_unavailable,
    over_limit,
    refuse_unless_allowed,
    submission_error,
    unauthorized,
)
from .forms import FieldError, SubmissionError, parse_params
from .services import Services, services
from .submit import Checked, check_submission, send, store_inputs
from .views import JOB_ID

bp = Blueprint("sweeps", __name__)
bp.register_error_handler(Unauthorized, unauthorized)  # the same answers as the jobs API's
bp.register_error_handler(LimitExceeded, over_limit)
bp.register_error_handler(LimiterUnavailable, limiter_unavailable)
log = logging.getLogger("impasto.web")

SWEEP_FIELDS = ("axes",)  # the API's; the form's are web.pages.COMPARE_FIELDS
SHEET_CELL = 256  # the long side of each cell on the served contact sheet
EVENT_POLL_S = 0.5


def submit_sweep(
    services: Services,
    form: MultiDict[str, str],
    files: MultiDict[str, FileStorage],
    axes: Sequence[Axis],
    *,
    ignore: tuple[str, ...],
    owner: str | None = None,
    token_hash: str | None = None,
) -> Sweep:
    """Check the photo, styles and parameters once and every cell's parameters as a job's,
    store each cell's inputs, commit the sweep with its cells, then send each cell."""
    checked = check_submission(services, form, files, ignore=ignore)
    if checked.images[0][1].clip is not None:  # a clip is already many jobs (shared/clips.py)
        raise SubmissionError([FieldError("content", "a sweep paints a photo; submit a clip alone", "invalid_clip")])
    base = MultiDict([(k, v) for k, v in form.items(multi=True) if k not in ignore])
    try:
        cells = check_axes(axes, checked.params.model_dump(), services.settings.max_sweep_cells)
    except AxisError as err:
        raise SubmissionError([FieldError("axes", str(err))]) from None
    cell_params = [_cell_params(services, base, checked, cell.overrides(axes), cell.label(axes)) for cell in cells]

    sweep_id = new_job_id()
    jobs = []
    for cell, params in zip(cells, cell_params):
        job_id = new_job_id()
        # Each cell keeps its own copy of the inputs, so that deleting one cell (or its
        # retention) never takes another's images.
        jobs.append(
            new_job(
                job_id=job_id,
                params=params.model_dump(mode="json"),
                inputs=store_inputs(services, job_id, checked),
                token_hash=token_hash,
                owner=owner,
                queue=services.settings.queue_for(params.size),
                sweep_id=sweep_id,
                cell=cell.index,
            )
        )
    with services.sessions() as session:
        sweep = create_sweep(session, sweep_id, axes, jobs, token_hash=token_hash, owner=owner)
    log.info("sweep=%s event=created cells=%d axes=%s", sweep_id, len(jobs), ",".join(a.name for a in axes))
    for job in jobs:
        send(services, job.id, job.queue)
    return sweep


def _cell_params(
    services: Services, base: MultiDict[str, str], checked: Checked, overrides: dict[str, str], label: str
) -> StyleParams:
    """A cell's parameters, checked as a job's (the service's limits included)."""
    form = MultiDict([(k, v) for k, v in base.items(multi=True) if k not in overrides])
    for name, value in overrides.items():
        form.add(name, value)
    try:
        params = parse_params(form, services.settings)
        params.style_blend_for(sum(field == "style" for field, _, _ in checked.images))
    except SubmissionError as err:
        problem = err.errors[0]
        raise SubmissionError([FieldError("axes", f"cell {label}: {problem.field}: {problem.message}")]) from None
    except ValueError as err:
        raise SubmissionError([FieldError("axes", f"cell {label}: style_blend: {err}")]) from None
    problem = params.output_size_problem(checked.images[0][1].size)
    if problem is not None:
        raise SubmissionError([FieldError("axes", f"cell {label}: the content image is too thin: {problem}")])
    return params


@bp.post("/api/v1/sweeps")
def create():
    key = api_key()
    if key is None and services().settings.require_api_key:
        raise Unauthorized("this service takes jobs from API keys only: send 'Authorization: Bearer KEY'")
    token = new_job_token()
    try:
        axes = _api_axes()
        with counted(submission_limit(key), jobs=counted_jobs(axes)):
            sweep = submit_sweep(
                services(),
                request.form,
                request.files,
                axes,
                ignore=SWEEP_FIELDS,
                owner=key_owner(key) if key else None,
                token_hash=hash_secret(token),
            )
    except SubmissionError as err:
        return submission_error(err)
    with services().sessions() as session:
        body = sweep_json(session.get(Sweep, sweep.id), sweep_cells(session, sweep.id))
    body["token"] = token  # shown this once: it cancels the sweep's cells, or deletes them one by one
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = url_for("sweeps.show", sweep_id=sweep.id)
    return response


def _api_axes() -> list[Axis]:
    given = request.form.getlist("axes")
    if len(given) != 1:
        example = 'axes={"style_weight": [1, 10, 100]}'
        message = "give the axes once" if given else f"give the axes to compare, e.g. {example}"
        raise SubmissionError([FieldError("axes", message, "missing_field" if not given else "invalid_parameter")])
    try:
        return axes_from_json(given[0])
    except AxisError as err:
        raise SubmissionError([FieldError("axes", str(err))]) from None


def counted_jobs(axes: Sequence[Axis]) -> int:
    """How many jobs the quota counts: the cells, or 1 while the axes are still to be refused."""
    count = _size(axes)
    return count if 0 < count <= services().settings.max_sweep_cells else 1


@bp.get("/api/v1/sweeps/<sweep_id>")
def show(sweep_id: str):
    with services().sessions() as session:
        sweep = load_sweep(session, sweep_id)
        return jsonify(sweep_json(sweep, sweep_cells(session, sweep_id)))


@bp.post("/api/v1/sweeps/<sweep_id>/cancel")
def cancel(sweep_id: str):
    with services().sessions() as session:
        sweep = load_sweep(session, sweep_id)
        refuse_unless_allowed(sweep, "cancel", "sweep")
        for job in sweep_cells(session, sweep_id).values():
            if not job.is_final:
                request_cancel(session, job.id)
        body = sweep_json(sweep, sweep_cells(session, sweep_id))
    log.info("sweep=%s event=cancel-requested", sweep_id)
    response = jsonify(body)
    response.status_code = 202 if body["status"] == "running" else 200
    return response


@bp.get("/api/v1/sweeps/<sweep_id>/sheet.png")
def sheet(sweep_id: str):
    with services().sessions() as session:
        sweep = load_sweep(session, sweep_id)
        cells = sweep_cells(session, sweep_id)
        axes = load_axes(sweep)
        sources = {index: _picture_key(job) for index, job in cells.items()}
        notes = [_note(cells.get(i)) for i in range(_size(axes))]
        anyone = next(iter(cells.values()), None)
        inputs = anyone.inputs if anyone is not None else None
    if inputs is None:
        abort(404, f"every cell of sweep {sweep_id} has been deleted")
    storage = services().storage
    pictures = [_open(storage, sources.get(i)) for i in range(_size(axes))]
    content = _open(storage, inputs["content"]["key"]) or Image.new("RGB", (64, 64), "white")
    styles = [s for s in (_open(storage, item["key"]) for item in inputs["styles"]) if s is not None]
    picture = contact_sheet(axes, pictures, content=content, styles=styles, notes=notes, cell=SHEET_CELL)
    out = io.BytesIO()
    picture.save(out, "PNG")
    response = Response(out.getvalue(), mimetype="image/png")
    response.headers["Cache-Control"] = "no-cache"  # it changes as the cells paint
    if request.args.get("download"):
        response.headers["Content-Disposition"] = f'attachment; filename="impasto-sweep-{sweep_id}.png"'
    return response


@bp.get("/api/v1/sweeps/<sweep_id>/events")
def events(sweep_id: str):
    """`sweep` events with the sweep's JSON whenever a cell's status, progress or snapshot
    changes; the stream ends once every cell has ended, or after the stream limit (`reconnect`)."""
    with services().sessions() as session:
        load_sweep(session, sweep_id)
    return event_stream_response(lambda: _event_stream(sweep_id), f"/api/v1/sweeps/{sweep_id}")


def _event_stream(sweep_id: str) -> Iterator[str]:
    last = None
    deadline = time.monotonic() + services().settings.event_stream_limit
    yield "retry: 1000\n\n"
    while True:
        with services().sessions() as session:
            sweep = session.get(Sweep, sweep_id)
            if sweep is None:
                return
            body = sweep_json(sweep, sweep_cells(session, sweep_id))
        seen = [(c["status"], c["progress"]["iteration"], c["snapshot_url"]) for c in body["cells"]]
        if seen != last:
            yield f"event: sweep\ndata: {json.dumps(body)}\n\n"
        last = seen
        if body["status"] not in ("queued", "running"):
            return
        if time.monotonic() >= deadline:
            yield f"event: reconnect\ndata: {json.dumps(body)}\n\n"
            return
        time.sleep(EVENT_POLL_S)
        yield ": keep-alive\n\n"


def load_sweep(session, sweep_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id, populate_existing=True) if JOB_ID.match(sweep_id) else None
    if sweep is None:
        abort(404, f"no sweep {sweep_id[:40]!r}")
    return sweep


def sweep_json(sweep: Sweep, cells: dict[int, Job]) -> dict[str, Any]:
    """The API's view of a sweep (the `Sweep` schema of the OpenAPI document)."""
    axes = load_axes(sweep)
    items = []
    for cell in grid(axes):
        job = cells.get(cell.index)
        items.append(_cell_json(job, list(cell.values)))
    return {
        "id": sweep.id,
        "status": sweep_status(item["status"] if item["status"] != "deleted" else None for item in items),
        "axes": [axis.as_json() for axis in axes],
        "cells": items,
        "sheet_url": url_for("sweeps.sheet", sweep_id=sweep.id),
        "url": url_for("pages.sweep", sweep_id=sweep.id),
        "created_at": sweep.created_at.isoformat().replace("+00:00", "Z"),
    }


def _cell_json(job: Job | None, values: list[str]) -> dict[str, Any]:
    if job is None:
        progress = {"iteration": 0, "iterations": 0, "fraction": 0.0}
        return {"job_id": None, "values": values, "status": "deleted", "progress": progress, "snapshot_url": None}
    latest = job.snapshots[-1] if job.snapshots else None
    return {
        "job_id": job.id,
        "values": values,
        "status": job.status,
        "progress": {
            "iteration": job.iteration,
            "iterations": job.iterations,
            "fraction": round(job.iteration / job.iterations, 4) if job.iterations else 0.0,
        },
        "output_url": url_for("api.output", job_id=job.id) if job.output_key else None,
        "snapshot_url": url_for("api.snapshot", job_id=job.id, iteration=latest.iteration) if latest else None,
        "url": url_for("pages.job", job_id=job.id),
        "job_url": url_for("api.show", job_id=job.id),
    }


def _picture_key(job: Job) -> str | None:
    """The cell's output, else its latest snapshot, else nothing yet."""
    if job.output_key:
        return job.output_key
    return job.snapshots[-1].key if job.snapshots else None


def _note(job: Job | None) -> str:
    if job is None:
        return "deleted"
    if job.status == "running" and job.iterations:
        return f"running {100 * job.iteration // job.iterations}%"
    return job.status


def _size(axes: Sequence[Axis]) -> int:
    return math.prod(len(axis.values) for axis in axes)


def _open(storage, key: str | None) -> Image.Image | None:
    if key is None:
        return None
    try:
        image = Image.open(io.BytesIO(storage.get(key)))
        image.draft("RGB", (SHEET_CELL * 2, SHEET_CELL * 2))  # JPEG inputs decode at a fraction of their size
        return image.convert("RGB")
    except (MissingObject, OSError):
        return None
