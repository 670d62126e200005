"""The probe in a child process (common.probe, common.sandbox): same answers, real limits.

The misbehaving children are this module itself, run by the real sandbox as
``python -m common.sandbox CPU MEMORY tests.unit.common.test_probe BEHAVIOUR``: the
limits they meet are the ones the probe's child meets (see ``_misbehave`` at the end).
"""

from __future__ import annotations

import io
import json
import mmap
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from common import sandbox
from common.probe import ProbeFailed, _read_answer, probe_untrusted
from common.settings import Settings
from common.videos import NotAVideo, VideoUnprocessable, probe_video

ME = __name__ if __name__ != "__main__" else "tests.unit.common.test_probe"
LIMITS = sandbox.Limits(cpu_seconds=10, memory_bytes=1 << 30, timeout_seconds=20)


def moving_shapes(path: Path, seconds: float, fps: float) -> None:
    """tests.support.videos.moving_shapes, imported only by the tests: OpenCV would not
    load in the children's address space."""
    from tests.support.videos import moving_shapes

    moving_shapes(path, seconds, fps)


@pytest.fixture
def settings(offline_settings: Settings) -> Settings:
    return replace(offline_settings, max_image_pixels=320 * 240, max_video_seconds=60)


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argument lists of every child the sandbox starts (each one still runs)."""
    seen: list[list[str]] = []
    real = sandbox.run

    def spy(module: str, args: list[str], limits: sandbox.Limits) -> Any:
        seen.append([module, *args])
        return real(module, args, limits)

    monkeypatch.setattr(sandbox, "run", spy)
    return seen


@pytest.mark.parametrize("name", ["a.mp4", "a.mov", "a.mkv", "a.webm", "a.avi", "a.mjpeg.avi"])
def test_the_child_answers_what_the_probe_answers_in_process(
    tmp_path: Path, settings: Settings, launches: list[list[str]], name: str
) -> None:
    path = tmp_path / name
    moving_shapes(path, seconds=2, fps=10)
    expected = probe_video(path, settings.max_image_pixels, settings.max_video_seconds)
    assert probe_untrusted(path, settings) == expected
    stream = io.BytesIO(path.read_bytes())  # in memory: copied to the spool dir for the child
    assert probe_untrusted(stream, settings, tmp_path) == expected
    assert stream.tell() == 0
    assert [p.name for p in tmp_path.iterdir()] == [name], "the copy is removed"
    assert len(launches) == 2


def test_a_spooled_upload_is_read_from_its_own_file(
    tmp_path: Path, settings: Settings, launches: list[list[str]]
) -> None:
    path = tmp_path / "a.mp4"
    moving_shapes(path, seconds=1, fps=10)
    with path.open("rb") as stream:
        probe_untrusted(stream, settings, tmp_path / "never-made")
    assert launches[0][1] == str(path)


@pytest.mark.parametrize(
    "data",
    [b"", b"%PDF-1.4 not a video", b"\x47" + bytes(187) * 4, b"RIFF\0\0\0\0WAVEfmt "],
    ids=["empty", "pdf", "mpeg-ts", "wav"],
)
def test_what_does_not_start_like_a_video_starts_no_child(
    tmp_path: Path, settings: Settings, launches: list[list[str]], data: bytes
) -> None:
    path = tmp_path / "upload"
    path.write_bytes(data)
    with pytest.raises(NotAVideo, match="does not start like a video; send MP4, MOV"):
        probe_untrusted(path, settings)
    assert launches == []


def test_refusals_come_back_from_the_child(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "a.mp4"
    moving_shapes(path, seconds=3, fps=10)
    with pytest.raises(VideoUnprocessable, match=r"lasts 3\.0 s; the limit is 2\.5 s"):
        probe_untrusted(path, replace(settings, max_video_seconds=2.5))
    with pytest.raises(VideoUnprocessable, match=r"320x240 = 76800 pixels; the limit is 76799"):
        probe_untrusted(path, replace(settings, max_image_pixels=320 * 240 - 1))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[:2000])  # the signature, not the index
    with pytest.raises(NotAVideo, match="not a video the service can read"):
        probe_untrusted(cut, settings)


def test_a_missing_upload_is_a_storage_fault(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(FileNotFoundError):
        probe_untrusted(tmp_path / "gone.mp4", settings)


@pytest.mark.parametrize(
    "change",
    [{"probe_timeout_seconds": 0.01}, {"probe_memory_bytes": 64 << 20}],
    ids=["wall-clock", "memory"],
)
def test_a_child_stopped_by_a_limit_is_a_422_without_internals(
    tmp_path: Path, settings: Settings, caplog: pytest.LogCaptureFixture, change: dict[str, Any]
) -> None:
    """The real probe's child: killed while it starts (wall clock), or unable to load
    FFmpeg in 64 MiB of address space."""
    path = tmp_path / "a.mp4"
    moving_shapes(path, seconds=1, fps=10)
    started = time.monotonic()
    with pytest.raises(ProbeFailed) as refused:
        probe_untrusted(path, replace(settings, **change))
    assert time.monotonic() - started < 5
    assert str(refused.value) == "the video could not be probed within its limits"
    assert "video probe failed" in caplog.text


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        {"info": {"container": "mp4"}},
        {"refused": "not_a_video"},
        {"refused": "elsewhere", "reason": "x"},
        {"info": {}, "refused": "unprocessable", "reason": "x"},
    ],
)
def test_an_answer_out_of_shape_is_a_failed_probe(answer: Any) -> None:
    with pytest.raises(ProbeFailed):
        _read_answer(answer)


def test_an_answer_with_a_field_of_the_wrong_type_is_a_failed_probe(
    tmp_path: Path, settings: Settings
) -> None:
    path = tmp_path / "a.mkv"
    moving_shapes(path, seconds=1, fps=10)
    info = probe_video(path, settings.max_image_pixels, 60).as_dict()
    assert _read_answer({"info": info}).as_dict() == info
    for field, value in [("width", "320"), ("frames", True), ("container", "mpegts")]:
        with pytest.raises(ProbeFailed):
            _read_answer({"info": {**info, field: value}})
    with pytest.raises(ProbeFailed):
        _read_answer({"info": {**info, "content_type": "text/html"}})


# --- the sandbox's limits, met by misbehaving children -------------------------------


def test_the_child_sees_no_settings_no_stdin_no_inherited_fds_and_its_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CV_REDIS_URL", "redis://:secret@127.0.0.1:6379/0")
    with (tmp_path / "open").open("wb") as held:
        os.set_inheritable(held.fileno(), True)
        inheritable = held.fileno()
        seen = sandbox.run(ME, ["describe"], LIMITS)
    assert set(seen["env"]) <= {"LC_CTYPE"}  # what Python's own locale coercion sets
    assert seen["stdin"] == ""
    assert inheritable not in seen["fds"] and len(seen["fds"]) <= 4  # 0, 1, 2, the listing
    assert seen["group_leader"]
    assert seen["limits"] == {
        "cpu": [10, 11],
        "as": [1 << 30, 1 << 30],
        "core": [0, 0],
        "fsize": [0, 0],
        "nofile": [sandbox.MAX_FILES, sandbox.MAX_FILES],
    }


def test_the_address_space_limit_holds() -> None:
    small = replace(LIMITS, memory_bytes=256 << 20)
    assert sandbox.run(ME, ["allocate", str(512 << 20)], small) == {"allocated": False}
    roomy = replace(LIMITS, memory_bytes=2 << 30)
    assert sandbox.run(ME, ["allocate", str(512 << 20)], roomy) == {"allocated": True}


def test_a_child_past_its_wall_clock_is_killed_with_what_it_started() -> None:
    seen: list[int] = []
    watcher = threading.Thread(target=lambda: _watch_for(HANG_MARK, seen, 2.0))
    watcher.start()
    started = time.monotonic()
    with pytest.raises(sandbox.SandboxFailed, match=r"wall clock of 1\.5 s"):
        sandbox.run(ME, ["hang"], replace(LIMITS, timeout_seconds=1.5))
    assert time.monotonic() - started < 3
    watcher.join()
    assert seen, "the child started its grandchild"
    time.sleep(0.2)
    assert not _processes_with(HANG_MARK), "the grandchild was killed with its group"


def test_a_child_past_its_cpu_seconds_is_killed() -> None:
    with pytest.raises(sandbox.SandboxFailed, match=r"SIGXCPU|SIGKILL"):
        sandbox.run(ME, ["spin"], replace(LIMITS, cpu_seconds=1))


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [("flood", "answered no JSON"), ("fail", "exited with status 3"), ("crash", "SIGSEGV")],
)
def test_a_child_that_answers_nothing_usable_fails(behaviour: str, message: str) -> None:
    with pytest.raises(sandbox.SandboxFailed, match=message):
        sandbox.run(ME, [behaviour], LIMITS)


HANG_MARK = "61.2345"


def _watch_for(mark: str, seen: list[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not seen and time.monotonic() < deadline:
        seen.extend(_processes_with(mark))
        time.sleep(0.05)


def _processes_with(mark: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _misbehave(behaviour: str, *args: str) -> None:
    """What this module does when the sandbox runs it as a child."""
    if behaviour == "describe":
        limits = {
            "cpu": resource.RLIMIT_CPU,
            "as": resource.RLIMIT_AS,
            "core": resource.RLIMIT_CORE,
            "fsize": resource.RLIMIT_FSIZE,
            "nofile": resource.RLIMIT_NOFILE,
        }
        print(
            json.dumps(
                {
                    "env": dict(os.environ),
                    "stdin": sys.stdin.read(),
                    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
                    "group_leader": os.getpgrp() == os.getpid(),
                    "limits": {k: resource.getrlimit(v) for k, v in limits.items()},
                }
            )
        )
    elif behaviour == "allocate":
        try:
            with mmap.mmap(-1, int(args[0])):  # address space only: no page is touched
                allocated = True
        except OSError:
            allocated = False
        print(json.dumps({"allocated": allocated}))
    elif behaviour == "hang":
        subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({HANG_MARK})"])
        time.sleep(60)
    elif behaviour == "spin":
        while True:
            pass
    elif behaviour == "flood":
        sys.stdout.write(json.dumps("x" * sandbox.MAX_ANSWER))  # valid, but too long
    elif behaviour == "fail":
        sys.exit(3)
    elif behaviour == "crash":
        os.kill(os.getpid(), 11)


if __name__ == "__main__":
    _misbehave(*sys.argv[1:])
