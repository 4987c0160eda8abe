"""Clips: the one way a path or uploaded bytes become checked video frames, and frames a clip again.

A clip is an MP4 (H.264), a WebM (VP8 or VP9) or an animated GIF, told apart by its first
bytes, never by its name. `probe_clip` checks one before any work (container, codec, frame
count, pixels per frame, and that every frame decodes); `read_frames` decodes it to RGB
images; `encode_clip` writes stylized frames back in the input's container and frame rate,
with the input's audio copied packet for packet (MP4 and WebM; a GIF has none).

PyAV is imported inside the functions, so a process that never sees a clip never loads it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from PIL import Image

from .images import DEFAULT_MAX_PIXELS

DEFAULT_MAX_FRAMES = 600

# The codecs each container may carry (PyAV's decoder names), and what the output is written with.
VIDEO_CODECS = {"mp4": ("h264",), "webm": ("vp8", "vp9"), "gif": ("gif",)}
ENCODERS = {"h264": "libx264", "vp8": "libvpx", "vp9": "libvpx-vp9", "gif": "gif"}
CONTENT_TYPES = {"mp4": "video/mp4", "webm": "video/webm", "gif": "image/gif"}
EXTENSIONS = {"mp4": ".mp4", "webm": ".webm", "gif": ".gif"}
# Encoders that want a pixel format other than the decoded frame's, and sides they want even.
PIXEL_FORMATS = {"libx264": "yuv420p", "libvpx": "yuv420p", "libvpx-vp9": "yuv420p", "gif": "rgb8"}
EVEN_SIDES = {"libx264", "libvpx", "libvpx-vp9"}
# Quality of the written clip: x264's constant rate factor, and libvpx's bit rate ceiling with CRF.
X264_CRF = "18"
VPX_CRF = "10"


class ClipError(ValueError):
    """An input that is not a usable clip; the message says what to fix."""


@dataclass(frozen=True)
class ClipInfo:
    """What a checked clip holds."""

    container: str  # "mp4", "webm" or "gif"
    codec: str  # the video codec as PyAV names its decoder: h264, vp8, vp9, gif
    size: tuple[int, int]  # (width, height) of every frame
    frames: int
    fps: Fraction  # frames per second (a GIF's mean rate)
    audio: str | None  # the audio codec copied into the output, or None

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.container]

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.container]

    def as_dict(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "codec": self.codec,
            "size": list(self.size),
            "frames": self.frames,
            "fps": [self.fps.numerator, self.fps.denominator],
            "audio": self.audio,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipInfo:
        return cls(
            data["container"],
            data["codec"],
            (int(data["size"][0]), int(data["size"][1])),
            int(data["frames"]),
            Fraction(*data["fps"]),
            data.get("audio"),
        )


def sniff_container(head: bytes) -> str | None:
    """The clip container its first bytes name ("mp4", "webm", "gif"), or None for anything else.

    A GIF is named here whether or not it moves; `probe_clip` tells an animated one by its frames."""
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska or WebM; the demuxer tells which
        return "webm"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def is_clip(source: str | os.PathLike[str] | bytes) -> bool:
    """Whether `source` starts like an MP4, a WebM, or a GIF of more than one frame."""
    head = _head(source)
    kind = sniff_container(head)
    if kind != "gif":
        return kind is not None
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=("GIF",)) as image:
            return bool(getattr(image, "is_animated", False))
    except Exception:  # a damaged GIF: the image path reports it
        return False


def probe_clip(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ClipInfo:
    """Check a clip before any work: a container and codec we take, at most `max_frames`
    frames of at most `max_pixels` each, every frame decodable. Raises ClipError."""
    label = name or ("the upload" if isinstance(source, bytes) else os.fspath(source))
    kind = sniff_container(_head(source, label))
    if kind is None:
        raise ClipError(f"{label} is not a clip that can be read; use an MP4 (H.264), WebM (VP8/VP9) or animated GIF")
    frames = 0
    with _open(source, label) as container:
        stream, codec = _video_stream(container, kind, label)
        size = (stream.codec_context.width, stream.codec_context.height)
        _check_pixels(size, label, max_pixels)
        audio = next((s.codec_context.name for s in container.streams.audio), None) if kind != "gif" else None
        try:
            for frame in container.decode(stream):
                frames += 1
                if frames > max_frames:
                    raise ClipError(f"{label} has more than {max_frames} frames; shorten it")
                if (frame.width, frame.height) != size:
                    raise ClipError(f"{label} changes size mid-clip ({frame.width}x{frame.height}); re-encode it")
        except ClipError:
            raise
        except av_errors() as err:  # PyAV's own errors (InvalidDataError, ...) for bad data
            raise ClipError(f"{label} is truncated or corrupt at frame {frames + 1} ({_reason(err)})") from None
        fps = _frame_rate(stream, frames)
        expected = _declared_frames(container, stream, fps)
    if frames == 0:
        raise ClipError(f"{label} holds no frame that can be decoded")
    if expected is not None and frames < expected - max(1, expected // 10):
        # A decoder that meets damaged data often drops frames instead of raising.
        raise ClipError(f"{label} is truncated or corrupt: {frames} of its {expected} frames decode")
    if kind == "gif" and frames == 1:
        raise ClipError(f"{label} is a still GIF, not a clip; submit it as an image")
    return ClipInfo(kind, codec, size, frames, fps, audio)


def read_frames(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    first: int = 0,
    last: int | None = None,
) -> Iterator[Image.Image]:
    """The clip's frames `first` to `last` (inclusive; None: to the end) as RGB images.

    Decodes from the start (a clip here is short); raises ClipError on damaged data."""
    label = name or ("the upload" if isinstance(source, bytes) else os.fspath(source))
    kind = sniff_container(_head(source, label))
    if kind is None:
        raise ClipError(f"{label} is not a clip that can be read")
    with _open(source, label) as container:
        stream, _ = _video_stream(container, kind, label)
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                if index < first:
                    continue
                if last is not None and index > last:
                    break
                yield frame.to_image().convert("RGB")
        except MemoryError:
            raise
        except av_errors() as err:
            raise ClipError(f"{label} is truncated or corrupt at frame {index + 2} ({_reason(err)})") from None


def encode_clip(
    frames: Iterable[Image.Image],
    info: ClipInfo,
    *,
    audio_from: str | os.PathLike[str] | bytes | None = None,
) -> bytes:
    """The frames as a clip in `info`'s container, codec and frame rate, with the audio
    streams of `audio_from` (the input clip) copied across unchanged."""
    import av

    encoder = ENCODERS[info.codec]
    out_buffer = io.BytesIO()
    with av.open(out_buffer, mode="w", format=info.container) as output:
        stream = None
        audio_pairs: list[tuple[Any, Any]] = []
        source = None
        if audio_from is not None and info.audio is not None:
            source = _open(audio_from, "the input clip")
            for in_audio in source.streams.audio:
                audio_pairs.append((in_audio, output.add_stream_from_template(in_audio)))
        try:
            for image in frames:
                if stream is None:
                    stream = _video_encoder(output, encoder, info, image.size)
                rgb = image.convert("RGB").crop((0, 0, stream.width, stream.height))
                frame = av.VideoFrame.from_image(rgb)
                for packet in stream.encode(frame):
                    output.mux(packet)
            if stream is None:
                raise ClipError("no frames to encode")
            for packet in stream.encode(None):
                output.mux(packet)
            if source is not None and audio_pairs:
                streams = {a.index: b for a, b in audio_pairs}
                for packet in source.demux([a for a, _ in audio_pairs]):
                    if packet.dts is None:  # the demuxer's flush packet
                        continue
                    packet.stream = streams[packet.stream.index]
                    output.mux(packet)
        finally:
            if source is not None:
                source.close()
    return out_buffer.getvalue()


def _video_encoder(output: Any, encoder: str, info: ClipInfo, size: tuple[int, int]) -> Any:
    """The output's video stream for frames of `size`; yuv420p needs even sides, so an odd
    side loses its last row or column."""
    width, height = size
    if encoder in EVEN_SIDES:
        width, height = max(2, width - width % 2), max(2, height - height % 2)
    rate = info.fps if info.fps > 0 else Fraction(25)
    stream = output.add_stream(encoder, rate=rate)
    stream.width, stream.height = width, height
    stream.pix_fmt = PIXEL_FORMATS[encoder]
    if encoder == "libx264":
        stream.options = {"crf": X264_CRF, "preset": "medium"}
    elif encoder.startswith("libvpx"):
        stream.options = {"crf": VPX_CRF, "b": "0"}
    return stream


def av_errors() -> tuple[type[BaseException], ...]:
    """The exceptions PyAV raises for bad data (its FFmpeg errors), plus the decoders' ValueError."""
    import av

    return (av.error.FFmpegError, ValueError, OSError, EOFError)


