"""What a step needs, built once per worker process from its app's one Settings object."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from celery import Celery

from celery_worker import metrics
from celery_worker.embeddings import EmbeddingCache
from celery_worker.errors import InputError
from celery_worker.intake import Intake
from celery_worker.models import ModelRegistry, configure_ultralytics, specs_from
from common.batching import after_end
from common.catalogue import Catalogue, load_catalogue
from common.contract import PROMPT_PIPELINE, QUEUE_NOTIFY, TASK_NOTIFY, ImagePayload
from common.jobstore import JobStore
from common.settings import Settings
from common.storage import Storage


@dataclass
class WorkerContext:
    settings: Settings
    catalogue: Catalogue
    store: JobStore
    storage: Storage
    models: ModelRegistry
    celery: Celery  # the worker's own app: publishes chunks, finishing steps, callbacks
    # The embeddings of the SAM family, kept and shared (celery_worker.embeddings).
    embeddings: EmbeddingCache = field(init=False)
    # The inference process's own consumer: the rest of a batch (celery_worker.intake).
    intake: Intake = field(init=False)

    def __post_init__(self) -> None:
        self.embeddings = EmbeddingCache(self)
        self.intake = Intake(self.celery)

    @classmethod
    def build(cls, settings: Settings, celery: Celery) -> WorkerContext:
        """No connection is opened here; Redis connects on first use (after fork)."""
        configure_ultralytics(settings.resolve(settings.ultralytics_dir))
        catalogue = load_catalogue(settings)
        return cls(
            settings=settings,
            catalogue=catalogue,
            store=JobStore.from_settings(settings),
            storage=Storage(settings.resolve(settings.storage_dir)),
            models=ModelRegistry(specs_from(catalogue.models), settings.device),
            celery=celery,
        )

    def model_input(self, payload: ImagePayload, mapped: bool = False) -> np.ndarray:
        """The array an image's preprocess step wrote for its inference step. ``mapped``:
        memory-mapped, read only where the model reads it (one copy fewer: the batch's
        stacking reads the page cache itself). Storage writes whole files by renaming, so
        a mapped file never changes under its reader."""
        try:
            array: np.ndarray = np.load(
                self.storage.path(payload["model_input_key"]),
                allow_pickle=False,
                mmap_mode="r" if mapped else None,
            )
            return array
        except FileNotFoundError as exc:
            raise InputError("the preprocessed image is missing from storage") from exc

    def notify(self, job_id: str) -> None:
        """Queue the job's callback, if it asked for one (sent by ``tasks.notify``)."""
        if self.store.jobs.callback_url(job_id):
            self.celery.send_task(TASK_NOTIFY, args=(job_id,), queue=QUEUE_NOTIFY)

    def ended(self, job_id: str) -> None:
        """The job succeeded or failed here: its batch's next member, and its callback."""
        record = self.store.jobs.get(job_id)
        if record and record["pipeline"] == PROMPT_PIPELINE:
            self.store.images.signal_answered(job_id)  # the API request waiting for it
        metrics.job_ended(record)
        after_end(self.store, self.celery, self.catalogue.pipelines, record)
        self.notify(job_id)
