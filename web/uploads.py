"""An uploaded file checked before any work: an image from its header (decoded in full only
when small), a clip in full (container, codec, frames), a style mask as a grey-scale image."""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.datastructures import FileStorage

from shared.images import CONTENT_TYPES, ImageError, decode_mask, inspect_image
from shared.settings import Settings
from shared.video import ClipError, ClipInfo, is_clip, probe_clip

from .forms import FieldError, SubmissionError

# Uploads of at most this many pixels are decoded in full at submission, so that a damaged
# small file is refused at once (a few MB for each request thread); larger ones are checked
# from their header only and decoded by the worker: 16 threads decoding 40-megapixel images
# at once would take gigabytes (bench/web_memory.py).
WEB_DECODE_PIXELS = 1_000_000


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


def _clip_upload(data: bytes, settings: Settings) -> Upload:
    """A content clip, checked in full (container, codec, frames, pixels, every frame decoded)."""
    try:
        info = probe_clip(data, name="the content clip", max_frames=settings.max_frames, max_pixels=settings.max_pixels)
    except ClipError as err:
        raise SubmissionError([FieldError("content", str(err), "invalid_clip")]) from None
    return Upload(data, info.extension.lstrip("."), info.content_type, info.size, info)


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
