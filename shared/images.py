"""Safe image decoding: the one way a path or uploaded bytes become an upright RGB image
(or, for a style mask, an upright grey-scale one)."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

# Checked from the header, before any pixel is decoded (8000 x 8000).
DEFAULT_MAX_PIXELS = 64_000_000


class ImageError(ValueError):
    """An input that is not a usable image; the message says what to fix."""


# Pillow's format names for what a browser shows (MPO: a phone's multi-picture JPEG).
CONTENT_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
# The only formats Pillow may try: its other plugins (EPS runs Ghostscript; PSD, PDF, IM, ...)
# are more code facing untrusted bytes, for files nobody uploads as a photo or a painting.
# "JPEG" opens an MPO too.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def decode_image(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Open a path or bytes as an RGB image: size checked first, EXIF rotation applied,
    16-bit, CMYK, palette and grayscale converted, transparency laid over white."""
    return decode_image_and_format(source, name=name, max_pixels=max_pixels)[0]


def decode_image_and_format(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[Image.Image, str]:
    """`decode_image`, and the file's format as Pillow names it ("JPEG", "PNG", ...)."""
    label = name or ("the upload" if isinstance(source, bytes) else os.fspath(source))
    with warnings.catch_warnings():
        # Pillow warns of damaged metadata (EXIF, TIFF tags) that it skips, and goes on: so do
        # we, whatever the warnings filter. And we enforce our own, lower pixel limit.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _decode(source, label, max_pixels)


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says: its format as Pillow names it, and its upright size."""

    format: str
    size: tuple[int, int]  # (width, height), after its EXIF orientation


# EXIF orientations that turn the picture a quarter (width and height swap).
_QUARTER_TURNS = {5, 6, 7, 8}


def inspect_image(
    data: bytes, *, name: str, max_pixels: int = DEFAULT_MAX_PIXELS, decode_up_to: int = 0
) -> ImageHeader:
    """Check image bytes from their header (a format we open, a header Pillow can read, at most
    `max_pixels`) without decoding a pixel: a web process does this in its request threads and
    leaves the decoding to the worker. An image of at most `decode_up_to` pixels is decoded in
    full as well, as the worker will, so that a damaged small file is refused at once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _open(data, name, max_pixels) as image:
            width, height = _check_size(image, name, max_pixels)
            kind = image.format or "PNG"
            try:
                orientation = image.getexif().get(0x0112)
            except Exception:  # damaged EXIF: the decoder skips it too (exif_transpose then does nothing)
                orientation = None
    if width * height <= decode_up_to:
        decode_image_and_format(data, name=name, max_pixels=max_pixels)
    if orientation in _QUARTER_TURNS:
        width, height = height, width
    return ImageHeader(kind, (width, height))


def _decode(source: str | os.PathLike[str] | bytes, label: str, max_pixels: int) -> tuple[Image.Image, str]:
    with _open(source, label, max_pixels) as image:  # closes the file, which matters for multi-frame images
        _check_size(image, label, max_pixels)
        try:
            image.load()
            upright = _to_rgb(ImageOps.exif_transpose(image))
        except MemoryError:
            raise
        except Exception as err:  # decoders raise OSError, ValueError, SyntaxError, EOFError, ... for bad data
            raise ImageError(f"{label} is truncated or corrupt ({err})") from None
        return upright, image.format or "PNG"


# A mask is grey: an RGB pixel whose channels differ by more than this (of 255) is colour,
# and a mask with more than MASK_COLOUR_SHARE of such pixels is refused (JPEG noise is not).
MASK_CHANNEL_SPREAD = 24
MASK_COLOUR_SHARE = 0.01


def decode_mask(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Open a path or bytes as a style mask: an upright single-channel ("L") image, white
    where the style applies. Grey-scale images of any depth are taken as they are, RGB ones
    whose pixels are grey too; transparency counts as black (a painted stroke over nothing).
    A coloured image is refused: it is a picture, not a mask."""
    label = name or ("the mask" if isinstance(source, bytes) else os.fspath(source))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _open(source, label, max_pixels) as image:
            _check_size(image, label, max_pixels)
            try:
                image.load()
                upright = ImageOps.exif_transpose(image)
            except MemoryError:
                raise
            except Exception as err:  # decoders raise OSError, ValueError, SyntaxError, EOFError, ...
                raise ImageError(f"{label} is truncated or corrupt ({err})") from None
            return _to_mask(upright, label)


def _to_mask(image: Image.Image, label: str) -> Image.Image:
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return _to_rgb(image).convert("L")  # 16-bit and float grey scaled to 0..255
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info)
    alpha = image.convert("RGBA").getchannel("A") if has_alpha else None
    if image.mode in ("1", "L", "LA", "La"):
        grey = image.convert("L")
    else:
        red, green, blue = image.convert("RGB").split()
        high = ImageChops.lighter(ImageChops.lighter(red, green), blue)
        low = ImageChops.darker(ImageChops.darker(red, green), blue)
        spread = ImageChops.subtract(high, low).point(lambda v: 255 if v > MASK_CHANNEL_SPREAD else 0)
        if spread.histogram()[255] > MASK_COLOUR_SHARE * image.width * image.height:
            raise ImageError(
                f"{label} is in colour; a mask is grey-scale: white where the style applies, black where it does not"
            )
        grey = image.convert("RGB").convert("L")
    return grey if alpha is None else ImageChops.multiply(grey, alpha)


def _open(source: str | os.PathLike[str] | bytes, label: str, max_pixels: int) -> Image.Image:
    """The image, opened: its header read, no pixel decoded."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=FORMATS)
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{label} is a directory, not an image file") from None
    except PermissionError:
        raise ImageError(f"{label}: permission denied") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{label} has too many pixels (over {max_pixels}); downscale it") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label} is not an image that can be read; use a PNG, JPEG or WebP file") from None
    except MemoryError:  # this process is short of memory: not the file's fault
        raise
    except Exception as err:  # a known format with a broken header: ValueError, OSError, struct.error, ...
        raise ImageError(f"{label} is a damaged image file ({err})") from None
    return image


def _check_size(image: Image.Image, label: str, max_pixels: int) -> tuple[int, int]:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{label} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{label} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}; downscale it"
        )
    return width, height


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16") or (image.mode == "I" and image.getextrema()[1] > 255):
        # 16-bit grayscale: scale 0..65535 down to 0..255 rather than clipping at 255.
        image = image.convert("I").point(lambda v: v / 257).convert("L")
    elif image.mode == "F":
        scale = 255.0 if image.getextrema()[1] <= 1.0 else 1.0
        image = image.point(lambda v: v * scale).convert("L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
