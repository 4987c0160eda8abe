"""Helpers more than one test module uses: images as bytes, requests to the web app, a job
put straight into a runner's database, and the pictures of the style-mask tests."""

from __future__ import annotations

import io
import re
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from shared.jobs import create_job
from shared.params import StyleParams
from tests.conftest import PAINTING, PHOTO, load


def encode(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def files(content=PHOTO, styles=(PAINTING,)):
    data = {"content": (io.BytesIO(content.read_bytes() if hasattr(content, "read_bytes") else content), "photo.jpg")}
    data["style"] = [
        (io.BytesIO(s.read_bytes() if hasattr(s, "read_bytes") else s), f"style{i}.jpg") for i, s in enumerate(styles)
    ]
    return data


def post(client, fields=None, **kw):
    return client.post("/api/v1/jobs", data={**files(**kw), **(fields or {})}, content_type="multipart/form-data")


def cancel(client, job):
    """Cancel with the token the submission returned."""
    return client.post(f"/api/v1/jobs/{job['id']}/cancel", headers={"X-Job-Token": job["token"]})


def form_token(client) -> str:
    """The CSRF token of the form page (whose visit also gives the client its cookie)."""
    page = client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def png(width=40, height=30, mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), "white" if mode != "P" else 0).save(buffer, format="PNG")
    return buffer.getvalue()


def form_submit(client, csrf_token, address="127.0.0.1"):
    data = {"content": (io.BytesIO(png()), "photo.png"), "style_preset": "starry_night"}
    if csrf_token is not None:
        data["csrf_token"] = csrf_token
    return client.post("/jobs", data=data, environ_base={"REMOTE_ADDR": address}, content_type="multipart/form-data")


def queue_job(runner, content: bytes | None = None, style: bytes | None = None, **params):
    content = PHOTO.read_bytes() if content is None else content
    style = PAINTING.read_bytes() if style is None else style
    storage = runner.storage
    storage.put("jobs/t/inputs/0-content.jpg", content, "image/jpeg")
    storage.put("jobs/t/inputs/1-style.jpg", style, "image/jpeg")
    inputs = {
        "content": {"key": "jobs/t/inputs/0-content.jpg", "name": "photo.jpg"},
        "styles": [{"key": "jobs/t/inputs/1-style.jpg", "name": "painting.jpg"}],
        "style_preset": None,
    }
    settings = {"size": 48, "iterations": 8, "snapshot_every": 2, "weights": "random", **params}
    with runner.sessions() as session:
        return create_job(session, params=StyleParams(**settings).model_dump(mode="json"), inputs=inputs).id


# The style masks' tests (test_masks.py, test_browser_masks.py): a plain grey photo, a red
# style and a blue one, and masks for the left and right halves.


def texture(first: tuple[float, ...], second: tuple[float, ...], seed: int) -> Image.Image:
    """A 64 px busy texture swinging between two colours, with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64] / 6.0
    wave = (np.sin(x + 2 * np.sin(y)) * 0.5 + 0.5)[..., None]
    rgb = np.array(first) * wave + np.array(second) * (1 - wave) + rng.normal(0, 0.04, (64, 64, 3))
    return Image.fromarray((rgb.clip(0, 1) * 255).astype(np.uint8), "RGB")


RED = texture((0.9, 0.2, 0.1), (0.7, 0.4, 0.1), 1)
BLUE = texture((0.1, 0.3, 0.9), (0.1, 0.6, 0.7), 2)
GREY = Image.new("RGB", (64, 48), (128, 128, 128))


def half_masks(width: int = 64, height: int = 48) -> tuple[Image.Image, Image.Image]:
    """(left half white, right half white) as L images."""
    left = np.zeros((height, width), np.uint8)
    left[:, : width // 2] = 255
    return Image.fromarray(left, "L"), Image.fromarray(255 - left, "L")


def mean_colour(image: Image.Image, columns: slice) -> np.ndarray:
    """The mean RGB, in [0, 1], of `columns` of the image."""
    return (np.asarray(image, dtype=float)[:, columns] / 255).reshape(-1, 3).mean(axis=0)


# --- clips ----------------------------------------------------------------------------------

SIZE = (64, 48)
ENCODERS = {"mp4": "libx264", "webm": "libvpx-vp9", "gif": "gif"}
AUDIO = {"mp4": "aac", "webm": "libopus"}


def panned(frames: int, shift: int = 2, size: tuple[int, int] = SIZE) -> list[Image.Image]:
    """A still photo panned `shift` px a frame: the scene moves left by `shift` each frame."""
    photo = load(PHOTO)
    width, height = size
    photo = photo.resize((round(photo.width * height / photo.height), height), Image.Resampling.LANCZOS)
    return [photo.crop((shift * t, 0, shift * t + width, height)) for t in range(frames)]


def make_clip(
    container: str = "mp4",
    frames: list[Image.Image] | None = None,
    *,
    encoder: str | None = None,
    audio: bool = False,
    fps: int = 12,
) -> bytes:
    """A clip of `frames` (default: four panned frames) written with PyAV, with a tone if `audio`."""
    frames = frames if frames is not None else panned(4)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        video = out.add_stream(encoder or ENCODERS[container], rate=Fraction(fps))
        video.width, video.height = frames[0].size
        video.pix_fmt = "rgb8" if container == "gif" else "yuv420p"
        sound = out.add_stream(AUDIO[container], rate=48000) if audio else None
        for image in frames:
            for packet in video.encode(av.VideoFrame.from_image(image)):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if sound is not None:
            samples = 48000 * len(frames) // fps
            tone = (0.1 * np.sin(np.arange(samples) / 8.0))[None, :].astype(np.float32)
            frame = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
            frame.sample_rate = 48000
            for packet in [*sound.encode(frame), *sound.encode(None)]:
                out.mux(packet)
    return buffer.getvalue()
