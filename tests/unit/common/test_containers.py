"""Recognising a video container from its leading bytes (common.containers)."""

from __future__ import annotations

import pytest

from common.containers import sniff_container


@pytest.mark.parametrize(
    ("head", "demuxer"),
    [
        (b"\0\0\0\x18ftypisom\0\0\2\0", "mov"),
        (b"\0\0\0\x14ftypqt  \0\0\2\0", "mov"),
        (b"\0\0\x12\x34moov\0\0\0\x6cmvhd", "mov"),  # QuickTime before ftyp existed
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01", "matroska"),
        (b"RIFF\x10\0\0\0AVI LIST", "avi"),
        (b"RIFF\x10\0\0\0WAVEfmt ", None),
        (b"\x47\x40\x00\x10" + bytes(184) + b"\x47", None),  # MPEG-TS: not accepted
        (b"\0\0\1\xba\x44\0\4\0", None),  # MPEG-PS: not accepted
        (b"\xff\xd8\xff\xe0\0\x10JFIF", None),
        (b"GIF89a", None),
        (b"", None),
    ],
    ids=[
        "mp4",
        "mov",
        "old-mov",
        "mkv",
        "avi",
        "wav",
        "mpeg-ts",
        "mpeg-ps",
        "jpeg",
        "gif",
        "empty",
    ],
)
def test_sniff_names_the_demuxer_of_each_accepted_signature(
    head: bytes, demuxer: str | None
) -> None:
    assert sniff_container(head) == demuxer
