"""The embedding cache, as a worker uses it: encode a picture once per weights, per tenant.

Three levels, fastest first: the embeddings this process decoded lately (a small LRU,
``CV_SAM_EMBEDDINGS_IN_MEMORY``); the shared cache (float16 ``.npz`` files in storage,
indexed in Redis: ``common.jobstore.images``), which any worker on any host reads; and
the encoder. An entry is used from memory only while the shared index still has it, so
an embedding deleted with its image, evicted or expired is never answered from.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from celery_worker.models import LoadedModel
from common.jobstore.images import embedding_name

if TYPE_CHECKING:
    from celery_worker.context import WorkerContext
    from celery_worker.sam import Embedding


@dataclass(frozen=True)
class Found:
    """An embedding, and where it came from: ``memory``, ``cache`` or ``encoder``."""

    embedding: Embedding
    source: str
    name: str
    bytes: int
    seconds: float  # to read it, or to encode it

    def report(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 4),
        }


class EmbeddingCache:
    """One per worker process (``WorkerContext.embeddings``)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self._memory: OrderedDict[tuple[str, str], tuple[Embedding, int]] = OrderedDict()

    def get(self, tenant: str, content_sha256: str, loaded: LoadedModel) -> Found | None:
        """The cached embedding of this picture under ``loaded``'s weights, or None."""
        from celery_worker.sam import Embedding

        images = self.ctx.store.images
        name = embedding_name(content_sha256, str(loaded.info["weights_sha256"]))
        started = time.perf_counter()
        entry = images.embedding(tenant, name)
        if entry is None:
            self._memory.pop((tenant, name), None)
            return None
        held = self._memory.get((tenant, name))
        if held is not None:
            self._memory.move_to_end((tenant, name))
            return Found(held[0], "memory", name, held[1], time.perf_counter() - started)
        try:
            data = self.ctx.storage.path(entry["key"]).read_bytes()
        except (KeyError, FileNotFoundError):
            images.drop_embedding(tenant, name)  # its file is gone: encode again
            return None
        embedding = Embedding.from_bytes(data, loaded.device)
        self._remember(tenant, name, embedding, len(data))
        return Found(embedding, "cache", name, len(data), time.perf_counter() - started)

    def get_or_encode(
        self,
        tenant: str,
        content_sha256: str,
        loaded: LoadedModel,
        picture: Callable[[], np.ndarray],
    ) -> Found:
        """The cached embedding, else ``picture()`` (BGR) encoded and put in the cache."""
        found = self.get(tenant, content_sha256, loaded)
        if found is not None:
            return found
        started = time.perf_counter()
        embedding = loaded.model.encode(picture())
        seconds = time.perf_counter() - started
        return self.put(tenant, content_sha256, loaded, embedding, seconds)

    def put(
        self,
        tenant: str,
        content_sha256: str,
        loaded: LoadedModel,
        embedding: Embedding,
        seconds: float = 0.0,
    ) -> Found:
        """Store and index an embedding; the least recently used past the cap go.

        What is answered from is the stored (float16) form, also right after encoding:
        every prompt on a picture gets the same masks, whichever worker answers it.
        """
        from celery_worker.sam import Embedding

        settings, storage = self.ctx.settings, self.ctx.storage
        weights = str(loaded.info["weights_sha256"])
        name = embedding_name(content_sha256, weights)
        data = embedding.to_bytes()
        key = storage.embedding_key(tenant, f"{name}.npz")
        storage.write_bytes(key, data)
        fields = {"key": key, "bytes": len(data), "model": loaded.spec.name, "weights": weights}
        removed = self.ctx.store.images.put_embedding(
            tenant, name, fields, settings.embedding_cache_bytes
        )
        for old in removed:
            storage.path(old).unlink(missing_ok=True)
        stored = Embedding.from_bytes(data, loaded.device)
        self._remember(tenant, name, stored, len(data))
        return Found(stored, "encoder", name, len(data), seconds)

    def _remember(self, tenant: str, name: str, embedding: Embedding, size: int) -> None:
        limit = self.ctx.settings.sam_embeddings_in_memory
        if limit <= 0:
            return
        self._memory[(tenant, name)] = (embedding, size)
        self._memory.move_to_end((tenant, name))
        while len(self._memory) > limit:
            self._memory.popitem(last=False)
