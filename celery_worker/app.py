"""The CLI's worker app: ``celery -A celery_worker.app worker -Q <queue>``.

Built from the environment (and ``.env``) when the Celery command imports this
module; nothing else imports it. Code and tests build their own apps with
``celery_worker.worker.create_worker_app(settings)``.
"""

from __future__ import annotations

from celery_worker.worker import create_worker_app

app = create_worker_app()
