"""Hostile and harmless images, made in code: real bombs where a tiny file can hold one.

Each bomb's generator takes a size, so the unit tests can decode a small twin of it.
"""

from __future__ import annotations

import io
import random
import struct
import zlib


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_file(ihdr: bytes, idat: bytes) -> bytes:
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def zeros_zlib(size: int, block: int = 1 << 20) -> bytes:
    """A zlib stream of ``size`` zero bytes, made without compressing them all.

    A full flush byte-aligns the stream and forgets the window, so every whole block of
    zeros compresses to the same bytes: one is compressed and repeated. Adler-32 of n
    zeros is (n mod 65521) << 16 | 1.
    """
    compressor = zlib.compressobj(9)

    def zeros(count: int) -> bytes:
        return compressor.compress(b"\0" * count) + compressor.flush(zlib.Z_FULL_FLUSH)

    whole, rest = divmod(size, block)
    parts = [zeros(block)] if whole else []  # the first one carries the zlib header
    if whole > 1:
        parts.append(zeros(block) * (whole - 1))
    parts.append(zeros(rest))
    adler = (size % 65521) << 16 | 1
    return b"".join(parts) + b"\x03\x00" + struct.pack(">I", adler)  # an empty final block


def png_bomb(side: int = 20_000) -> bytes:
    """An 8-bit grey PNG of side x side black pixels whose IDAT really inflates to them."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return png_file(ihdr, zeros_zlib(side * (side + 1)))  # a filter byte (0) per row, then the row


def small_png(text: bytes | None = None, side: int = 64) -> bytes:
    """A valid side x side PNG; ``text`` goes into a tEXt chunk before IEND."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 150)).save(buffer, "PNG")
    data = buffer.getvalue()
    if text is None:
        return data
    end = data.rindex(b"IEND") - 4
    return data[:end] + png_chunk(b"tEXt", b"Comment\0" + text) + data[end:]


def png_corrupt_idat(side: int = 64) -> bytes:
    """A PNG whose header is right (side x side RGB) and whose IDAT is noise: only a
    decoder finds out, so the API's header check passes it."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    noise = b"\x78\x9c" + random.Random(side).randbytes(1024)  # a zlib header, then noise
    return png_file(ihdr, noise)


def small_jpeg(side: int = 64) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 100, 50)).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 says ``width`` x ``height``."""
    data = bytearray(small_jpeg())
    at = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)  # after length (2) and precision (1)
    return bytes(data)


def gif_bomb() -> bytes:
    """A GIF89a declaring a 65535 x 65535 screen and image, with one LZW-coded pixel."""
    screen = struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0)  # a 2-colour global table
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
    lzw = b"\x02\x02\x44\x01\x00"  # min code size 2; clear, index 0, end; terminator
    return b"GIF89a" + screen + b"\0\0\0\xff\xff\xff" + image + lzw + b"\x3b"


def g4_blank(width: int, height: int) -> bytes:
    """CCITT Group 4 of an all-white page: each row repeats the one above (V0, one bit)."""
    bits = height + 24  # then EOFB, two EOLs: 000000000001 twice
    value = ((1 << height) - 1) << 24 | 0x001001
    pad = -bits % 8
    return (value << pad).to_bytes((bits + pad) // 8, "big")


def tiff_bomb(side: int = 100_000) -> bytes:
    """A bilevel TIFF of side x side white pixels in one Group 4 strip (12.5 KB at 100000)."""
    strip = g4_blank(side, side)
    tags = [  # (tag, type: 3 SHORT / 4 LONG, value)
        (256, 4, side),  # ImageWidth
        (257, 4, side),  # ImageLength
        (258, 3, 1),  # BitsPerSample
        (259, 3, 4),  # Compression: CCITT Group 4
        (262, 3, 0),  # PhotometricInterpretation: WhiteIsZero
        (273, 4, 0),  # StripOffsets (patched below)
        (277, 3, 1),  # SamplesPerPixel
        (278, 4, side),  # RowsPerStrip
        (279, 4, len(strip)),  # StripByteCounts
    ]
    offset = 8 + 2 + 12 * len(tags) + 4
    entries = b"".join(
        struct.pack("<HHI", tag, kind, 1)
        + (
            struct.pack("<I", offset if tag == 273 else value)
            if kind == 4
            else struct.pack("<HH", value, 0)
        )
        for tag, kind, value in tags
    )
    return (
        b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + entries + b"\0" * 4 + strip
    )


class BitWriter:
    """Bits least significant first, as VP8L reads them."""

    def __init__(self) -> None:
        self.value = 0
        self.count = 0

    def put(self, value: int, bits: int) -> None:
        self.value |= value << self.count
        self.count += bits

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.count + 7) // 8, "little")


def webp_bomb(side: int = 16383) -> bytes:
    """An extended WebP (VP8X) of a side x side opaque black canvas in a 9-byte VP8L stream.

    Every prefix code has one symbol, so each pixel costs zero bits.
    """
    bits = BitWriter()
    bits.put(side - 1, 14)
    bits.put(side - 1, 14)
    bits.put(0, 1)  # alpha is not used
    bits.put(0, 3)  # version
    bits.put(0, 1)  # no transform
    bits.put(0, 1)  # no colour cache
    bits.put(0, 1)  # no meta prefix codes
    for symbol in (0, 0, 0, 255, 0):  # green, red, blue, alpha, distance
        bits.put(1, 1)  # a simple code
        bits.put(0, 1)  # of one symbol
        wide = symbol > 1
        bits.put(int(wide), 1)
        bits.put(symbol, 8 if wide else 1)
    vp8l = b"\x2f" + bits.bytes()
    vp8x = struct.pack("<B3x", 0) + (side - 1).to_bytes(3, "little") * 2

    def chunk(kind: bytes, data: bytes) -> bytes:
        return kind + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)

    body = b"WEBP" + chunk(b"VP8X", vp8x) + chunk(b"VP8L", vp8l)
    return b"RIFF" + struct.pack("<I", len(body)) + body
