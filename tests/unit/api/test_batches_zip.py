"""Zip batches: hostile archives refused whole, before any member is stored (api/archives.py).

The zips are made here with zipfile (a few bytes patched where zipfile would refuse to
write what an attacker can); the app runs with Redis and RabbitMQ down, as in
test_uploads.py: every refusal here comes before either is needed.
"""

from __future__ import annotations

import functools
import io
import struct
import time
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from api.app import build_services, create_app
from api.archives import extract, image_entries, open_zip
from api.errors import ApiError, PayloadTooLarge, UnprocessableImage, UnsupportedMediaType
from common.settings import Settings
from common.storage import Storage
from tests.support.api import assert_problem
from tests.support.images import jpeg, png_bytes
from tests.support.keys import OFFLINE_KEY, headers, offline_keys

SETTINGS = Settings()  # max_batch_files 1000, ratio 100:1, 2 GiB uncompressed in all


def png() -> bytes:
    return png_bytes(8, 8)


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return out.getvalue()


@functools.cache
def many_entries() -> bytes:
    """100,000 empty members (about 9 MB, a second to build)."""
    return zip_of(dict.fromkeys((f"{i:05x}.png" for i in range(100_000)), b""))


def refusal(data: bytes, settings: Settings = SETTINGS) -> ApiError:
    with pytest.raises(ApiError) as caught:
        open_zip(io.BytesIO(data), settings).close()
    return caught.value


# --- the end record and the directory, before zipfile parses them --------------------


def test_a_zip_of_100000_entries_is_refused_in_well_under_a_second() -> None:
    data = many_entries()
    started = time.perf_counter()
    error = refusal(data)
    seconds = time.perf_counter() - started
    assert isinstance(error, PayloadTooLarge)
    assert "100000 entries" in error.detail and "at most 1000 files" in error.detail
    # From the end record (about 0.1 ms); zipfile alone takes half a second to parse the
    # directory into 100,000 ZipInfo objects before anything can count them.
    assert seconds < 0.1, f"refused in {seconds:.3f} s"


def test_a_directory_holding_more_entries_than_its_end_record_says_is_refused() -> None:
    data = bytearray(zip_of(dict.fromkeys((f"{i}.png" for i in range(3500)), b"")))
    end = data.rfind(b"PK\x05\x06")
    data[end + 8 : end + 12] = struct.pack("<HH", 2, 2)  # entries on this disk, in all
    error = refusal(bytes(data))
    assert isinstance(error, PayloadTooLarge) and "3000 zip entries" in error.detail


def test_a_zip64_archive_within_the_limits_opens() -> None:
    settings = replace(SETTINGS, max_batch_files=30_000)
    data = zip_of(dict.fromkeys((f"{i:05x}.png" for i in range(70_000)), b""))
    assert b"PK\x06\x06" in data[-200:]  # past 65,535 entries: the ZIP64 end record
    with open_zip(io.BytesIO(data), settings) as bundle:
        assert len(bundle.infolist()) == 70_000
    assert isinstance(refusal(data), PayloadTooLarge)  # its count is read there too


def test_a_zip_after_other_data_is_refused() -> None:
    polyglot = png() + zip_of({"inner.png": png()})
    error = refusal(polyglot)
    assert isinstance(error, UnprocessableImage)
    assert f"{len(png())} bytes before the zip" in error.detail
    assert zipfile.ZipFile(io.BytesIO(polyglot)).namelist() == ["inner.png"]  # zipfile takes it


def test_a_zip_appended_with_offsets_from_the_file_start_is_refused() -> None:
    # zipfile's mode "a" on a file that is no zip appends one whose offsets count the
    # prefix (as ``zip -A`` fixes them): only the first bytes give it away.
    out = io.BytesIO(png())
    with zipfile.ZipFile(out, "a") as bundle:
        bundle.writestr("inner.png", png())
    error = refusal(out.getvalue())
    assert isinstance(error, UnprocessableImage) and "start at byte 0" in error.detail


