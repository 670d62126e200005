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


class UnsupportedImageFormat(NotAnImage):
    """An image, but of a format the service refuses (GIF, PSD, ...): no video either."""


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


# The Pillow parsers that may see an upload (MPO comes out of the JPEG one).
PARSERS = ["JPEG", "PNG", "WEBP", "BMP", "TIFF"]


@dataclass(frozen=True)
class ImageHeader:
    format: str
    content_type: str
    extension: str
    width: int
    height: int
    # EXIF orientation (1: as stored); 5 to 8 turn the picture a quarter.
    orientation: int = 1

    @property
    def upright(self) -> tuple[int, int]:
        """Width and height as decoded, EXIF orientation applied (OpenCV applies it)."""
        if self.orientation in (5, 6, 7, 8):
            return self.height, self.width
        return self.width, self.height


def inspect_image(stream: IO[bytes], max_pixels: int) -> ImageHeader:
    """The image's format and size; raises ``ImageRejected``. Leaves ``stream`` at its start."""
    stream.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Only the accepted formats' parsers see the file: Pillow's other plugins (GIF,
            # PSD, ICO, EPS, ...) are never reached by an upload.
            with Image.open(stream, formats=PARSERS) as image:
                fmt, (width, height) = image.format or "", image.size
                # OpenCV applies the orientation of JPEG files only.
                orientation = image.getexif().get(0x0112, 1) if fmt in ("JPEG", "MPO") else 1
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
        stream.seek(0)
        named = _refused_format(stream.read(16))
        if named:
            raise UnsupportedImageFormat(
                f"{named} images are not supported; send JPEG, PNG, WebP, BMP or TIFF"
            ) from exc
        raise NotAnImage(
            "the file is not an image the service can read; send JPEG, PNG, WebP, BMP or TIFF"
        ) from exc
    finally:
        stream.seek(0)
    if fmt not in FORMATS:
        raise UnsupportedImageFormat(
            f"{fmt} images are not supported; send JPEG, PNG, WebP, BMP or TIFF"
        )
    if width <= 0 or height <= 0:
        raise ImageUnprocessable(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageUnprocessable(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    content_type, extension = FORMATS[fmt]
    turned = orientation if isinstance(orientation, int) else 1
    return ImageHeader(fmt, content_type, extension, width, height, turned)


# Formats refused by name (their parsers are never run), by their leading bytes.
_REFUSED_MAGIC = {
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"8BPS": "PSD",
    b"\x00\x00\x01\x00": "ICO",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
    b"\xffO\xffQ": "JPEG 2000",
}


def _refused_format(head: bytes) -> str | None:
    return next((name for magic, name in _REFUSED_MAGIC.items() if head.startswith(magic)), None)
