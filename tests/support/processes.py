"""The processes of a gunicorn server under test, and what they cost in memory."""

from __future__ import annotations

from pathlib import Path

import psutil


def api_worker(base: str) -> psutil.Process:
    """The uvicorn worker process of the gunicorn server listening at ``base``."""
    bind = base.removeprefix("http://")
    masters = [
        p
        for p in psutil.process_iter(["cmdline"])
        if bind in (p.info["cmdline"] or []) and bind not in (p.parent().cmdline() or [])
    ]
    assert len(masters) == 1, masters
    (worker,) = masters[0].children()
    return worker


def peak_rss(process: psutil.Process) -> int:
    """VmHWM (the peak resident set size) of ``process``, in bytes."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")
