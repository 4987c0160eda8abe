"""The HTML pages: the form, a job's live page, and the list of this browser's jobs."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from shared.db import database_unreachable
from shared.jobs import recent_jobs
from shared.keys import LimiterUnavailable, LimitExceeded
from shared.params import StyleParams
from shared.sweeps import NOT_SWEEPABLE, AxisError, axis_from_flag

from .access import (
    CSRF_FIELD,
    browser_owner,
    counted,
    csrf_ok,
    csrf_token,
    limit_message,
    remember_browser,
    submission_limit,
)
from .forms import FieldError, SubmissionError, check_form_read
from .presets import PRESETS
from .services import services
from .submit import submit
from .sweeps import counted_jobs, load_sweep, submit_sweep, sweep_cells, sweep_json
from .views import job_json, load_job, position

bp = Blueprint("pages", __name__)
bp.after_request(remember_browser)  # the first page a browser sees gives it its cookie

# The form shows these up front; every other StyleParams field is under "advanced".
MAIN_FIELDS = ("size", "iterations", "style_weight", "preserve_colors")
# The "Compare settings" switch and its two axes, each a parameter and its values.
COMPARE_FIELDS = ("compare", "axis_1_name", "axis_1_values", "axis_2_name", "axis_2_values")


def form_context(values=None, errors=None) -> dict:
    fields = StyleParams.model_fields
    return {
        "presets": PRESETS,
        "fields": fields,
        "main_fields": MAIN_FIELDS,
        "advanced_fields": [name for name in fields if name not in MAIN_FIELDS],
        "defaults": StyleParams().model_dump(mode="json"),
        "values": values or {},
        "errors": errors or {},
        "settings": services().settings,
        "sweepable": [name for name in fields if name not in NOT_SWEEPABLE],
    }


@bp.context_processor
def page_tokens() -> dict:
    return {"csrf_token": csrf_token}  # the form's hidden field, and a meta tag for job.js


@bp.get("/")
def form():
    return render_template("form.html", **form_context())


@bp.post("/jobs")
def create():
    try:
        check_form_read(request)
        if not csrf_ok(request.form.get(CSRF_FIELD)):
            return render_template(
                "form.html",
                **form_context(
                    request.form,
                    {
                        "form": "this form has expired, or your browser did not send its cookie: reload the page "
                        "and submit again (the service needs cookies to know your jobs)."
                    },
                ),
            ), 403
        if request.form.get("compare"):
            axes = _form_axes(request.form)
            with counted(submission_limit(None), jobs=counted_jobs(axes)):
                sweep = submit_sweep(
                    services(), request.form, request.files, axes, ignore=COMPARE_FIELDS, owner=browser_owner()
                )
            return redirect(url_for("pages.sweep", sweep_id=sweep.id), code=303)
        with counted(submission_limit(None)):
            job = submit(services(), request.form, request.files, owner=browser_owner(), ignore=COMPARE_FIELDS)
    except SubmissionError as err:
        errors: dict[str, str] = {}
        for problem in err.errors:
            errors.setdefault(problem.field or "form", problem.message)
        return render_template("form.html", **form_context(request.form, errors)), 422
    except LimitExceeded as err:
        page = render_template("form.html", **form_context(request.form, {"form": limit_message(err)}))
        return page, 429, {"Retry-After": str(err.retry_after)}
    except LimiterUnavailable:
        return render_template(
            "form.html",
            **form_context(request.form, {"form": "the job queue cannot be reached; try again in a minute"}),
        ), 503
    except RequestEntityTooLarge:
        limit = services().settings.max_upload_bytes / 2**20
        return render_template(
            "form.html",
            **form_context(None, {"content": f"the images are over {limit:.0f} MB in all; choose smaller files"}),
        ), 413
    except Exception as err:
        if not database_unreachable(err):
            raise
        # The form comes back as it was filled in, rather than an error page that loses it.
        page = render_template(
            "form.html",
            **form_context(
                request.form,
                {"form": "the service's database cannot be reached right now; submit again in a few seconds"},
            ),
        )
        return page, 503, {"Retry-After": "5"}
    return redirect(url_for("pages.job", job_id=job.id), code=303)


def _form_axes(form) -> list:
    """The form's one or two axes; a second with no values, or no parameter, is left out."""
    axes = []
    for n in (1, 2):
        name, values = form.get(f"axis_{n}_name", "").strip(), form.get(f"axis_{n}_values", "").strip()
        if n == 2 and not (name and values):
            continue
        try:
            axes.append(axis_from_flag(f"{name}={values}"))
        except AxisError as err:
            raise SubmissionError([FieldError("axes", str(err))]) from None
    return axes


@bp.get("/sweeps/<sweep_id>")
def sweep(sweep_id: str):
    with services().sessions() as session:
        found = load_sweep(session, sweep_id)
        body = sweep_json(found, sweep_cells(session, sweep_id))
    mine = found.owner is not None and found.owner == browser_owner()
    return render_template("sweep.html", sweep=body, mine=mine)


@bp.get("/jobs/<job_id>")
def job(job_id: str):
    with services().sessions() as session:
        found = load_job(session, job_id)
        body = job_json(found, position(session, found))
    # Anyone with the link may watch; only the browser that submitted the job may cancel or delete it.
    mine = found.owner is not None and found.owner == browser_owner()
    return render_template("job.html", job=body, mine=mine)


@bp.get("/jobs")
def jobs():
    page = min(max(request.args.get("page", 1, type=int) or 1, 1), 1_000_000)
    per_page = 20
    owner = browser_owner()
    with services().sessions() as session:
        found, total = (
            recent_jobs(session, owner=owner, limit=per_page, offset=(page - 1) * per_page) if owner else ([], 0)
        )
        items = [job_json(j, position(session, j), snapshots=False) for j in found]
    return render_template("jobs.html", jobs=items, page=page, pages=max(1, -(-total // per_page)), total=total)


def error_page(err: HTTPException):
    return render_template("error.html", error=err), err.code or 500
