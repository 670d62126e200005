"""What can go wrong in a step, and what each outcome does to the job.

    Control signals (not failures)
    ├── JobGone                 job cancelled, deleted or expired: stop the chain quietly
    └── ChunkAlreadyDone        a video chunk redelivered or published twice, whose work
                                another run finished: stop this copy quietly

    StepFailed(kind)            the job ends ``failed`` with ``error.kind`` and the message
    ├── InputError   "input"    the upload cannot be decoded or processed; never retried
    └── ModelUnavailable "model" weights missing or not loadable; never retried

Transient I/O (Redis connection errors) is retried by Celery with back-off.
A step over its time limit fails the job with kind ``timeout``. Any other
exception is a bug: the job fails with kind ``internal`` and the traceback is
logged by Celery, never swallowed.
"""

from __future__ import annotations


class JobGone(Exception):
    """The job is no longer active; the step must not run or must not publish."""


class ChunkAlreadyDone(Exception):
    """Another run of this video chunk finished it (after a redelivery or a re-publish)."""


class StepFailed(Exception):
    kind = "internal"


class InputError(StepFailed):
    kind = "input"


class ModelUnavailable(StepFailed):
    kind = "model"
