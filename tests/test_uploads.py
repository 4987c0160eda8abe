"""Uploads, with the real bytes of each kind of unusual or bad file. Each one becomes an upright
RGB image (checked by decoding what was stored, as the worker does), or is refused with a 4xx
that names the field, and then nothing is kept: no job row, nothing queued, nothing stored.
Uploads over the byte limit and decompression bombs also go to a real `impasto web` (gunicorn)."""

from __future__ import annotations

import io
import json
import resource
import select
import socket
import struct
import time
import uuid
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from shared.images import decode_image
from shared.launcher import free_port
from shared.migrate import upgrade
from shared.models import Job
from shared.settings import load_settings
from tests.conftest import PHOTO, SYSTEM_REDIS_URL, make_style
from tests.helpers import encode
from tests.servers import child_pids, peak_memory_kib, service_env, start, stop, wait_for_http

RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


# --- files made here, byte by byte where Pillow cannot write them ----------------------------


def halves(mode: str, left, right, size=(32, 16)) -> Image.Image:
    """Left half one colour, right half another: shows both the colours and the orientation."""
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(pixels: np.ndarray, color_type: int, extra: bytes = b"") -> bytes:
    """A PNG of (H, W[, C]) big-endian uint16 samples: 16 bits per sample, which Pillow can read
    but not write for colour images."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + extra
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


@cache
def bomb_png(width: int, height: int) -> bytes:
    """A complete, valid black 1-bit PNG: a few KB for width x height pixels (30000 x 30000:
    900 MB once decoded by Pillow, one byte a pixel)."""
    row = b"\0" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    rows_per_piece = 1000
    data = (
        b"".join(
            compressor.compress(row * min(rows_per_piece, height - start)) for start in range(0, height, rows_per_piece)
        )
        + compressor.flush()
    )
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def exif_oriented(orientation: int, format: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(halves("RGB", RED, BLUE), format, exif=exif)


def animated(format: str) -> bytes:
    """Two frames, red then blue."""
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    options = {"lossless": True} if format == "WEBP" else {}
    return encode(frames[0], format, save_all=True, append_images=frames[1:], duration=100, loop=0, **options)


def transparent_palette() -> bytes:
    image = halves("P", 0, 1)
    image.putpalette([255, 0, 0, 0, 0, 255])
    return encode(image, "PNG", transparency=0)  # index 0 (the red left half) is transparent


def cmyk_jpeg() -> bytes:
    return encode(halves("CMYK", (0, 255, 255, 0), (255, 255, 0, 0)), "JPEG", quality=95)


# --- what the API is sent, and what it keeps -------------------------------------------------


def submit(client, content: bytes, *, name="photo.png", style: bytes | None = None, style_name="painting.png"):
    """Post `content` (with a built-in style, or `style` as an upload)."""
    data = {"content": (io.BytesIO(content), name)}
    if style is None:
        data["style_preset"] = "starry_night"
    else:
        data["style"] = (io.BytesIO(style), style_name)
    return client.post("/api/v1/jobs", data=data, content_type="multipart/form-data")


def stored_content(client, job: dict) -> bytes:
    """The content image as the job keeps it (the bytes the worker will decode)."""
    services = client.application.extensions["impasto"]
    with services.sessions() as session:
        row = session.get(Job, job["id"])
        assert row.status == "queued"
        key = row.inputs["content"]["key"]
    return services.storage.get(key)


def assert_nothing_kept(client, queued, settings) -> None:
    services = client.application.extensions["impasto"]
    with services.sessions() as session:
        assert session.query(Job).count() == 0
    assert queued() == 0
    folder = Path(settings.storage_url.removeprefix("file://"))
    assert not [p for p in folder.rglob("*") if p.is_file()], "an input of a refused job was stored"


# (name, uploaded bytes, upright size, {(x, y): expected RGB})
CONVERTED = [
    ("grayscale", encode(halves("L", 40, 200), "PNG"), (32, 16), {(4, 8): (40, 40, 40), (28, 8): (200, 200, 200)}),
    ("1-bit", encode(halves("1", 0, 1), "PNG"), (32, 16), {(4, 8): BLACK, (28, 8): WHITE}),
    ("palette", encode(halves("RGB", RED, BLUE).quantize(2), "PNG"), (32, 16), {(4, 8): RED, (28, 8): BLUE}),
    ("palette with a transparent colour", transparent_palette(), (32, 16), {(4, 8): WHITE, (28, 8): BLUE}),
    ("RGBA", encode(halves("RGBA", (255, 0, 0, 0), (0, 0, 0, 255)), "PNG"), (32, 16), {(4, 8): WHITE, (28, 8): BLACK}),
    (
        "half-transparent RGBA",
        encode(Image.new("RGBA", (8, 8), (0, 0, 0, 128)), "PNG"),
        (8, 8),
        {(4, 4): (127, 127, 127)},
    ),
    ("grayscale with alpha", encode(halves("LA", (0, 0), (0, 255)), "PNG"), (32, 16), {(4, 8): WHITE, (28, 8): BLACK}),
    (
        "WebP with alpha",
        encode(halves("RGBA", (0, 0, 255, 0), (0, 0, 255, 255)), "WEBP", lossless=True),
        (32, 16),
        {(4, 8): WHITE, (28, 8): BLUE},
    ),
    (
        "CMYK TIFF",
        encode(halves("CMYK", (0, 255, 255, 0), (255, 255, 0, 0)), "TIFF"),
        (32, 16),
        {(4, 8): RED, (28, 8): BLUE},
    ),
    ("CMYK JPEG", cmyk_jpeg(), (32, 16), {(4, 8): RED, (28, 8): BLUE}),
    (
        "16-bit grayscale",
        encode(Image.fromarray(np.tile(np.array([65535, 32896], np.uint16).repeat(16), (16, 1))), "PNG"),
        (32, 16),
        {(4, 8): WHITE, (28, 8): (128, 128, 128)},
    ),
    (
        "16-bit RGB",
        raw_png(np.tile(np.array([[65535, 0, 32896]] * 16 + [[0, 0, 65535]] * 16, np.uint16), (16, 1, 1)), 2),
        (32, 16),
        {(4, 8): (255, 0, 128), (28, 8): BLUE},
    ),
    (
        "16-bit grayscale with alpha",
        raw_png(np.tile(np.array([[0, 0]] * 16 + [[0, 65535]] * 16, np.uint16), (16, 1, 1)), 4),
        (32, 16),
        {(4, 8): WHITE, (28, 8): BLACK},
    ),
    ("EXIF orientation 1", exif_oriented(1), (32, 16), {(4, 8): RED, (28, 8): BLUE}),
    ("EXIF orientation 2 (mirrored)", exif_oriented(2), (32, 16), {(4, 8): BLUE, (28, 8): RED}),
    ("EXIF orientation 3 (upside down)", exif_oriented(3), (32, 16), {(4, 8): BLUE, (28, 8): RED}),
    ("EXIF orientation 6 (turned right)", exif_oriented(6), (16, 32), {(8, 4): RED, (8, 28): BLUE}),
    ("EXIF orientation 8 (turned left)", exif_oriented(8), (16, 32), {(8, 4): BLUE, (8, 28): RED}),
    ("EXIF orientation 6 in a PNG", exif_oriented(6, "PNG"), (16, 32), {(8, 4): RED, (8, 28): BLUE}),
    ("animated GIF: the first frame", animated("GIF"), (16, 16), {(8, 8): RED}),
    ("animated PNG: the first frame", animated("PNG"), (16, 16), {(8, 8): RED}),
    ("animated WebP: the first frame", animated("WEBP"), (16, 16), {(8, 8): RED}),
    ("BMP", encode(halves("RGB", RED, BLUE), "BMP"), (32, 16), {(4, 8): RED, (28, 8): BLUE}),
]


@pytest.mark.parametrize(
    ("data", "size", "pixels"), [case[1:] for case in CONVERTED], ids=[case[0] for case in CONVERTED]
)
def test_unusual_images_are_stored_as_sent_and_decode_upright_in_rgb(client, queued, data, size, pixels):
    response = submit(client, data)
    assert response.status_code == 202, response.get_json()
    stored = stored_content(client, response.get_json())
    assert stored == data  # kept as uploaded; the worker decodes these bytes itself
    image = decode_image(stored)
    assert image.mode == "RGB" and image.size == size
    for (x, y), expected in pixels.items():
        assert np.allclose(image.getpixel((x, y)), expected, atol=6), (x, y, image.getpixel((x, y)), expected)
    assert queued() == 1


def test_a_style_upload_is_converted_the_same_way(client, queued):
    response = submit(client, PHOTO.read_bytes(), name="photo.jpg", style=cmyk_jpeg(), style_name="painting.jpg")
    assert response.status_code == 202
    services = client.application.extensions["impasto"]
    with services.sessions() as session:
        style = session.get(Job, response.get_json()["id"]).inputs["styles"][0]
    assert style["content_type"] == "image/jpeg" and style["key"].endswith("1-style.jpg")
    assert np.allclose(decode_image(services.storage.get(style["key"])).getpixel((4, 8)), RED, atol=6)


def text_bomb() -> bytes:
    """A valid 4x4 PNG with a text chunk that inflates to 50 MB: Pillow refuses it with a
    ValueError while it reads the header, which used to escape as a 500."""
    image = encode(Image.new("RGB", (4, 4)), "PNG")
    return image[:33] + png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"a" * 50_000_000)) + image[33:]


SVG = b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'><script>alert(1)</script></svg>"
HTML = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"

# (name, field, the uploaded bytes (made when the test runs), file name, error code, words of the message)
REFUSED = [
    ("text", "content", lambda: b"just some words\n", "photo.jpg", "invalid_image", "not an image that can be read"),
    ("random bytes", "content", lambda: bytes(range(256)) * 8, "photo.jpg", "invalid_image", "not an image"),
    (
        "PDF",
        "content",
        lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n",
        "photo.jpg",
        "invalid_image",
        "use a PNG, JPEG or WebP file",
    ),
    (
        "EPS (Pillow would run Ghostscript)",
        "content",
        lambda: encode(Image.new("RGB", (8, 8)), "EPS"),
        "photo.png",
        "invalid_image",
        "not an image that can be read",
    ),
    ("PPM", "content", lambda: encode(Image.new("RGB", (8, 8)), "PPM"), "photo.png", "invalid_image", "not an image"),
    ("SVG named like a PNG", "style", lambda: SVG, "painting.png", "invalid_image", "not an image that can be read"),
    ("HTML named like a JPEG", "style", lambda: HTML, "painting.jpg", "invalid_image", "not an image that can be read"),
    ("empty style", "style", lambda: b"", "painting.png", "invalid_image", "the style image is empty"),
    (
        "truncated JPEG",
        "content",
        lambda: PHOTO.read_bytes()[:5000],
        "photo.jpg",
        "invalid_image",
        "truncated or corrupt",
    ),
    (
        "truncated PNG",
        "content",
        lambda: encode(make_style(300, 300), "PNG")[:2000],
        "photo.png",
        "invalid_image",
        "truncated or corrupt",
    ),
    ("PNG with a compressed-text bomb", "content", text_bomb, "photo.png", "invalid_image", "damaged image file"),
    (
        "7000 x 7000 pixels (PNG, 6 KB)",
        "content",
        lambda: bomb_png(7000, 7000),
        "photo.png",
        "invalid_image",
        "7000x7000 = 49000000 pixels, over the limit of 40000000",
    ),
    (
        "30000 x 30000 pixels (PNG, 110 KB)",
        "style",
        lambda: bomb_png(30_000, 30_000),
        "painting.png",
        "invalid_image",
        "has too many pixels",
    ),
]


@pytest.mark.parametrize(
    ("field", "make", "name", "code", "says"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED]
)
def test_bad_files_are_refused_naming_the_field_and_nothing_is_kept(
    client, queued, settings, field, make, name, code, says
):
    data = make()
    if field == "content":
        response = submit(client, data, name=name)
    else:
        response = submit(client, PHOTO.read_bytes(), name="photo.jpg", style=data, style_name=name)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert (error["field"], error["code"]) == (field, code) and says in error["message"], error
    assert_nothing_kept(client, queued, settings)


def test_a_decompression_bomb_is_refused_from_its_header(client, queued, settings):
    bomb = bomb_png(30_000, 30_000)
    assert len(bomb) < 200_000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    started = time.monotonic()
    response = submit(client, bomb)
    assert response.status_code == 422 and response.get_json()["error"]["field"] == "content"
    assert time.monotonic() - started < 2
    # Decoded, it would take 900 MB; the process's peak memory must not have moved that far.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000
    assert_nothing_kept(client, queued, settings)


def test_an_image_sent_as_a_text_field_is_refused(client, queued, settings):
    # No filename in the part: the browser never does this, `curl -F content=<file` does.
    response = client.post(
        "/api/v1/jobs",
        data={"content": PHOTO.read_bytes().decode("latin-1"), "style_preset": "starry_night"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["field"] == "content" and "as a file (a part with a filename)" in error["message"]
    assert_nothing_kept(client, queued, settings)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("../../etc/passwd.jpg", "passwd.jpg"),
        ("/var/www/uploads/../../x.jpg", "x.jpg"),
        # werkzeug reads a quoted filename's backslashes as escapes: C:UsersannPicturesholiday.jpg
        ("C:\\Users\\ann\\Pictures\\holiday.jpg", None),
        ("<script>alert(1)</script>.jpg", "script>.jpg"),
        ("x" * 500 + ".jpg", "x" * 200),
    ],
)
def test_a_file_name_never_names_a_stored_file(client, queued, name, shown):
    response = submit(client, PHOTO.read_bytes(), name=name)
    assert response.status_code == 202
    job = response.get_json()
    services = client.application.extensions["impasto"]
    with services.sessions() as session:
        content = session.get(Job, job["id"]).inputs["content"]
    # The name is for display only (pages escape it), without folders; the key is generated.
    assert content["name"] == shown if shown else not {"/", "\\"} & set(content["name"])
    assert content["key"] == f"jobs/{job['id']}/inputs/0-content.jpg"


def test_too_many_parts_is_413(client, queued, settings):
    fields = {f"f{i}": "x" for i in range(1100)}  # werkzeug's cap is 1000 parts
    response = client.post(
        "/api/v1/jobs",
        data={**fields, "content": (io.BytesIO(PHOTO.read_bytes()), "p.jpg"), "style_preset": "starry_night"},
        content_type="multipart/form-data",
    )
    error = response.get_json()["error"]
    assert response.status_code == 413 and error["code"] == "too_large"
    assert "MB in all" in error["message"] and "form fields" in error["message"]  # which limits, and how much
    assert_nothing_kept(client, queued, settings)


def test_a_file_under_an_unknown_name_is_refused(client, queued, settings):
    response = client.post(
        "/api/v1/jobs",
        data={
            "content": (io.BytesIO(PHOTO.read_bytes()), "p.jpg"),
            "mask": (io.BytesIO(PHOTO.read_bytes()), "m.jpg"),
            "style_preset": "starry_night",
        },
        content_type="multipart/form-data",
    )
    error = response.get_json()["error"]
    assert response.status_code == 422 and error["field"] == "mask" and "unknown file field" in error["message"]
    assert_nothing_kept(client, queued, settings)


# --- the real server: gunicorn, with a 1 MiB limit -------------------------------------------

LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads-web")
    env = service_env(
        {
            "IMPASTO_DATA_DIR": str(folder / "data"),
            "IMPASTO_BROKER_URL": SYSTEM_REDIS_URL,
            "IMPASTO_QUEUE": f"impasto-uploads-{uuid.uuid4().hex[:8]}",
            "IMPASTO_MAX_UPLOAD_BYTES": str(LIMIT),
            "IMPASTO_ANONYMOUS_JOBS_PER_HOUR": "0",
        }
    )
    upgrade(load_settings(env).database_url)
    port = free_port()
    process = start(["web", "--port", str(port), "--workers", "2"], env, folder / "web.log")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", process, folder / "web.log")
        yield port, process
    finally:
        stop(process)


def multipart_head(boundary: str, framing: str) -> bytes:
    return (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n{framing}\r\n\r\n"
    ).encode()


def file_part_start(boundary: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; filename="big.png"\r\n'
        f"Content-Type: image/png\r\n\r\n"
    ).encode()


def send_until_answered(port: int, head: bytes, pieces, timeout: float = 10) -> tuple[int, bytes]:
    """Send `head`, then each piece (b"": wait a moment) until the server answers, as a client
    would; (bytes of body sent, the answer)."""
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(head)
        deadline = time.monotonic() + timeout
        for piece in pieces:
            if select.select([connection], [], [], 0 if piece else 0.1)[0]:
                break  # an answer (or the end of the connection) is waiting
            assert time.monotonic() < deadline, "no answer"
            try:
                connection.sendall(piece)
            except OSError:  # the server stopped reading: its answer is what matters
                break
            sent += len(piece)
        while True:
            head_, separator, body = answer.partition(b"\r\n\r\n")
            if separator and len(body) >= _content_length(head_):
                break
            more = connection.recv(65536)
            if not more:
                break
            answer += more
    return sent, answer


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def json_error(answer: bytes) -> tuple[int, dict]:
    """The status and the JSON error of a raw HTTP answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)["error"]


