"""Test images, made in memory (no binaries in git)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a canvas of any size in 60 bytes: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))


def jpeg(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 100, 50)).save(buffer, "JPEG")
    return buffer.getvalue()


def big_image(assets: Path) -> bytes:
    """bus.jpg enlarged to 2048x2730: a detect job at image_size 2048 takes seconds on a
    CPU, long enough for the next jobs to queue behind it."""
    import cv2

    image = cv2.resize(cv2.imread(str(assets / "bus.jpg")), (2048, 2730))
    return bytes(cv2.imencode(".jpg", image)[1].tobytes())
