"""A job's images over HTTP: its output (a picture or a clip), snapshots, a clip's frames and
its inputs, streamed by this process or redirected to the S3 server's presigned URLs."""

from __future__ import annotations

from flask import Response, abort, redirect, request

from shared.clips import CLIP
from shared.storage import MissingObject, S3Storage
from shared.video import ClipInfo

from .api import bp
from .services import Services, services
from .views import load_job


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
