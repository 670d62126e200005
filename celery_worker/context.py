"""What a step needs, built once per worker process from the one Settings object."""

from __future__ import annotations

from dataclasses import dataclass

from celery_worker.models import ModelRegistry, configure_ultralytics, specs_from
from common.catalogue import load_catalogue
from common.jobstore import JobStore
from common.settings import Settings
from common.storage import Storage


@dataclass
class WorkerContext:
    settings: Settings
    store: JobStore
    storage: Storage
    models: ModelRegistry

    @classmethod
    def build(cls, settings: Settings) -> WorkerContext:
        """No connection is opened here; Redis connects on first use (after fork)."""
        configure_ultralytics(settings.resolve(settings.storage_dir).parent / "ultralytics")
        return cls(
            settings=settings,
            store=JobStore.from_url(
                settings.redis_url, settings.redis_prefix, settings.job_ttl_seconds
            ),
            storage=Storage(settings.resolve(settings.storage_dir)),
            models=ModelRegistry(specs_from(load_catalogue(settings).models), settings.device),
        )
