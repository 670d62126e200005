"""The hostile corpus (tests/support/hostile/): each case is what it claims to be.

The bombs are checked at full size by their headers and, where a decoder would have
to allocate them, through a small twin made by the same generator.
"""

from __future__ import annotations

import io
import struct
import time
import zipfile
import zlib

import av
import pytest
from PIL import Image

from tests.support.hostile import CASES, Case, images, videos, zips

MiB = 1024 * 1024
# The test stack's limits (tests/support/stack.py): images must pass the upload size
# check, so their refusal comes from what they hold, not from their size.
IMAGE_BYTES = 2 * MiB
VIDEO_BYTES = 64 * MiB
ZIP_BYTES = 16 * MiB


def case_named(name: str) -> Case:
    return next(case for case in CASES if case.name == name)


def test_names_are_unique_and_the_expectations_well_formed() -> None:
    assert len({case.name for case in CASES}) == len(CASES)
    for case in CASES:
        assert case.endpoint in ("jobs", "batches")
        assert case.expect in ("failed:input", "succeeded") or 400 <= int(case.expect) < 500


def test_the_whole_corpus_builds_in_seconds() -> None:
    started = time.perf_counter()
    total = sum(len(case.content()) for case in CASES)
    assert time.perf_counter() - started < 10
    assert total < 40 * MiB


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_case_is_deterministic_and_within_its_kind_s_size(case: Case) -> None:
    data = case.content()
    assert data == case.content()
    bound = {"image": IMAGE_BYTES, "video": VIDEO_BYTES}.get(
        case.content_type.split("/")[0], ZIP_BYTES
    )
    assert 0 < len(data) <= bound


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 3 * 1024 + 5])
def test_zeros_zlib_inflates_to_exactly_that_many_zeros(size: int) -> None:
    assert zlib.decompress(images.zeros_zlib(size, block=1024)) == bytes(size)


def png_chunks(data: bytes) -> dict[bytes, bytes]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    chunks, at = {}, 8
    while at < len(data):
        (length,) = struct.unpack_from(">I", data, at)
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        assert struct.unpack_from(">I", data, at + 8 + length)[0] == zlib.crc32(kind + body)
        chunks[kind] = body
        at += 12 + length
    return chunks


def test_the_png_bomb_declares_20000_squared_and_inflates_to_400_mb_of_zeros() -> None:
    chunks = png_chunks(images.png_bomb())
    assert struct.unpack(">IIBBBBB", chunks[b"IHDR"]) == (20_000, 20_000, 8, 0, 0, 0, 0)
    inflater, size = zlib.decompressobj(), 0
    pending = chunks[b"IDAT"]
    while pending:  # in bounded pieces: never 400 MB at once
        piece = inflater.decompress(pending, 16 * MiB)
        assert not piece.strip(b"\0")
        size += len(piece)
        pending = inflater.unconsumed_tail
    assert inflater.eof and size == 20_000 * 20_001  # and the Adler-32 matched
    with Image.open(io.BytesIO(images.png_bomb(64))) as twin:
        assert twin.size == (64, 64) and twin.getextrema() == (0, 0)


def test_the_corrupt_png_has_a_right_header_over_noise() -> None:
    data = images.png_corrupt_idat()
    assert struct.unpack(">II", png_chunks(data)[b"IHDR"][:8]) == (64, 64)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (64, 64)
        with pytest.raises((OSError, zlib.error)):
            image.load()


def test_the_tiff_bomb_is_100000_squared_in_a_group_4_strip() -> None:
    data = images.tiff_bomb()
    assert data[:4] == b"II*\0" and len(data) < 13_000
    (count,) = struct.unpack_from("<H", data, 8)
    tags = {
        tag: value if kind == 4 else value & 0xFFFF
        for tag, kind, _, value in struct.iter_unpack("<HHII", data[10 : 10 + 12 * count])
    }
    assert (tags[256], tags[257], tags[258], tags[259]) == (100_000, 100_000, 1, 4)
    with Image.open(io.BytesIO(images.tiff_bomb(64))) as twin:
        assert twin.size == (64, 64) and twin.getextrema() == (255, 255)  # all white


def test_the_webp_bomb_is_a_16383_squared_vp8x_canvas() -> None:
    data = images.webp_bomb()
    assert data[:4] == b"RIFF" and data[8:16] == b"WEBPVP8X"
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    assert int.from_bytes(data[24:27], "little") + 1 == 16383
    assert int.from_bytes(data[27:30], "little") + 1 == 16383
    assert len(data) < 64
    with Image.open(io.BytesIO(images.webp_bomb(32))) as twin:
        assert twin.size == (32, 32) and twin.getextrema() == ((0, 0), (0, 0), (0, 0))


@pytest.mark.parametrize(
    ("data", "fmt", "size"),
    [
        (images.jpeg_declaring(65500, 65500), "JPEG", (65500, 65500)),
        (images.gif_bomb(), "GIF", (65535, 65535)),
        (images.png_bomb(), "PNG", (20000, 20000)),
    ],
    ids=["jpeg", "gif", "png"],
)
def test_pillow_sees_the_declared_size_and_calls_it_a_bomb(
    data: bytes, fmt: str, size: tuple[int, int]
) -> None:
    with pytest.raises(Image.DecompressionBombError, match=str(size[0] * size[1])):
        Image.open(io.BytesIO(data), formats=[fmt])


