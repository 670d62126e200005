"""Zip archives of batches, opened only when they are plain zips of a batch's size.

zipfile alone would take what an attacker sends: data before the zip (a PNG+ZIP
polyglot), a directory of 100,000 entries (one object each, parsed before anyone can
count them), names that are paths or 4 KB long, members that inflate 1000:1 or past
their declared size. ``open_zip`` reads the end record and the central directory from
the bytes first and refuses such an archive whole, before any member is stored (413
for sizes and counts, 422 for the rest, 415 for what is not a zip at all);
``extract`` inflates the members it let through, counting what comes out.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO

from api.errors import ApiError, PayloadTooLarge, UnprocessableImage, UnsupportedMediaType
from common.settings import Settings

# Zip members that are never images: folder entries and the litter of desktop zippers.
_SKIP = ("__MACOSX/", ".DS_Store", "Thumbs.db")
# Records of the zip format (PKWARE's APPNOTE.TXT, 4.3): the end of central directory,
# the ZIP64 end record and its locator, a central directory header.
_END = struct.Struct("<4s4H2LH")
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END_SIG, _LOCATOR_SIG, _END64_SIG = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
_CENTRAL_SIG, _LOCAL_SIG = b"PK\x01\x02", b"PK\x03\x04"
_UTF8_NAME = 0x800  # general purpose flag bit 11
# Zip entries a batch of max_batch_files images may take: each image may come with a
# folder entry and a __MACOSX/._ twin (macOS writes one per file). Images are counted
# again, exactly, once the directory is parsed.
_ENTRIES_PER_FILE = 3
_MAX_NAME_BYTES = 255
_DRIVE = re.compile(rb"^[A-Za-z]:")
# Members this small inflate to little whatever their ratio (an icon-sized BMP of one
# colour compresses 100:1): the ratio is checked above it.
_RATIO_FLOOR = 1 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class _ZipEnd:
    entries: int
    directory_offset: int
    directory_size: int
    at: int  # where the end records start: the directory must end here


def open_zip(archive: IO[bytes], settings: Settings) -> zipfile.ZipFile:
    """The archive as a zip: 415 when it is none, 413 or 422 when it is one we refuse.

    The end record and the central directory are read here first, from the bytes:
    zipfile accepts data before the zip and makes an object of every directory entry,
    however many. Too many entries: 413 from the end record alone. Data before the zip
    (a PNG+ZIP polyglot), a member name that is a path (``..``, absolute, ``\\``), holds
    a NUL or passes 255 bytes: 422 naming the entry, not echoing the name. Then the
    declared sizes: over ``max_batch_uncompressed_bytes`` in all, 413; one member
    compressed more than ``max_member_ratio``:1 (a zip bomb), 422.
    """
    _check_directory(archive, settings)
    try:
        bundle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, NotImplementedError) as exc:
        raise UnsupportedMediaType("the archive is not a zip file") from exc
    try:
        _check_sizes(bundle.infolist(), settings)
    except BaseException:
        bundle.close()
        raise
    return bundle


def _zip_end(archive: IO[bytes]) -> _ZipEnd:
    """The zip's end record (ZIP64's where there is one), found at the very end."""
    size = archive.seek(0, os.SEEK_END)
    tail_at = max(0, size - _END.size - 0xFFFF)  # the record, then a comment of 64 KiB at most
    archive.seek(tail_at)
    tail = archive.read()
    # The record ends the file, its comment (length in its last field) included; the
    # last signature with room for a whole record may be inside the comment.
    at = tail.rfind(_END_SIG, 0, max(0, len(tail) - _END.size + len(_END_SIG)))
    while at >= 0 and at + _END.size + _END.unpack_from(tail, at)[-1] != len(tail):
        at = tail.rfind(_END_SIG, 0, at)
    if at < 0:
        raise UnsupportedMediaType("the archive is not a zip file (no end record at its end)")
    _, disk, first_disk, _, entries, directory_size, directory_offset, _ = _END.unpack_from(
        tail, at
    )
    at += tail_at
    if at >= _END64_LOCATOR.size + _END64.size:
        archive.seek(at - _END64_LOCATOR.size - _END64.size)
        records = archive.read(_END64.size + _END64_LOCATOR.size)
        if records[_END64.size :].startswith(_LOCATOR_SIG):
            record = _END64.unpack_from(records)
            if record[0] != _END64_SIG:
                raise UnsupportedMediaType("the archive is not a zip file (no ZIP64 end record)")
            _, _, _, _, disk, first_disk, _, entries, directory_size, directory_offset = record
            at -= _END64_LOCATOR.size + _END64.size
    if disk or first_disk:
        raise UnprocessableImage("the zip spans several disks; send it as one file")
    return _ZipEnd(entries, directory_offset, directory_size, at)


def _check_directory(archive: IO[bytes], settings: Settings) -> None:
    """Entry count, start at byte 0 and member names, from the raw central directory."""
    end = _zip_end(archive)
    most = settings.max_batch_files * _ENTRIES_PER_FILE
    too_many = PayloadTooLarge(
        f"the zip holds {end.entries} entries; a batch takes at most "
        f"{settings.max_batch_files} files ({most} zip entries, folders and __MACOSX included)"
    )
    if end.entries > most:
        raise too_many
    before = end.at - end.directory_offset - end.directory_size
    if before > 0:
        raise UnprocessableImage(
            f"the archive has {before} bytes before the zip (a file with a zip appended?); "
            "a zip must start at byte 0"
        )
    if before < 0:
        raise UnsupportedMediaType("the archive is not a zip file (its directory is cut off)")
    archive.seek(0)
    # Offsets counted from a later start (``zip -A``) hide the prefix from the check above.
    starts_right = archive.read(4) == _LOCAL_SIG if end.entries else end.at == 0
    if not starts_right:
        raise UnprocessableImage("the zip does not start at byte 0 with its first member")
    archive.seek(end.directory_offset)
    read, index = 0, 0
    while read < end.directory_size:
        if index == most:
            raise too_many  # the directory holds more entries than the end record says
        header = archive.read(_CENTRAL.size)
        if len(header) < _CENTRAL.size or not header.startswith(_CENTRAL_SIG):
            raise UnsupportedMediaType("the archive is not a zip file (corrupt directory)")
        fields = _CENTRAL.unpack(header)
        name_length, extra_length, comment_length = fields[12:15]
        problem = (
            f"its name is {name_length} bytes, over {_MAX_NAME_BYTES}"
            if name_length > _MAX_NAME_BYTES
            else _name_problem(archive.read(name_length), flags=fields[5])
        )
        if problem:
            raise UnprocessableImage(
                f"zip entry {index + 1} (of {end.entries}, in directory order) is refused: "
                f"{problem}"
            )
        archive.seek(extra_length + comment_length, os.SEEK_CUR)
        read += _CENTRAL.size + name_length + extra_length + comment_length
        index += 1
    if read != end.directory_size or index != end.entries:
        raise UnsupportedMediaType("the archive is not a zip file (corrupt directory)")


def _name_problem(name: bytes, flags: int) -> str | None:
    """Why a member name is refused, or None: names become file names, never paths."""
    if b"\0" in name:
        return "its name holds a NUL byte"
    if b"\\" in name:
        return "its name holds a backslash (zip paths use /)"
    if name.startswith(b"/") or _DRIVE.match(name):
        return "its name is an absolute path"
    if b".." in name.split(b"/"):
        return "its name climbs out of its folder (..)"
    if flags & _UTF8_NAME:
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            return "its name is marked UTF-8 but is not"
    return None


def _check_sizes(infos: list[zipfile.ZipInfo], settings: Settings) -> None:
    """The members' declared sizes: in all, and each one's compression ratio."""
    total = sum(info.file_size for info in infos)
    if total > settings.max_batch_uncompressed_bytes:
        raise PayloadTooLarge(
            f"the zip's members are {total} bytes uncompressed; a batch takes at most "
            f"{settings.max_batch_uncompressed_bytes} (CV_MAX_BATCH_UNCOMPRESSED_BYTES)"
        )
    ratio = settings.max_member_ratio
    for index, info in enumerate(infos):
        if info.file_size > _RATIO_FLOOR and info.file_size > ratio * info.compress_size:
            raise UnprocessableImage(
                f"zip entry {index + 1} (of {len(infos)}) inflates {info.compress_size} bytes "
                f"to {info.file_size}, over {ratio}:1 (CV_MAX_MEMBER_RATIO); a zip bomb is "
                "refused unopened"
            )


def image_entries(bundle: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The zip's files that may be images: folder entries and desktop litter left out."""
    return [
        info
        for info in bundle.infolist()
        if not info.is_dir() and not any(part in info.filename for part in _SKIP)
    ]


