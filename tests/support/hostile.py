"""Hostile uploads, made in code (no binaries in git), and the answer each must get.

``CASES`` lists decompression bombs (PNG, GIF, TIFF, WebP, JPEG), broken and
pathological videos (MP4, hand-written Matroska), polyglots, degenerate images and
hostile zips, each with the endpoint it is sent to and the answer the service owes: an
HTTP status; ``"failed:input"`` (accepted, then the job fails with error kind
``input``); or ``"succeeded"`` (harmless once parsed: what it holds is processed, what
it hides is never used).

Bombs are real where a tiny file can hold one (the PNG's IDAT inflates to 400 MB of
zeros, the TIFF's Group 4 strip to 100000 x 100000 white pixels, the WebP's lossless
stream to a 16383 x 16383 canvas); the generators take a size, so the unit tests decode
a small twin of each. The whole corpus (about 27 MB, most of it the MKV of a million
clusters and the zip of 100,000 entries) is built in about a second.

``send`` and ``Sampler`` serve the end-to-end test and the benchmark alike: one sends
a case as a client would and reads its answer, the other watches the API's processes.
"""

from __future__ import annotations

import contextlib
import io
import random
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil
import requests

from tests.support.jobs import wait_for_job

Expect = int | Literal["failed:input", "succeeded"]
PIPELINE = "blur-faces"  # MTCNN's weights ship in its wheel: any stack can run it


@dataclass(frozen=True)
class Case:
    name: str
    filename: str
    content_type: str
    data: bytes | Callable[[], bytes]
    endpoint: Literal["jobs", "batches"]
    expect: Expect

    def content(self) -> bytes:
        return self.data() if callable(self.data) else self.data

    @property
    def field(self) -> str:
        """The multipart field: ``file`` of a job, ``archive`` (one zip) of a batch."""
        return "file" if self.endpoint == "jobs" else "archive"


# --- images --------------------------------------------------------------------------


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


# --- videos --------------------------------------------------------------------------