def with_name(name: bytes) -> bytes:
    """A zip whose second entry has the raw ``name`` (zipfile cuts names at a NUL)."""
    stand_in = b"x" * len(name)
    data = zip_of({"first.png": png(), stand_in.decode(): png(), "third.png": png()})
    assert data.count(stand_in) == 2  # the local header and the directory
    return data.replace(stand_in, name)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (b"../../../../tmp/evil.png", "climbs out of its folder"),
        (b"photos/../../evil.png", "climbs out of its folder"),
        (b"/etc/evil.png", "absolute path"),
        (b"C:/evil.png", "absolute path"),
        (b"..\\..\\evil.png", "backslash"),
        (b"photo.png\x00.exe", "NUL byte"),
        (b"a" * 4092 + b".png", "its name is 4096 bytes, over 255"),
    ],
)
def test_member_names_that_are_paths_or_too_long_are_refused(name: bytes, problem: str) -> None:
    error = refusal(with_name(name))
    assert isinstance(error, UnprocessableImage)
    assert error.detail.startswith("zip entry 2 (of 3, in directory order) is refused: ")
    assert problem in error.detail
    assert len(error.detail) < 200  # the name is not echoed


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"PK but not really", "not a zip file"),
        (zip_of({"a.png": png()}) + b"trailing bytes", "not a zip file"),
        (zip_of({"a.png": png()})[:-30], "not a zip file"),
    ],
)
def test_what_is_not_a_zip_is_415(data: bytes, detail: str) -> None:
    error = refusal(data)
    assert isinstance(error, UnsupportedMediaType) and detail in error.detail


# --- declared sizes -------------------------------------------------------------------


def test_members_over_the_uncompressed_total_are_refused() -> None:
    settings = replace(SETTINGS, max_batch_uncompressed_bytes=10_000)
    data = zip_of({"a.png": b"\x01" * 6000, "b.png": b"\x02" * 6000})
    error = refusal(data, settings)
    assert isinstance(error, PayloadTooLarge)
    assert "12000 bytes uncompressed" in error.detail
    assert "CV_MAX_BATCH_UNCOMPRESSED_BYTES" in error.detail


def test_a_member_compressed_1000_to_1_is_refused_unopened() -> None:
    data = zip_of({"ok.jpg": jpeg(), "black.bmp": bytes(4 << 20)}, zipfile.ZIP_DEFLATED)
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("black.bmp")
    assert info.file_size / info.compress_size > 1000
    error = refusal(data)
    assert isinstance(error, UnprocessableImage)
    assert "zip entry 2 (of 2)" in error.detail and "over 100:1" in error.detail


def test_small_members_may_compress_well() -> None:
    # Under 1 MiB a member inflates to little whatever its ratio: a one-colour icon.
    data = zip_of({"icon.bmp": bytes(500_000), "photo.jpg": jpeg()}, zipfile.ZIP_DEFLATED)
    with open_zip(io.BytesIO(data), SETTINGS) as bundle:
        assert len(image_entries(bundle)) == 2


# --- a good zip, and inflating ------------------------------------------------------


def test_a_good_zip_keeps_its_images_and_drops_folders_and_litter() -> None:
    photo = jpeg()
    data = zip_of(
        {
            "photos/": b"",
            "photos/a/x.jpg": photo,
            "__MACOSX/photos/a/._x.jpg": b"\x00\x05\x16\x07" + bytes(4092),
            "photos/.DS_Store": b"\x00" * 100,
            "photos/b/y.jpg": photo,
        },
        zipfile.ZIP_DEFLATED,
    )
    with open_zip(io.BytesIO(data), SETTINGS) as bundle:
        entries = image_entries(bundle)
        members = [(name, s.read()) for name, s in extract(bundle, entries, 10**6)]  # type: ignore[union-attr]
    assert members == [("x.jpg", photo), ("y.jpg", photo)]


def test_a_member_over_the_upload_limit_is_not_inflated() -> None:
    data = zip_of({"big.jpg": b"\xff" * 5000})
    with open_zip(io.BytesIO(data), SETTINGS) as bundle:
        [(name, outcome)] = list(extract(bundle, image_entries(bundle), 4999))
    assert name == "big.jpg" and isinstance(outcome, PayloadTooLarge)


