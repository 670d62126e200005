"""Which video container a file is, from its leading bytes alone (API and workers).

The first, cheapest check on a video upload: the API reads ``HEADER_BYTES`` of it
(``read_head``) and refuses a file that starts like none of the accepted containers
(``sniff_container``) before any process is started or any FFmpeg code runs. The
demuxer named here is then the only one that opens the file (``common.videos``).

    sniff_container(head)  -> the FFmpeg demuxer: "mov", "matroska" or "avi", or None
    container_name(...)    -> our name, a key of ``CONTAINERS``: "mp4", "mov", "mkv", ...

Stdlib only (no ``av``): cheap for the API to import.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

__all__ = [
    "ACCEPTED",
    "AVI",
    "CONTAINERS",
    "EBML_MAGIC",
    "HEADER_BYTES",
    "ISO_BMFF",
    "ISO_BOXES",
    "MATROSKA",
    "STILL_IMAGE_BRANDS",
    "Source",
    "container_name",
    "read_head",
    "sniff_container",
]

# Our short name -> (content type, extension of the stored copy).
CONTAINERS: dict[str, tuple[str, str]] = {
    "mp4": ("video/mp4", ".mp4"),
    "mov": ("video/quicktime", ".mov"),
    "mkv": ("video/x-matroska", ".mkv"),
    "webm": ("video/webm", ".webm"),
    "avi": ("video/x-msvideo", ".avi"),
}
ACCEPTED = "MP4, MOV, MKV, WebM or AVI"

# The FFmpeg demuxer each container family is opened with, forced: a file is never handed
# to FFmpeg's format probing, which would try every demuxer it was built with.
ISO_BMFF, MATROSKA, AVI = "mov", "matroska", "avi"
# Top-level boxes a QuickTime/MP4 file can start with (its size, then one of these at 4):
# "ftyp" in every file since 2001, the others in older QuickTime files without it.
ISO_BOXES = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"}
EBML_MAGIC = b"\x1a\x45\xdf\xa3"

# How far into the file the EBML header (and its DocType) lies.
HEADER_BYTES = 64

# ISO-BMFF brands of still images, which FFmpeg's mov demuxer also opens.
STILL_IMAGE_BRANDS = {"heic", "heix", "heim", "heis", "mif1", "msf1", "avif", "avis"}

Source = str | Path | IO[bytes]


def read_head(source: Source) -> bytes:
    """The first ``HEADER_BYTES`` of a path or a file object (read from, and left at, its start)."""
    if isinstance(source, str | Path):
        with open(source, "rb") as stream:
            return stream.read(HEADER_BYTES)
    source.seek(0)
    head = source.read(HEADER_BYTES)
    source.seek(0)
    return bytes(head)


def sniff_container(head: bytes) -> str | None:
    """The FFmpeg demuxer for a file starting with ``head`` (``"mov"``, ``"matroska"`` or
    ``"avi"``), or None when it starts like none of the accepted containers.

    Signatures: a QuickTime/MP4 box type at offset 4, the EBML magic 1A 45 DF A3 at 0,
    "RIFF" at 0 with "AVI " at 8.
    """
    if head[4:8] in ISO_BOXES:
        return ISO_BMFF
    if head.startswith(EBML_MAGIC):
        return MATROSKA
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return AVI
    return None


def container_name(demuxer: str, head: bytes, major_brand: str) -> str:
    """Our name (a key of ``CONTAINERS``) of a file sniffed as ``demuxer``.

    One demuxer opens MOV and MP4 (and 3GP, HEIF...): the ftyp ``major_brand`` tells them
    apart ("qt" is MOV). One opens Matroska and WebM: the EBML DocType in ``head`` does.
    Still-image brands (``STILL_IMAGE_BRANDS``) are the caller's to refuse first.
    """
    if demuxer == ISO_BMFF:
        return "mov" if major_brand == "qt" else "mp4"
    if demuxer == MATROSKA:
        return "webm" if _ebml_doctype(head) == "webm" else "mkv"
    return "avi"


def _ebml_doctype(head: bytes) -> str | None:
    """The DocType string of an EBML header ("matroska" or "webm"), if it is in ``head``."""
    at = head.find(b"\x42\x82")
    if at < 0 or at + 2 >= len(head):
        return None
    first = head[at + 2]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8:
        return None
    size = first & (0xFF >> length)
    for byte in head[at + 3 : at + 2 + length]:
        size = size << 8 | byte
    start = at + 2 + length
    return head[start : start + size].rstrip(b"\0").decode("ascii", "replace")