def small_mp4(faststart: bool = False, frames: int = 30) -> bytes:
    """A 64 x 64 H.264 MP4 of ``frames`` noise frames at 15 fps; the index (moov) first or last.

    Written to a file: FFmpeg's faststart pass reopens its output by name.
    """
    import av
    import numpy as np

    options = {"movflags": "faststart"} if faststart else {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip.mp4"
        with av.open(str(path), "w", options=options) as container:
            stream = container.add_stream("libx264", rate=15)
            stream.width = stream.height = 64
            stream.pix_fmt = "yuv420p"
            noise = np.random.default_rng(0)  # noise: every frame weighs kilobytes
            for _ in range(frames):
                image = noise.integers(0, 256, (64, 64, 3), np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode(None))
        return path.read_bytes()


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def mp4_garbage(size: int = 1 << 20) -> bytes:
    """An ``ftyp`` box, then ``size`` random bytes (seeded: the same file every run)."""
    ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isomavc1"
    return ftyp + random.Random(20261201).randbytes(size)


def ebml_size(size: int) -> bytes:
    length = 1
    while size >= (1 << (7 * length)) - 1:
        length += 1
    return (size | 1 << (7 * length)).to_bytes(length, "big")


def uint(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def element(ident: int, payload: bytes | Iterable[bytes]) -> bytes:
    body = payload if isinstance(payload, bytes) else b"".join(payload)
    return uint(ident) + ebml_size(len(body)) + body


UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"


@dataclass
class Mkv:
    """A Matroska file of one V_MJPEG track, written by hand: EBML header, a Segment of
    unknown size, Info, Tracks, then the clusters added with ``cluster``."""

    width: int
    height: int
    default_duration_ms: int | None = 40
    clusters: list[bytes] = field(default_factory=list)

    def cluster(self, timecode: int, blocks: Iterable[tuple[int, bytes]] = ()) -> None:
        """A cluster at ``timecode`` ms holding keyframe SimpleBlocks (relative ms, data)."""
        simple = (
            element(0xA3, b"\x81" + struct.pack(">hB", relative, 0x80) + frame)
            for relative, frame in blocks
        )
        self.clusters.append(element(0x1F43B675, [element(0xE7, uint(timecode)), *simple]))

    def bytes(self) -> bytes:
        header = element(
            0x1A45DFA3,
            [
                element(0x4286, uint(1)),  # EBMLVersion
                element(0x42F7, uint(1)),  # EBMLReadVersion
                element(0x42F2, uint(4)),  # EBMLMaxIDLength
                element(0x42F3, uint(8)),  # EBMLMaxSizeLength
                element(0x4282, b"matroska"),  # DocType
                element(0x4287, uint(4)),  # DocTypeVersion
                element(0x4285, uint(2)),  # DocTypeReadVersion
            ],
        )
        info = element(
            0x1549A966,
            [
                element(0x2AD7B1, uint(1_000_000)),
                element(0x4D80, b"hostile"),
                element(0x5741, b"hostile"),
            ],
        )
        video = element(0xE0, [element(0xB0, uint(self.width)), element(0xBA, uint(self.height))])
        entry = [
            element(0xD7, uint(1)),  # TrackNumber
            element(0x73C5, uint(1)),  # TrackUID
            element(0x83, uint(1)),  # TrackType: video
            element(0x86, b"V_MJPEG"),  # CodecID
        ]
        if self.default_duration_ms:
            entry.append(element(0x23E383, uint(self.default_duration_ms * 1_000_000)))
        tracks = element(0x1654AE6B, element(0xAE, [*entry, video]))
        return b"".join([header, uint(0x18538067), UNKNOWN_SIZE, info, tracks, *self.clusters])


def mkv_declaring(width: int, height: int, frames: int = 10) -> bytes:
    """64 x 64 MJPEG frames, 40 ms apart, in a track whose Video says ``width`` x ``height``."""
    mkv = Mkv(width, height)
    mkv.cluster(0, [(40 * k, small_jpeg()) for k in range(frames)])
    return mkv.bytes()


def mkv_frozen(frames: int = 5000) -> bytes:
    """``frames`` MJPEG frames whose timestamps never advance (every block at 0 ms)."""
    mkv = Mkv(64, 64, default_duration_ms=None)
    frame = small_jpeg()
    for start in range(0, frames, 1000):
        mkv.cluster(0, [(0, frame)] * min(1000, frames - start))
    return mkv.bytes()


# An empty cluster of fixed width: Cluster (size 6), Timecode (size 4, the value).
EMPTY_CLUSTER = struct.Struct(">IBBBI")


def mkv_million_clusters(count: int = 1_000_000, every: int = 1000) -> bytes:
    """``count`` clusters 40 ms apart (11 hours by their timecodes), a frame in one of
    each ``every``, the rest empty (11 bytes each): no Duration, so its length is read."""
    mkv = Mkv(64, 64)
    frame = small_jpeg()
    for index in range(count):
        if index % every:
            mkv.clusters.append(EMPTY_CLUSTER.pack(0x1F43B675, 0x86, 0xE7, 0x84, 40 * index))
        else:
            mkv.cluster(40 * index, [(0, frame)])
    return mkv.bytes()


# --- zips ----------------------------------------------------------------------------


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


# --- the corpus ----------------------------------------------------------------------

TYPES = {
    "png": "image/png",
    "gif": "image/gif",
    "tif": "image/tiff",
    "webp": "image/webp",
    "jpg": "image/jpeg",
    "mp4": "video/mp4",
    "mkv": "video/x-matroska",
    "zip": "application/zip",
}


def case(name: str, filename: str, data: bytes | Callable[[], bytes], expect: Expect) -> Case:
    """A case whose content type and endpoint follow its file name (zips go to batches)."""
    suffix = filename.rsplit(".", 1)[-1]
    endpoint: Literal["jobs", "batches"] = "batches" if suffix == "zip" else "jobs"
    return Case(name, filename, TYPES[suffix], data, endpoint, expect)


CASES: list[Case] = [
    # Bombs: refused by their header, before anything decodes them.
    case("png-bomb", "bomb.png", png_bomb, 422),  # 400 M pixels, IDAT inflating to 400 MB
    case("gif-bomb", "bomb.gif", gif_bomb, 415),  # GIF is refused by name
    case("tiff-bomb", "bomb.tif", tiff_bomb, 422),  # 1e10 pixels in 12.5 KB of Group 4
    case("webp-bomb", "bomb.webp", webp_bomb, 422),  # a 16383 x 16383 VP8X canvas
    case("jpeg-65500", "huge.jpg", lambda: jpeg_declaring(65500, 65500), 422),
    # The index (moov, at the end) is cut off: FFmpeg cannot open the file.
    case("mp4-truncated", "cut.mp4", lambda: truncated(small_mp4()), 415),
    # The index (first) promises 30 frames; half of them are gone: the workers name the
    # frames they could not decode (the result's frames_missing) and finish the rest.
    case(
        "mp4-truncated-faststart", "cut-fast.mp4", lambda: truncated(small_mp4(True)), "succeeded"
    ),
    case("mp4-garbage", "garbage.mp4", mp4_garbage, 415),  # ftyp, then 1 MiB of noise
    # The track declares a frame size its frames (64 x 64) do not have: FFmpeg sizes frames
    # by what they decode to, so the declaration is never trusted and nothing allocates it.
    case("mkv-0x0", "zero.mkv", lambda: mkv_declaring(0, 0), "succeeded"),
    case("mkv-100000x100000", "vast.mkv", lambda: mkv_declaring(100_000, 100_000), "succeeded"),
    case("mkv-frozen-timestamps", "frozen.mkv", mkv_frozen, 422),  # 5000 frames, all at 0 ms
    # A million clusters spanning 11 h: over the 4 h limit, found without reading them all.
    case("mkv-million-clusters", "clusters.mkv", mkv_million_clusters, 422),
    # A right header over noise: accepted, then the worker cannot decode it.
    case("png-corrupt-idat", "noise.png", png_corrupt_idat, "failed:input"),
    # A valid image of one pixel: nothing to find, nothing to fail.
    case("png-1x1", "dot.png", lambda: small_png(side=1), "succeeded"),
    # A valid PNG: decoders stop at IEND, so the zip after it is inert.
    case("png-zip-polyglot-job", "poly.png", png_zip_polyglot, "succeeded"),
    # As a batch's archive: a zip must start at offset 0.
    case("png-zip-polyglot-batch", "poly.zip", png_zip_polyglot, 422),
    # A valid PNG: its metadata never reaches an artifact (they are encoded afresh).
    case(
        "png-script-text",
        "script.png",
        lambda: small_png(b"<script>alert(1)</script>"),
        "succeeded",
    ),
    case("html-named-png", "page.png", b"<!doctype html><script>alert(1)</script>", 415),
    # Zips: refused whole, before any member is inflated or stored.
    case("zip-100000-entries", "many.zip", many_entries, 413),  # a batch takes 1000
    # A member inflating 1000:1 (a valid BMP within the size limit); the limit is 100:1.
    case("zip-ratio-1000", "ratio.zip", lambda: zip_bytes([(b"black.bmp", zero_bmp())], True), 422),
    case("zip-dotdot-name", "dotdot.zip", named(b"../../../../tmp/evil.png"), 422),
    case("zip-backslash-name", "backslash.zip", named(b"..\\..\\evil.png"), 422),
    case("zip-nul-name", "nul.zip", named(b"photo.png\0.exe"), 422),
    case("zip-4k-name", "long.zip", named(b"a" * 4092 + b".png"), 422),
]


# --- sending a case ------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What the service answered: the status, and for an accepted job how it ended."""

    status: int
    content_type: str
    sent: int  # bytes of the case
    outcome: str  # the status as text, or the job's end: "succeeded", "failed:input", ...
    seconds: float  # until the HTTP answer
    job_seconds: float | None  # until the job ended (accepted jobs only)
    body: Any


def expected(case: Case) -> str:
    return str(case.expect)


def send(session: requests.Session, base: str, case: Case, job_timeout: float = 60) -> Answer:
    """POST the case as a client would; poll an accepted job until it ends (or
    ``job_timeout``). An accepted batch's jobs are cancelled at once."""
    content = case.content()
    started = time.perf_counter()
    response = session.post(
        f"{base}/v1/{case.endpoint}",
        files={case.field: (case.filename, content, case.content_type)},
        data={"pipeline": PIPELINE},
        timeout=120,
    )
    seconds = time.perf_counter() - started
    try:
        body = response.json()
    except ValueError:
        body = response.text[:500]
    status, ctype = response.status_code, response.headers.get("content-type", "")
    if status != 202:
        return Answer(status, ctype, len(content), str(status), seconds, None, body)
    if case.endpoint == "batches":
        for item in body.get("items", []):
            if item.get("job_id"):
                session.delete(f"{base}/v1/jobs/{item['job_id']}", timeout=30)
        return Answer(202, ctype, len(content), "202", seconds, None, body)
    try:
        job = wait_for_job(
            lambda j: session.get(f"{base}/v1/jobs/{j}", timeout=30).json(), body["id"], job_timeout
        )
    except AssertionError:  # not done in time: cancelled, so it holds up nothing after it
        session.delete(f"{base}/v1/jobs/{body['id']}", timeout=30)
        return Answer(202, ctype, len(content), "not done in time", seconds, None, body)
    outcome = job["state"]
    if outcome == "failed":
        outcome = f"failed:{(job.get('error') or {}).get('kind')}"
    return Answer(202, ctype, len(content), outcome, seconds, time.perf_counter() - started, job)


class Sampler:
    """Samples the resident set size and thread count of some processes (an API server's
    workers) every ``interval`` seconds, in a thread, keeping the largest of any one.

    ``find`` gives the processes; when one dies, ``find`` is called again for those that
    took its place, and ``replaced`` turns true.
    """

    def __init__(self, find: Callable[[], list[psutil.Process]], interval: float = 0.05) -> None:
        self.find = find
        self.interval = interval
        self.processes = find()
        self.first_pids = {p.pid for p in self.processes}
        self.peak_rss = 0
        self.peak_threads = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                for process in self.processes:
                    with process.oneshot():
                        rss, threads = process.memory_info().rss, process.num_threads()
                    self.peak_rss = max(self.peak_rss, rss)
                    self.peak_threads = max(self.peak_threads, threads)
            except psutil.NoSuchProcess:
                # While a server replaces a worker it has one too few, or too many.
                with contextlib.suppress(psutil.Error, AssertionError, ValueError):
                    self.processes = self.find()
                continue
            self.samples += 1

    @property
    def replaced(self) -> bool:
        """Whether a process died and another took its place during the run."""
        return {p.pid for p in self.processes} != self.first_pids
