"""One module per queue; ``celery_worker.task`` gives every task the same job bookkeeping."""