def _head(source: str | os.PathLike[str] | bytes, label: str | None = None) -> bytes:
    if isinstance(source, bytes):
        return source[:16]
    try:
        with open(source, "rb") as file:
            return file.read(16)
    except FileNotFoundError:
        raise ClipError(f"{label or os.fspath(source)}: no such file") from None
    except IsADirectoryError:
        raise ClipError(f"{label or os.fspath(source)} is a directory, not a clip") from None
    except PermissionError:
        raise ClipError(f"{label or os.fspath(source)}: permission denied") from None


def _open(source: str | os.PathLike[str] | bytes, label: str) -> Any:
    import av

    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source), mode="r")
    except MemoryError:
        raise
    except av_errors() as err:
        raise ClipError(f"{label} is a damaged clip ({_reason(err)})") from None


def _video_stream(container: Any, kind: str, label: str) -> tuple[Any, str]:
    """The clip's first video stream and its codec, checked against what `kind` may carry."""
    if kind == "webm" and "webm" not in container.format.name:
        raise ClipError(f"{label} is a Matroska file; use a WebM (VP8/VP9), an MP4 (H.264) or an animated GIF")
    if not container.streams.video:
        raise ClipError(f"{label} has no video stream")
    stream = container.streams.video[0]
    codec = stream.codec_context.name
    if codec not in VIDEO_CODECS[kind]:
        allowed = " or ".join(c.upper() for c in VIDEO_CODECS[kind])
        raise ClipError(f"{label} is {kind.upper()} with {codec} video; this service takes {allowed} in a {kind}")
    stream.thread_type = "AUTO"
    return stream, codec


def _check_pixels(size: tuple[int, int], label: str, max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ClipError(f"{label} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ClipError(
            f"{label}'s frames are {width}x{height} = {width * height} pixels, over the limit of {max_pixels}; "
            "downscale it"
        )


def _frame_rate(stream: Any, frames: int) -> Fraction:
    """The stream's frame rate; for a GIF (delays per frame) the mean over its duration."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if rate and rate > 0:
        return Fraction(rate).limit_denominator(1001 * 1000)
    if stream.duration and stream.time_base and frames:
        seconds = float(stream.duration * stream.time_base)
        if seconds > 0:
            return Fraction(frames / seconds).limit_denominator(1000)
    return Fraction(10)


def _declared_frames(container: Any, stream: Any, fps: Fraction) -> int | None:
    """How many frames the header says the clip holds (a count, or its duration times the rate)."""
    if stream.frames:
        return int(stream.frames)
    if container.duration and fps > 0:  # microseconds
        return round(container.duration / 1_000_000 * fps)
    return None


def _reason(err: BaseException) -> str:
    return str(err).strip() or type(err).__name__
