"""Hostile zips, written by hand: names no archiver would write, ratios, entry counts,
and a zip appended to a PNG."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable

from tests.support.hostile.images import small_png


def zip_bytes(
    members: Iterable[tuple[bytes, bytes]], deflate: bool = False, prefix: bytes = b""
) -> bytes:
    """A zip written by hand (names as raw bytes, NUL included; zip64 end records past
    65,535 entries). ``prefix`` goes before it, with offsets counted from the zip's own
    start, as a polyglot's appended zip has them."""
    local, central = bytearray(), bytearray()
    count = 0
    for name, data in members:
        packed = _raw_deflate(data) if deflate else data
        method = 8 if deflate else 0
        crc = zlib.crc32(data)
        # Flags 0, the method, time 0 and date 0x21 (1980-01-01), sizes, no extra field.
        fields = struct.pack(
            "<HHHHIIIHH", 0, method, 0, 0x21, crc, len(packed), len(data), len(name), 0
        )
        central += b"PK\1\2" + struct.pack("<HH", 20, 20) + fields
        central += struct.pack("<HHHII", 0, 0, 0, 0, len(local)) + name
        local += b"PK\3\4" + struct.pack("<H", 20) + fields + name + packed
        count += 1
    end = bytearray()
    start = len(local)
    if count > 0xFFFF:
        end += b"PK\6\6" + struct.pack(
            "<QHHIIQQQQ", 44, 45, 45, 0, 0, count, count, len(central), start
        )
        end += b"PK\6\7" + struct.pack("<IQI", 0, start + len(central), 1)
    entries = min(count, 0xFFFF)
    end += b"PK\5\6" + struct.pack("<HHHHIIH", 0, 0, entries, entries, len(central), start, 0)
    return prefix + bytes(local) + bytes(central) + bytes(end)


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def zero_bmp(width: int = 960, height: int = 720) -> bytes:
    """A 24-bit BMP of black pixels (rows padded to 4 bytes): deflates about 1000:1."""
    row = (width * 3 + 3) // 4 * 4
    pixels = row * height
    header = b"BM" + struct.pack("<IHHI", 54 + pixels, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, pixels, 2835, 2835, 0, 0)
    return header + info + b"\0" * pixels


def many_entries(count: int = 100_000) -> bytes:
    return zip_bytes((f"{i:05x}.png".encode(), b"") for i in range(count))


def named(name: bytes) -> Callable[[], bytes]:
    return lambda: zip_bytes([(name, small_png())])


def png_zip_polyglot() -> bytes:
    """A valid PNG with a zip of one PNG appended (offsets from the zip's own start)."""
    return zip_bytes([(b"inner.png", small_png())], prefix=small_png())