def extract(
    bundle: zipfile.ZipFile, entries: list[zipfile.ZipInfo], max_bytes: int
) -> Iterator[tuple[str, IO[bytes] | ApiError]]:
    """Each entry's file name and its bytes, or the reason it cannot be a batch member.

    An entry declaring more than ``max_bytes`` is not inflated; none is inflated past
    its declared size. Each one's spool is closed when the next is asked for.
    """
    for info in entries:
        name = PurePosixPath(info.filename).name
        if info.file_size > max_bytes:
            yield (
                name,
                PayloadTooLarge(f"{info.file_size} bytes uncompressed; the limit is {max_bytes}"),
            )
            continue
        with tempfile.SpooledTemporaryFile(max_size=4 << 20) as spooled:
            try:
                _inflate(bundle, info, spooled)
            # What zipfile raises for a corrupt, cut-off, encrypted or unsupported member.
            except (
                zipfile.BadZipFile,
                zlib.error,
                EOFError,
                OSError,
                RuntimeError,
                NotImplementedError,
            ) as exc:
                yield name, UnsupportedMediaType(f"cannot extract this zip member: {exc}")
                continue
            spooled.seek(0)
            yield name, spooled


def _inflate(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, out: IO[bytes]) -> None:
    """Write the member to ``out``, stopping once it passes its declared size.

    The bytes are counted as they are inflated: a declared size can lie. (zipfile
    stops there too, then fails the CRC check; the bound does not rest on that.)
    """
    inflated = 0
    with bundle.open(info) as source:
        while chunk := source.read(min(_CHUNK, info.file_size - inflated + 1)):
            inflated += len(chunk)
            if inflated > info.file_size:
                raise zipfile.BadZipFile(
                    f"the member inflates past its declared {info.file_size} bytes"
                )
            out.write(chunk)
