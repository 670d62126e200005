"""The corpus: each hostile upload with the endpoint it is sent to and the answer it must get."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tests.support.hostile.images import (
    gif_bomb,
    jpeg_declaring,
    png_bomb,
    png_corrupt_idat,
    small_png,
    tiff_bomb,
    webp_bomb,
)
from tests.support.hostile.videos import (
    mkv_declaring,
    mkv_frozen,
    mkv_million_clusters,
    mp4_garbage,
    small_mp4,
    truncated,
)
from tests.support.hostile.zips import many_entries, named, png_zip_polyglot, zero_bmp, zip_bytes

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
