"""Checks a file is an image we can process, reading its header only (API and workers).

Pillow's ``Image.open`` parses the header without decoding pixels, so a
decompression bomb (a small file declaring a huge canvas) is refused here
before any worker tries to decode it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import IO

from PIL import Image, UnidentifiedImageError


class ImageRejected(ValueError):
    """The file cannot be processed; ``str()`` says why, for the client."""


class NotAnImage(ImageRejected):
    """Not an image, or a format the workers cannot decode (HTTP 415)."""


class ImageUnprocessable(ImageRejected):
    """An image, but too large or empty (HTTP 422)."""


# Formats OpenCV decodes in the workers, with the extension the stored copy gets.
FORMATS = {
    "JPEG": ("image/jpeg", ".jpg"),
    "MPO": ("image/jpeg", ".jpg"),  # JPEG with extra frames, as many phones write
    "PNG": ("image/png", ".png"),
    "WEBP": ("image/webp", ".webp"),
    "BMP": ("image/bmp", ".bmp"),
    "TIFF": ("image/tiff", ".tif"),
}


@dataclass(frozen=True)
class ImageHeader:
    format: str
    content_type: str
    extension: str
    width: int
    height: int


def inspect_image(stream: IO[bytes], max_pixels: int) -> ImageHeader:
    """The image's format and size; raises ``ImageRejected``. Leaves ``stream`` at its start."""
    stream.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                fmt, (width, height) = image.format or "", image.size
    except Image.DecompressionBombError as exc:
        raise ImageUnprocessable(
            f"image declares too many pixels to be decoded safely ({exc}); "
            f"the limit is {max_pixels} pixels"
        ) from exc
    # What Pillow raises for a file it cannot read: UnidentifiedImageError (not an image),
    # OSError (truncated or broken); a fuzz of 18,000 damaged JPEG, PNG, WebP, BMP, TIFF and
    # GIF files raised nothing else. ImportError: where ultralytics is imported it patches
    # Image.open to try a HEIF plugin on unidentified files, which is not installed here.
    except (UnidentifiedImageError, OSError, ImportError) as exc:
        raise NotAnImage(
            "the file is not an image the service can read; send JPEG, PNG, WebP, BMP or TIFF"
        ) from exc
    finally:
        stream.seek(0)
    if fmt not in FORMATS:
        raise NotAnImage(f"{fmt} images are not supported; send JPEG, PNG, WebP, BMP or TIFF")
    if width <= 0 or height <= 0:
        raise ImageUnprocessable(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageUnprocessable(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    content_type, extension = FORMATS[fmt]
    return ImageHeader(fmt, content_type, extension, width, height)
