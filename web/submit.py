"""A submission, from the form or the API, checked and turned into a queued job.

Both entry points send the same multipart fields: a `content` file, one or more `style` files
or a `style_preset`, optionally one `style_mask` file per style (in the same order), and the
parameters named as the command line's flags with underscores.
Every problem is collected as a FieldError naming the field, for a 422 or a message beside
the form field.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Request
from pydantic import ValidationError
from werkzeug.datastructures import FileStorage, MultiDict

from shared.clips import new_clip
from shared.images import CONTENT_TYPES, ImageError, decode_mask, inspect_image
from shared.jobs import create_job
from shared.models import Job, new_job_id
from shared.params import WEIGHT_CHOICES, StyleParams, is_list_field
from shared.settings import Settings
from shared.storage import job_key
from shared.tasks import enqueue_stylize
from shared.video import ClipError, ClipInfo, is_clip, probe_clip

from .presets import PRESETS, preset_bytes
from .services import Services

# Uploads of at most this many pixels are decoded in full at submission, so that a damaged
# small file is refused at once (a few MB for each request thread); larger ones are checked
# from their header only and decoded by the worker: 16 threads decoding 40-megapixel images
# at once would take gigabytes (bench/web_memory.py).
WEB_DECODE_PIXELS = 1_000_000

log = logging.getLogger("impasto.web")

# Fields that hold several values: repeated, or one field separated by commas or spaces.
LIST_FIELDS = {name for name in StyleParams.model_fields if is_list_field(name)}
FILE_FIELDS = ("content", "style", "style_mask")
OTHER_FIELDS = ("style_preset", "csrf_token")


@dataclass(frozen=True)
class FieldError:
    field: str | None
    message: str
    code: str = "invalid_parameter"


class SubmissionError(Exception):
    def __init__(self, errors: list[FieldError]):
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


class FormRequest(Request):
    """Flask's request, except that a form werkzeug cannot parse (a field or file name that is
    not UTF-8, a multipart body without its boundary) is remembered in `form_error` instead of
    being dropped without a word, which made every such submission "choose a content image"."""

    form_error: str | None = None

    def make_form_data_parser(self):
        parser = super().make_form_data_parser()
        parser.silent = False
        return parser

    def _load_form_data(self) -> None:
        try:
            super()._load_form_data()
        except ValueError as err:  # werkzeug's parse errors; a body too large is not one
            self.form_error = str(err)
            self.__dict__["form"] = self.parameter_storage_class()
            self.__dict__["files"] = self.parameter_storage_class()


def check_form_read(request: Request) -> None:
    """SubmissionError (a 422 naming no field) when the request's form could not be read."""
    request.form  # noqa: B018  (parses the body, once)
    reason = getattr(request, "form_error", None)
    if reason is not None:
        raise SubmissionError(
            [
                FieldError(
                    None,
                    f"the form could not be read ({reason}): send a multipart/form-data body "
                    f"whose field and file names are UTF-8",
                    "unreadable_form",
                )
            ]
        )