def test_an_upload_declared_over_the_limit_is_refused_before_it_is_sent(web):
    port, _ = web
    declared = 200 * 1024 * 1024
    boundary = "impasto-test"

    def pieces():
        yield file_part_start(boundary)
        yield b"\0" * 65536
        while True:
            yield b""  # then wait: the other 199.9 MB are never sent

    sent, answer = send_until_answered(port, multipart_head(boundary, f"Content-Length: {declared}"), pieces())
    status, error = json_error(answer)
    assert status == 413 and error["code"] == "too_large", answer
    assert sent < 100_000


def test_a_chunked_upload_is_cut_off_at_the_limit(web):
    port, _ = web
    boundary = "impasto-test"

    def pieces():
        start_ = file_part_start(boundary)
        yield b"%x\r\n%s\r\n" % (len(start_), start_)
        for _ in range(50 * 16):  # 50 MiB at most
            yield b"10000\r\n" + b"\0" * 65536 + b"\r\n"

    sent, answer = send_until_answered(port, multipart_head(boundary, "Transfer-Encoding: chunked"), pieces())
    status, error = json_error(answer)
    assert status == 413 and error["code"] == "too_large", answer
    # Read up to the limit, then refused: what was sent beyond it sat in socket buffers.
    assert sent < 16 * LIMIT


