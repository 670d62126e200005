"""What a ``celery ... worker -Q a,b`` command says: its queues in order, and so the port
its exporter serves on (``celery_worker.metrics.exporter_port``: the first queue's).

The compose file and the Kubernetes manifests are checked against the same rule, so a
scrape target or a containerPort cannot drift from the code that opens the port.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery_worker.metrics import exporter_port
from common.settings import Settings


def worker_queues(command: Sequence[object]) -> list[str]:
    """The queues of a worker command, in the order of ``-Q`` (none for another program)."""
    words = [str(word) for word in command]
    if "worker" not in words or "-Q" not in words:
        return []
    return words[words.index("-Q") + 1].split(",")


def metrics_port(command: Sequence[object], settings: Settings) -> int:
    """The port the worker of ``command`` serves its metrics on (0: not a worker)."""
    queues = worker_queues(command)
    return exporter_port(settings, queues) if queues else 0
