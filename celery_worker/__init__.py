"""The workers: Celery tasks for each step, the model registry and the image work.

Start one with ``celery -A celery_worker.app worker -Q <queue>``; see README.
"""