def test_a_member_inflating_past_its_declared_size_fails_alone() -> None:
    data = bytearray(zip_of({"liar.png": bytes(1 << 20)}, zipfile.ZIP_DEFLATED))
    for header, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # the uncompressed size
        start = data.find(header)
        data[start + at : start + at + 4] = struct.pack("<L", 1000)
    with open_zip(io.BytesIO(bytes(data)), SETTINGS) as bundle:
        [(_, outcome)] = list(extract(bundle, image_entries(bundle), 10**7))
    assert isinstance(outcome, UnsupportedMediaType)


class Overflowing:
    """A zip whose member gives more bytes than it declares (zipfile itself never does)."""

    def open(self, info: zipfile.ZipInfo) -> io.BytesIO:
        return io.BytesIO(b"\x00" * (info.file_size * 3))


def test_inflating_stops_at_the_declared_size_whatever_the_member_gives() -> None:
    info = zipfile.ZipInfo("liar.png")
    info.file_size = 1000
    [(_, outcome)] = list(extract(Overflowing(), [info], 10**7))  # type: ignore[arg-type]
    assert isinstance(outcome, UnsupportedMediaType)
    assert "inflates past its declared 1000 bytes" in outcome.detail


# --- through the app -------------------------------------------------------------------


class NoWorkers:
    """Stands in for Redis where a batch needs it before its members: no worker reports."""

    def __init__(self) -> None:
        self.workers = self

    def alive(self) -> list[dict[str, Any]]:
        return []


def client(settings: Settings, free: int | None = None) -> Any:
    services = build_services(settings)
    storage = Storage(services.storage.root, free_space=lambda _: 10**15 if free is None else free)
    app = create_app(
        settings,
        replace(services, store=NoWorkers(), storage=storage),  # type: ignore[arg-type]
        keys=offline_keys(),
    )
    test_client = app.test_client(base_url="http://localhost")
    test_client.headers.update(headers(OFFLINE_KEY))
    return test_client


def post_zip(test_client: Any, data: bytes) -> Any:
    return test_client.post(
        "/v1/batches",
        files={"archive": ("photos.zip", data, "application/zip")},
        data={"pipeline": "detect"},
    )


@pytest.mark.parametrize(
    ("data", "status", "detail"),
    [
        (many_entries, 413, "100000 entries"),
        (lambda: png() + zip_of({"inner.png": png()}), 422, "bytes before the zip"),
        (lambda: with_name(b"a" * 4092 + b".png"), 422, "zip entry 2 (of 3, in directory order)"),
        (lambda: b"PK but not really", 415, "not a zip file"),
    ],
)
def test_hostile_zips_get_a_problem_and_leave_nothing(
    offline_settings: Settings, data: Callable[[], bytes], status: int, detail: str
) -> None:
    settings = replace(offline_settings, max_batch_bytes=64 << 20)
    test_client, body = client(settings), data()
    started = time.perf_counter()
    response = post_zip(test_client, body)
    seconds = time.perf_counter() - started
    assert_problem(response, status, detail)
    assert seconds < 1, f"answered in {seconds:.2f} s"  # the 9 MB body included
    storage = settings.resolve(settings.storage_dir)
    assert [p for p in Path(storage).rglob("*") if p.is_file()] == []


def test_a_batch_whose_members_would_fill_the_disk_is_507(offline_settings: Settings) -> None:
    # The body (a small zip) fits; its members, inflated, would pass the floor.
    settings = replace(offline_settings, storage_min_free_bytes=1 << 20)
    data = zip_of({f"{i}.jpg": jpeg() + bytes(200_000) for i in range(5)}, zipfile.ZIP_DEFLATED)
    assert len(data) < 100_000
    response = post_zip(client(settings, free=(1 << 20) + 500_000), data)
    assert_problem(response, 507, "would leave less than 1048576 bytes free")
    assert response.json()["title"] == "Insufficient Storage"