def parse_params(form: MultiDict[str, str], settings: Settings) -> StyleParams:
    """The job parameters from form fields; blank fields take their defaults."""
    errors: list[FieldError] = []
    given: dict[str, Any] = {}
    for name in form:
        if name in FILE_FIELDS:  # a part with no filename is text, not a file
            errors.append(
                FieldError(
                    name,
                    f"send the {name} image as a file (a part with a filename), not as a text field",
                    "invalid_image",
                )
            )
            continue
        if name in OTHER_FIELDS:
            continue
        if name not in StyleParams.model_fields:
            errors.append(FieldError(name, f"unknown parameter {name!r}"))
            continue
        values = [v.strip() for v in form.getlist(name) if v.strip()]
        if not values:
            continue
        if name in LIST_FIELDS:
            given[name] = [part for v in values for part in v.replace(",", " ").split()]
        elif len(values) > 1:
            errors.append(FieldError(name, "give this parameter once"))
        else:
            given[name] = values[0]
    if given.get("weights", "auto") not in WEIGHT_CHOICES:
        errors.append(
            FieldError(
                "weights",
                f"use one of {', '.join(WEIGHT_CHOICES)}; the service does not read weight files named by a job",
            )
        )
        given.pop("weights")
    params = None
    try:
        params = StyleParams(**given)
    except ValidationError as err:
        for problem in err.errors():
            field = str(problem["loc"][0]) if problem["loc"] else None
            errors.append(FieldError(field, problem["msg"].removeprefix("Value error, ")))
    if params is not None:
        if params.size > settings.max_size:
            errors.append(FieldError("size", f"at most {settings.max_size} on this service"))
        if params.iterations > settings.max_iterations:
            errors.append(FieldError("iterations", f"at most {settings.max_iterations} on this service"))
        if params.style_scale * params.size > settings.max_size:
            errors.append(
                FieldError(
                    "style_scale",
                    f"style_scale x size is at most {settings.max_size} on "
                    f"this service; use at most {settings.max_size / params.size:.2f}",
                )
            )
        if params.snapshot_every and params.iterations / params.snapshot_every > settings.max_snapshots:
            fewest = -(-params.iterations // settings.max_snapshots)
            errors.append(
                FieldError(
                    "snapshot_every",
                    f"at most {settings.max_snapshots} snapshots per job; use {fewest} or more (or 0 for none)",
                )
            )
    if errors:
        raise SubmissionError(errors)
    assert params is not None
    return params


@dataclass(frozen=True)
class Upload:
    """An uploaded image that passed the checks: its bytes as sent, and what they hold."""

    data: bytes
    extension: str
    content_type: str
    size: tuple[int, int]  # (width, height), upright
    clip: ClipInfo | None = None  # a clip's container, frames and rate (shared/video.py)


def decode_upload(upload: FileStorage, field: str, settings: Settings) -> Upload:
    """An uploaded image checked from its header (format, pixel count, size); decoded in full
    only when it is small (WEB_DECODE_PIXELS). The worker decodes the bytes."""
    data = upload.read()
    label = f"{field} image"
    if not data:
        raise SubmissionError([FieldError(field, f"the {label} is empty; choose an image file", "invalid_image")])
    if field == "content" and is_clip(data):
        return _clip_upload(data, settings)
    try:
        header = inspect_image(
            data, name=f"the {label}", max_pixels=settings.max_pixels, decode_up_to=WEB_DECODE_PIXELS
        )
    except ImageError as err:
        raise SubmissionError([FieldError(field, str(err), "invalid_image")]) from None
    content_type = CONTENT_TYPES.get(header.format, "application/octet-stream")
    return Upload(data, content_type.removeprefix("image/").replace("jpeg", "jpg"), content_type, header.size)


@dataclass(frozen=True)
class Checked:
    """A submission that passed every check: its parameters and its images, not yet stored."""

    params: StyleParams
    images: list[tuple[str, Upload, str]]  # (field, upload, display name), the content first
    preset: str


def _clip_upload(data: bytes, settings: Settings) -> Upload:
    """A content clip, checked in full (container, codec, frames, pixels, every frame decoded)."""
    try:
        info = probe_clip(data, name="the content clip", max_frames=settings.max_frames, max_pixels=settings.max_pixels)
    except ClipError as err:
        raise SubmissionError([FieldError("content", str(err), "invalid_clip")]) from None
    return Upload(data, info.extension.lstrip("."), info.content_type, info.size, info)


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


def decode_mask_upload(upload: FileStorage, index: int, settings: Settings) -> Upload:
    """A style mask checked as the worker will read it (grey-scale, or grey-scale convertible);
    decoded in full when small (WEB_DECODE_PIXELS), from its header only when larger."""
    data = upload.read()
    label = f"style_mask {index}"
    try:
        if not data:
            raise ImageError(f"{label} is empty; send a grey-scale image, white where the style applies")
        header = inspect_image(data, name=label, max_pixels=settings.max_pixels)
        if header.size[0] * header.size[1] <= WEB_DECODE_PIXELS:
            decode_mask(data, name=label, max_pixels=settings.max_pixels)
    except ImageError as err:
        raise SubmissionError([FieldError("style_mask", str(err), "invalid_image")]) from None
    content_type = CONTENT_TYPES.get(header.format, "application/octet-stream")
    return Upload(data, content_type.removeprefix("image/").replace("jpeg", "jpg"), content_type, header.size)


def _display_name(name: str) -> str:
    """The file's own name, without any folders a browser or client sent with it."""
    return name.replace("\\", "/").rsplit("/", 1)[-1][:200] or "image"