def test_a_decompression_bomb_is_refused_fast_by_the_server_without_decoding_it(web):
    port, process = web
    bomb = bomb_png(30_000, 30_000)
    for _ in range(4):  # both gunicorn workers get one
        started = time.monotonic()
        response = requests.post(
            f"http://127.0.0.1:{port}/api/v1/jobs",
            timeout=10,
            files={"content": ("bomb.png", bomb)},
            data={"style_preset": "starry_night"},
        )
        assert response.status_code == 422 and response.json()["error"]["field"] == "content"
        assert time.monotonic() - started < 2
    workers = child_pids(process.pid)
    assert workers
    for pid in workers:  # decoded, the bomb would be 900 MB in one of them
        assert peak_memory_kib(pid) < 400_000


def test_large_images_are_checked_from_their_header_and_left_to_the_worker_to_decode(web):
    """Six 40-megapixel images per submission (a valid black 1-bit PNG, 5 KB each): accepted,
    and no gunicorn worker's peak memory grows by a decoded one (120 MB in RGB)."""
    port, process = web
    big = bomb_png(8000, 5000)
    for _ in range(4):  # both gunicorn workers get some
        response = requests.post(
            f"http://127.0.0.1:{port}/api/v1/jobs",
            timeout=30,
            files=[("content", ("big.png", big)), *[("style", (f"style{i}.png", big)) for i in range(5)]],
        )
        assert response.status_code == 202, response.text
    workers = child_pids(process.pid)
    assert workers
    for pid in workers:
        assert peak_memory_kib(pid) < 150_000
