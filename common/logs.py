"""Job events as JSON lines: one line per event, the same fields in the API and every worker.

``event("step.finished", job_id=..., tenant=..., step=..., queue=..., seconds=...)``
logs to the ``cvjobs.events`` logger; :func:`install_event_log` (called by the API's
and the workers' entry points) sends that logger to ``CV_EVENT_LOG`` as JSON, one
object a line. Every process of one host appends to the same file by default
(``var/log/events.jsonl``), so ``grep <job id> var/log/events.jsonl`` follows a job
from its submission through every step to its end; ``-`` writes to stderr instead
(containers). The service's other log lines are untouched.

Lines are written whole with one ``write`` on a file opened for appending, which
Linux keeps whole between processes for lines this short.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.settings import Settings

EVENTS = "cvjobs.events"
events_log = logging.getLogger(EVENTS)
# The attributes every LogRecord has: what is left over came from ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: time (UTC, ms), level, logger, message, its extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class _AppendHandler(logging.Handler):
    """One ``write`` per line on an O_APPEND descriptor (safe between processes)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            os.write(self.fd, (self.format(record) + "\n").encode())
        except Exception:  # logging must never break the caller
            self.handleError(record)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        super().close()


def install_event_log(target: str, service: str) -> None:
    """Send job events to ``target`` as JSON lines: a file path, ``-`` (stderr), or ``""``
    (events go to the ordinary logs as text). ``service`` names the process in each line."""
    for handler in list(events_log.handlers):
        events_log.removeHandler(handler)
        handler.close()
    events_log.setLevel(logging.INFO)
    if not target:
        events_log.propagate = True
        return
    out: logging.Handler = logging.StreamHandler(sys.stderr)
    if target != "-":
        try:
            out = _AppendHandler(Path(target))
        except OSError as exc:  # a read-only file system (a container): stderr, not a crash
            logging.getLogger(__name__).warning(
                "CV_EVENT_LOG %s: %s; events go to stderr", target, exc
            )
    out.setFormatter(JsonFormatter())
    out.addFilter(_ServiceFilter(service))
    events_log.addHandler(out)
    events_log.propagate = False


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        return True


def event(name: str, **fields: Any) -> None:
    """Log one job event (``job.submitted``, ``step.finished``, ``job.finished``, ...)."""
    events_log.info(name, extra={k: v for k, v in fields.items() if v is not None})


def event_log_target(settings: Settings) -> str:
    """``CV_EVENT_LOG`` with a relative path taken from the repository root."""
    target = settings.event_log
    return target if target in ("", "-") else str(settings.resolve(Path(target)))
