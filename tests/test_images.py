"""Safe decoding: every input becomes an upright RGB image or a clear ImageError."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from shared.images import ImageError, decode_image
from tests.helpers import encode


@pytest.mark.parametrize(
    "image, pixel",
    [
        (Image.new("L", (4, 3), 128), (128, 128, 128)),
        (Image.new("CMYK", (4, 3), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("RGBA", (4, 3), (255, 0, 0, 0)), (255, 255, 255)),  # transparent: white
        (Image.new("RGBA", (4, 3), (255, 0, 0, 255)), (255, 0, 0)),
        (Image.new("LA", (4, 3), (0, 255)), (0, 0, 0)),
        (Image.fromarray(np.full((3, 4), 65535, np.uint16)), (255, 255, 255)),  # 16-bit
        (Image.fromarray(np.full((3, 4), 32896, np.uint16)), (128, 128, 128)),
        (Image.new("P", (4, 3), 0), (0, 0, 0)),
    ],
    ids=["grayscale", "cmyk", "transparent", "opaque-rgba", "la", "16bit-white", "16bit-mid", "palette"],
)
def test_modes_become_rgb(image, pixel):
    format = "TIFF" if image.mode == "CMYK" else "PNG"
    decoded = decode_image(encode(image, format))
    assert decoded.mode == "RGB" and decoded.size == (4, 3)
    assert decoded.getpixel((1, 1)) == pixel


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, "JPEG", exif=exif))
    assert decoded.size == (20, 40)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "is not an image that can be read"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "is not an image that can be read"),
        (encode(Image.new("RGB", (64, 64), "red"))[:80], "truncated or corrupt"),
    ],
    ids=["empty", "svg", "truncated"],
)
def test_bad_bytes_are_clear_errors(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data, name="upload.png")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but carries none: decoding it would fail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_pixel_limit_is_checked_before_decoding():
    # 10000 x 9000 would be 270 MB decoded; the header alone must be enough to refuse it.
    with pytest.raises(ImageError, match="10000x9000 = 90000000 pixels, over the limit of 64000000"):
        decode_image(_png_header_only(10_000, 9_000))
    # Past Pillow's own bomb limit (2 x 89 Mpx) the refusal comes from Pillow, as clearly.
    with pytest.raises(ImageError, match="has too many pixels"):
        decode_image(_png_header_only(40_000, 40_000))
    with pytest.raises(ImageError, match="300x300 = 90000 pixels, over the limit of 50000"):
        decode_image(encode(Image.new("L", (300, 300))), max_pixels=50_000)
