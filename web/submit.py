"""A submission, from the form or the API, checked and turned into a queued job (or a clip
of segments): its fields read by web/forms.py, its files by web/uploads.py, its inputs
stored under the job's own keys, the row committed, then the message sent."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import FileStorage, MultiDict

from shared.clips import new_clip
from shared.jobs import create_job
from shared.models import Job, new_job_id
from shared.params import StyleParams
from shared.storage import job_key
from shared.tasks import enqueue_stylize

from .forms import FILE_FIELDS, FieldError, SubmissionError, parse_params
from .presets import PRESETS, preset_bytes
from .services import Services
from .uploads import Upload, decode_mask_upload, decode_upload

log = logging.getLogger("impasto.web")


@dataclass(frozen=True)
class Checked:
    """A submission that passed every check: its parameters and its images, not yet stored."""

    params: StyleParams
    images: list[tuple[str, Upload, str]]  # (field, upload, display name), the content first
    preset: str


def submit(
    services: Services,
    form: MultiDict[str, str],
    files: MultiDict[str, FileStorage],
    *,
    owner: str | None = None,
    token_hash: str | None = None,
    ignore: tuple[str, ...] = (),
) -> Job:
    """Check everything, store the inputs, commit the job row (with who owns it and the hash
    of the token that cancels it), then enqueue it. The committed row is the job: a send that
    fails leaves it queued, and the reconciler sends it once the broker is back. `ignore`
    names form fields that are not the job's (the form's compare settings, when off)."""
    checked = check_submission(services, form, files, ignore=ignore)
    job_id = new_job_id()
    inputs = store_inputs(services, job_id, checked)
    queue = services.settings.queue_for(checked.params.size)  # small previews may go to the CPU queue
    clip = checked.images[0][1].clip
    if clip is not None:
        return _submit_clip(services, job_id, checked, {**inputs, "clip": clip.as_dict()}, owner, token_hash, queue)
    with services.sessions() as session:
        job = create_job(
            session,
            job_id=job_id,
            params=checked.params.model_dump(mode="json"),
            inputs=inputs,
            token_hash=token_hash,
            owner=owner,
            queue=queue,
        )
    send(services, job.id, queue)
    return job


def _submit_clip(
    services: Services,
    job_id: str,
    checked: Checked,
    inputs: dict[str, Any],
    owner: str | None,
    token_hash: str | None,
    queue: str,
) -> Job:
    """A clip: its row and its segments' committed together, then each segment sent."""
    settings = services.settings
    clip, segments = new_clip(
        params=checked.params.model_dump(mode="json"),
        inputs=inputs,
        frames=inputs["clip"]["frames"],
        segment_frames=settings.segment_frames,
        overlap=settings.segment_overlap,
        job_id=job_id,
        token_hash=token_hash,
        owner=owner,
        queue=queue,
    )
    with services.sessions() as session:
        session.add_all([clip, *segments])
        session.commit()
        ids = [segment.id for segment in segments]
    for segment_id in ids:
        send(services, segment_id, queue)
    return clip