def test_the_jpeg_is_a_real_one_apart_from_its_size() -> None:
    with Image.open(io.BytesIO(images.jpeg_declaring(16, 16))) as small:
        small.load()
        assert small.size == (16, 16)


def frames_of(data: bytes) -> list[tuple[int | None, int, int]]:
    with av.open(io.BytesIO(data), "r") as container:
        return [(f.pts, f.width, f.height) for f in container.decode(video=0)]


def decodable(data: bytes) -> int:
    """Frames decoded before the stream breaks."""
    count = 0
    with av.open(io.BytesIO(data), "r") as container:
        try:
            for packet in container.demux(video=0):
                count += len(packet.decode())
        except av.error.InvalidDataError:
            pass
    return count


def test_the_mp4s_cut_in_half() -> None:
    whole, fast = videos.small_mp4(), videos.small_mp4(faststart=True)
    assert len(frames_of(whole)) == len(frames_of(fast)) == 30
    assert whole.index(b"moov") > len(whole) // 2, "the index is in the half cut off"
    assert b"moov" not in videos.truncated(whole)
    assert fast.index(b"moov") < fast.index(b"mdat") < len(fast) // 2
    assert 0 < decodable(videos.truncated(fast)) < 30
    garbage = videos.mp4_garbage()
    assert garbage[4:12] == b"ftypisom" and len(garbage) == 24 + MiB


@pytest.mark.parametrize("side", [0, 100_000])
def test_the_mkv_declares_its_size_and_holds_64_pixel_mjpeg_frames(side: int) -> None:
    data = videos.mkv_declaring(side, side)
    assert data[:4] == b"\x1a\x45\xdf\xa3" and b"\x42\x82\x88matroska" in data[:64]
    size = videos.uint(side)  # Video: PixelWidth, PixelHeight
    assert videos.element(0xE0, [videos.element(0xB0, size), videos.element(0xBA, size)]) in data
    assert frames_of(data) == [(40 * k, 64, 64) for k in range(10)]


def test_the_frozen_mkv_never_advances() -> None:
    with av.open(io.BytesIO(videos.mkv_frozen()), "r") as container:
        pts = [p.pts for p in container.demux(video=0) if p.size]
    assert len(pts) == 5000 and set(pts) == {0}


def test_the_million_cluster_mkv() -> None:
    data = videos.mkv_million_clusters()
    assert data.count(b"\x1f\x43\xb6\x75") == 1_000_000
    with av.open(io.BytesIO(data), "r") as container:
        pts = [p.pts for p in container.demux(video=0) if p.size]
    assert len(pts) == 1000 and pts[-1] == 40 * 999_000  # 11 h by the timecodes


def test_the_zip_of_100000_entries_says_so_in_its_zip64_end_record() -> None:
    data = zips.many_entries()
    at = data.rindex(b"PK\6\6")
    entries_on_disk, entries = struct.unpack_from("<QQ", data, at + 24)
    assert entries_on_disk == entries == 100_000
    assert struct.unpack_from("<HH", data, data.rindex(b"PK\5\6") + 8) == (0xFFFF, 0xFFFF)
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        assert len(bundle.infolist()) == 100_000 and bundle.testzip() is None


def test_the_ratio_member_inflates_1000_to_1_into_a_valid_bmp() -> None:
    with zipfile.ZipFile(io.BytesIO(case_named("zip-ratio-1000").content())) as bundle:
        (info,) = bundle.infolist()
        assert info.file_size / info.compress_size >= 1000
        assert info.file_size <= IMAGE_BYTES
        with Image.open(io.BytesIO(bundle.read(info))) as image:
            assert image.size == (960, 720)


@pytest.mark.parametrize(
    ("case", "raw"),
    [
        ("zip-dotdot-name", b"../../../../tmp/evil.png"),
        ("zip-backslash-name", b"..\\..\\evil.png"),
        ("zip-nul-name", b"photo.png\0.exe"),
        ("zip-4k-name", b"a" * 4092 + b".png"),
    ],
)
def test_the_hostile_names_are_stored_as_written_over_a_valid_png(case: str, raw: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(case_named(case).content())) as bundle:
        (info,) = bundle.infolist()
        assert info.orig_filename.encode("cp437") == raw
        assert bundle.read(info) == images.small_png()


def test_the_polyglot_is_a_png_and_a_zip_that_starts_after_it() -> None:
    data = zips.png_zip_polyglot()
    png = images.small_png()
    assert data.startswith(png) and data[len(png) : len(png) + 4] == b"PK\3\4"
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG" and image.size == (64, 64)
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:  # Python finds it all the same
        assert bundle.read("inner.png") == png


def test_the_script_sits_in_a_text_chunk_of_a_valid_png() -> None:
    data = case_named("png-script-text").content()
    assert png_chunks(data)[b"tEXt"] == b"Comment\0<script>alert(1)</script>"
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (64, 64)
