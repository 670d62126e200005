"""The API's video check, run in a child process: FFmpeg never parses an upload inside
the API process, which holds the broker's and Redis' credentials.

    check_upload (api/submissions.py)
      -> probe_untrusted(upload, settings)              here, in the API process
           1. the leading bytes name an accepted container (common.containers.sniff_container),
              else NotAVideo (415) without starting anything
           2. common.sandbox.run("common.probe", [path, max_pixels, max_seconds]):
              a child with the CV_PROBE_* limits, no environment, stdin closed
           3. main() below, in the child: common.videos.probe_video, the answer as JSON
      <- VideoInfo, NotAVideo (415), VideoUnprocessable (422); a child killed by a limit,
         crashed or answering nonsense: ProbeFailed (422), the details in the log only

The child's answer is treated as untrusted too (FFmpeg may have been exploited): it is
checked field by field before it becomes a ``VideoInfo``. The workers check frame
sizes again while they decode.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from common import sandbox
from common.containers import ACCEPTED, CONTAINERS, Source, read_head, sniff_container
from common.videos import NotAVideo, VideoInfo, VideoUnprocessable, probe_video

if TYPE_CHECKING:  # the child imports this module: nothing it does not need
    from common.settings import Settings

log = logging.getLogger(__name__)

# The module the sandbox runs: this one (its main() below).
CHILD = "common.probe"
# Longest refusal reason taken from the child.
MAX_REASON = 500
# What each field of VideoInfo may be in JSON (its annotation is a string here).
JSON_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float)}
FIELD_TYPES = {f.name: JSON_TYPES[str(f.type)] for f in fields(VideoInfo)}


class ProbesBusy(Exception):
    """As many probes as the host has cores run already, and none ended in time (503)."""


# Probes at once in one API process: each child may take a core and CV_PROBE_MEMORY_BYTES,
# so a crowd of video uploads waits here rather than starting one child each.
_SLOTS = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))


class ProbeFailed(VideoUnprocessable):
    """The probe's child ended without an answer (a limit, a crash): HTTP 422."""

    def __init__(self) -> None:
        super().__init__("the video could not be probed within its limits")


def limits(settings: Settings) -> sandbox.Limits:
    """The probe's limits (``CV_PROBE_CPU_SECONDS``, ``_MEMORY_BYTES``, ``_TIMEOUT_SECONDS``)."""
    return sandbox.Limits(
        settings.probe_cpu_seconds, settings.probe_memory_bytes, settings.probe_timeout_seconds
    )


def probe_untrusted(source: Source, settings: Settings, spool_dir: Path | None = None) -> VideoInfo:
    """``common.videos.probe_video`` of an upload, in a limited child process.

    ``source`` is a path or a seekable file object (left at its start); one without a
    file of its own (in memory) is copied to ``spool_dir`` for the child to read.
    Raises what ``probe_video`` raises; ``ProbeFailed`` when the child is stopped.
    """
    head = read_head(source)
    if sniff_container(head) is None:
        raise NotAVideo(f"the file does not start like a video; send {ACCEPTED}")
    args = [str(settings.max_image_pixels), repr(float(settings.max_video_seconds))]
    started = time.perf_counter()
    if not _SLOTS.acquire(timeout=settings.probe_timeout_seconds):
        raise ProbesBusy("the server is probing as many videos as it can; try again soon")
    try:
        return _probe(source, settings, spool_dir, args, started)
    finally:
        _SLOTS.release()


def _probe(
    source: Source, settings: Settings, spool_dir: Path | None, args: list[str], started: float
) -> VideoInfo:
    with _on_disk(source, spool_dir) as path:
        try:
            answer = sandbox.run(CHILD, [path, *args], limits(settings))
        except sandbox.SandboxFailed as exc:
            log.warning(
                "video probe failed after %.0f ms: %s",
                (time.perf_counter() - started) * 1000,
                exc,
            )
            raise ProbeFailed() from exc
    return _read_answer(answer)


@contextmanager
def _on_disk(source: Source, spool_dir: Path | None) -> Iterator[str]:
    """A path the child can open holding ``source``: its own, else a temporary copy."""
    if isinstance(source, str | Path):
        yield str(source)
        return
    own = _own_file(source)
    if own is not None:
        yield own
        return
    with tempfile.NamedTemporaryFile(dir=spool_dir, prefix="probe-") as copy:
        source.seek(0)
        shutil.copyfileobj(source, copy)
        copy.flush()
        source.seek(0)
        yield copy.name


def _own_file(stream: IO[bytes]) -> str | None:
    """The path of the regular file ``stream`` reads, if it has one (a spooled upload)."""
    name = getattr(stream, "name", None)  # None for in-memory spools: no rollover forced
    if not isinstance(name, str):
        return None
    try:
        stream.flush()
        opened, named = os.fstat(stream.fileno()), os.stat(name)
    except (OSError, ValueError):
        return None
    same = (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)
    return name if same and stat.S_ISREG(opened.st_mode) else None


def _read_answer(answer: Any) -> VideoInfo:
    """The child's JSON answer as a ``VideoInfo`` or the refusal it names."""
    if isinstance(answer, dict) and answer.keys() == {"refused", "reason"}:
        reason = answer["reason"]
        if isinstance(reason, str):
            if answer["refused"] == "not_a_video":
                raise NotAVideo(reason[:MAX_REASON])
            if answer["refused"] == "unprocessable":
                raise VideoUnprocessable(reason[:MAX_REASON])
    elif isinstance(answer, dict) and answer.keys() == {"missing"}:
        raise FileNotFoundError("the upload to probe is missing")
    elif isinstance(answer, dict) and answer.keys() == {"info"}:
        info = _video_info(answer["info"])
        if info is not None:
            return info
    log.warning("video probe answered nonsense: %.200r", answer)
    raise ProbeFailed()


def _video_info(data: Any) -> VideoInfo | None:
    """``data`` as a ``VideoInfo`` when every field is there with its type, else None."""
    if not isinstance(data, dict) or data.keys() != FIELD_TYPES.keys():
        return None
    for name, wanted in FIELD_TYPES.items():
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, wanted):
            return None
    if data["container"] not in CONTAINERS:
        return None
    content_type, extension = CONTAINERS[data["container"]]
    if (data["content_type"], data["extension"]) != (content_type, extension):
        return None
    return VideoInfo(**{**data, "fps": float(data["fps"]), "duration": float(data["duration"])})


# --- the child -----------------------------------------------------------------------


def main(argv: Sequence[str]) -> None:
    """``PATH MAX_PIXELS MAX_SECONDS``: probe the file, print the answer as one JSON object."""
    path, max_pixels, max_seconds = argv
    answer: dict[str, Any]
    try:
        info = probe_video(Path(path), int(max_pixels), float(max_seconds))
    except NotAVideo as exc:
        answer = {"refused": "not_a_video", "reason": str(exc)}
    except VideoUnprocessable as exc:
        answer = {"refused": "unprocessable", "reason": str(exc)}
    except FileNotFoundError:
        answer = {"missing": True}
    else:
        answer = {"info": info.as_dict()}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