def check_submission(
    services: Services, form: MultiDict[str, str], files: MultiDict[str, FileStorage], *, ignore: tuple[str, ...] = ()
) -> Checked:
    """The parameters and images of a submission, every problem found raised as one
    SubmissionError; `ignore` names form fields another caller reads (a sweep's axes)."""
    settings = services.settings
    if ignore:
        form = MultiDict([(k, v) for k, v in form.items(multi=True) if k not in ignore])
    errors: list[FieldError] = []
    params = None
    try:
        params = parse_params(form, settings)
    except SubmissionError as err:
        errors += err.errors

    for name in files:
        if name not in FILE_FIELDS:
            errors.append(
                FieldError(
                    name,
                    f"unknown file field {name!r}; send the photo as 'content', each painting as 'style' "
                    f"and any masks as 'style_mask'",
                )
            )
    contents = [f for f in files.getlist("content") if f]
    if len(contents) > 1:
        errors.append(
            FieldError("content", f"{len(contents)} content images were sent; send exactly one", "invalid_image")
        )
    content = contents[0] if contents else None
    styles = [f for f in files.getlist("style") if f and f.filename]
    preset = form.get("style_preset", "").strip()
    if content is None or not content.filename:
        errors.append(FieldError("content", "choose a content image (a photo)", "missing_field"))
    if preset and styles:
        errors.append(FieldError("style_preset", "choose a built-in style or upload style images, not both"))
    elif preset and preset not in PRESETS:
        errors.append(FieldError("style_preset", f"unknown style {preset!r}; choose one of {', '.join(PRESETS)}"))
    elif not preset and not styles:
        errors.append(
            FieldError("style", "upload a style image (a painting) or choose a built-in style", "missing_field")
        )
    elif len(styles) > settings.max_styles:
        errors.append(FieldError("style", f"{len(styles)} style images; at most {settings.max_styles}"))
    count = 1 if preset else len(styles)
    masks = [f for f in files.getlist("style_mask") if f and f.filename]
    if masks and count and len(masks) != count:
        errors.append(
            FieldError(
                "style_mask",
                f"{len(masks)} masks for {count} style images; send one style_mask per style, in the same order",
                "invalid_image",
            )
        )
    if params is not None and count:
        try:
            params.style_blend_for(count)
        except ValueError as err:
            errors.append(FieldError("style_blend", str(err)))
    if errors:
        raise SubmissionError(errors)

    decoded: list[tuple[str, Upload, str]] = []
    for field, upload in [("content", content), *(("style", s) for s in styles)]:
        try:
            decoded.append((field, decode_upload(upload, field, settings), upload.filename or field))
        except SubmissionError as err:
            errors += err.errors
    assert params is not None
    if decoded and decoded[0][0] == "content":
        # The engine's own rule: an image too thin for the layers at this size fails there.
        problem = params.output_size_problem(decoded[0][1].size)
        if problem is not None:
            errors.append(FieldError("content", f"the content image is too thin: {problem}"))
    if masks and decoded and decoded[0][0] == "content" and decoded[0][1].clip is not None:
        # worker/clips.py paints frames without masks: refused rather than silently dropped.
        errors.append(
            FieldError(
                "style_mask",
                "style masks apply to a photo, not to a clip; send the clip without style_mask",
                "invalid_image",
            )
        )
        masks = []
    for index, mask in enumerate(masks, start=1):
        try:
            decoded.append(("style_mask", decode_mask_upload(mask, index, settings), mask.filename or "mask"))
        except SubmissionError as err:
            errors += err.errors
    if errors:
        raise SubmissionError(errors)
    if preset:
        decoded.insert(1, ("style", Upload(preset_bytes(preset), "jpg", "image/jpeg", (0, 0)), PRESETS[preset].title))
    return Checked(params, decoded, preset)


def store_inputs(services: Services, job_id: str, checked: Checked) -> dict[str, Any]:
    """Store the job's images under its own keys; the `inputs` of its row."""
    inputs: dict[str, Any] = {"content": None, "styles": [], "style_preset": checked.preset or None}
    if any(field == "style_mask" for field, _, _ in checked.images):
        inputs["style_masks"] = []
    for index, (field, upload, name) in enumerate(checked.images):
        key = job_key(job_id, f"inputs/{index}-{field}.{upload.extension}")  # generated, never the upload's name
        services.storage.put(key, upload.data, upload.content_type)
        item = {"key": key, "name": _display_name(name), "content_type": upload.content_type}
        if field == "content":
            inputs["content"] = item
        else:
            inputs["styles" if field == "style" else "style_masks"].append(item)
    return inputs


def send(services: Services, job_id: str, queue: str) -> None:
    """Send a committed job to its queue; a failed send is logged and left to the reconciler."""
    try:
        enqueue_stylize(services.celery, job_id, queue)
    except Exception as err:  # kombu's connection errors have no common base worth naming
        # The broker is a delivery hint: the job stays queued, and the reconciler sends a queued
        # job the broker does not hold once IMPASTO_ENQUEUE_GRACE has passed since this attempt.
        log.warning("job=%s event=enqueue-failed queue=%s error=%r; the reconciler sends it later", job_id, queue, err)


def _display_name(name: str) -> str:
    """The file's own name, without any folders a browser or client sent with it."""
    return name.replace("\\", "/").rsplit("/", 1)[-1][:200] or "image"
