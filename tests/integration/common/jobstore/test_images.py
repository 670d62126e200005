"""Images and the embedding cache's index on the real Redis: dedup, bytes, eviction, expiry."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from celery_worker.upkeep import ORPHAN_AGE_SECONDS, purge_images
from common.jobstore import JobStore
from common.jobstore.images import embedding_name, image_id_of
from common.settings import Settings
from common.storage import Storage

pytestmark = pytest.mark.broker


def image(store: JobStore, tenant: str = "acme", sha: str = "a" * 64, size: int = 100) -> str:
    image_id = image_id_of(tenant, sha)
    fields = {"tenant": tenant, "sha256": sha, "key": "k", "width": 4, "height": 3, "bytes": size}
    store.images.create(tenant, image_id, fields, ttl=60)
    return image_id


def test_the_same_content_is_one_image_per_tenant_and_counts_its_bytes_once(
    store: JobStore,
) -> None:
    assert image_id_of("acme", "a" * 64) != image_id_of("globex", "a" * 64)
    first = image(store)
    assert image(store) == first  # again: the same image, not counted twice
    assert store.jobs.bytes_stored("acme") == 100
    record = store.images.get("acme", first)
    assert record is not None and (record["width"], record["bytes"]) == (4, 100)
    store.images.set_embedding_state("acme", first, "mobile-sam", {"state": "queued"})
    assert store.images.get("acme", first)["embeddings"]["mobile-sam"]["state"] == "queued"  # type: ignore[index]
    assert store.images.delete("acme", first) is not None
    assert store.jobs.bytes_stored("acme") == 0
    assert store.images.delete("acme", first) is None  # twice: nothing more released
    store.images.set_embedding_state("acme", first, "mobile-sam", {"state": "ready"})
    assert store.images.get("acme", first) is None  # a late worker never recreates it


def test_the_least_recently_used_embeddings_go_past_the_cap(store: JobStore) -> None:
    images = store.images
    names = [embedding_name(str(n) * 64, "w" * 64) for n in range(4)]

    def put(name: str, size: int) -> list[str]:
        return images.put_embedding("acme", name, {"key": f"e/{name}", "bytes": size}, 130)

    for name in names[:3]:
        assert put(name, 40) == []  # 120 bytes: within the cap
        time.sleep(0.01)
    assert images.embedding("acme", names[0]) is not None  # used: now the newest
    assert put(names[3], 60) == [f"e/{names[1]}", f"e/{names[2]}"]  # 180, 140: two go
    assert images.embedding_bytes("acme") == 100
    assert not images.has_embedding("acme", names[1])
    assert images.has_embedding("acme", names[0]) and images.has_embedding("acme", names[3])
    assert images.embedding_bytes("globex") == 0  # per tenant
    assert images.drop_embedding("acme", names[0]) == f"e/{names[0]}"
    assert images.embedding_bytes("acme") == 60


def test_upkeep_removes_unused_images_and_embeddings_with_their_files(
    store: JobStore, tmp_path: Path
) -> None:
    storage = Storage(tmp_path)
    settings = Settings(image_ttl_seconds=60, embedding_ttl_seconds=60)
    store.tenants.ensure("acme")
    old, fresh = image(store, sha="1" * 64), image(store, sha="2" * 64)
    for image_id in (old, fresh):
        storage.write_bytes(storage.image_key("acme", image_id, "image.png"), b"x")
    name = embedding_name("1" * 64, "w" * 64)
    key = storage.embedding_key("acme", f"{name}.npz")
    storage.write_bytes(key, b"x")
    store.images.put_embedding("acme", name, {"key": key, "bytes": 1}, 0)
    # A file no record names (its worker died before indexing it), an hour old.
    orphan = storage.embedding_key("acme", f"{embedding_name('3' * 64, 'w' * 64)}.npz")
    storage.write_bytes(orphan, b"x")
    an_hour_ago = time.time() - ORPHAN_AGE_SECONDS - 10
    os.utime(storage.path(orphan), (an_hour_ago, an_hour_ago))

    now = time.time() + 30
    assert purge_images(store, storage, settings, now) == 0  # nothing is 60 s unused yet
    assert storage.path(key).is_file() and not storage.path(orphan).exists()

    store.images.touch("acme", fresh, 60)
    store.redis.zadd(store.keys.images("acme"), {old: time.time() - 120})
    store.redis.zadd(store.keys.embeddings("acme"), {name: time.time() - 120})
    assert purge_images(store, storage, settings, time.time()) == 1
    assert not storage.image_dir("acme", old).exists() and store.images.get("acme", old) is None
    assert storage.image_dir("acme", fresh).exists()
    assert not storage.path(key).exists() and not store.images.has_embedding("acme", name)
    assert store.jobs.bytes_stored("acme") == 100  # the fresh image's alone


def test_an_image_recorded_again_after_its_record_expired_counts_once(store: JobStore) -> None:
    image_id = image(store)
    store.redis.delete(store.keys.image("acme", image_id))  # expired before upkeep came
    assert image(store) == image_id
    assert store.jobs.bytes_stored("acme") == 100


def test_upkeep_leaves_an_image_uploaded_again_meanwhile(store: JobStore, tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    store.tenants.ensure("acme")
    image_id = image(store)
    storage.write_bytes(storage.image_key("acme", image_id, "image.png"), b"x")
    before = time.time() - 1  # upkeep listed it as unused since then; it was used since
    assert store.images.delete("acme", image_id, unused_since=before) is None
    assert store.images.get("acme", image_id) is not None
