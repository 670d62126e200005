"""Images for interactive segmentation, and the index of the embedding cache.

An image (``POST /v1/images``) is a hash per tenant, named by a digest of the tenant
and the file's sha256, so the same file uploaded again by the same tenant is the same
image. It expires ``CV_IMAGE_TTL_SECONDS`` after its last use (each prompt renews it);
its bytes count towards the tenant's bytes stored until it is deleted or expires.

The embedding cache: an image embedding (SAM-family encoder output, float16 ``.npz``
in storage) is named ``<content sha256>-<weights sha256[:16]>``, per tenant: the same
picture under the same weights is encoded once, whether it came through
``POST /v1/images`` or a ``sam`` job. Each entry is a hash (storage key, bytes, model)
and a member of the tenant's list scored by last use; putting one in removes the least
recently used past ``CV_EMBEDDING_CACHE_BYTES`` in the same script, and upkeep removes
those unused for ``CV_EMBEDDING_TTL_SECONDS`` (entries never expire in Redis on their
own: their bytes are subtracted as they go). Embeddings are a cache: they do not count
towards the tenant's bytes stored, and one that is gone is computed again.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from common.clock import now_iso
from common.jobstore.keys import StorePart
from common.jobstore.records import HINCR_IF_EXISTS, HSET_IF_EXISTS

# A new image unless it exists; either way renewed. Returns 1 when it was created.
# KEYS: record, images list, usage, job-bytes. ARGV: ttl, score, id, bytes, fields...
_CREATE = """
local created = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 5))
  -- A record that expired before upkeep released its bytes still counts them: once.
  local member = 'image:' .. ARGV[3]
  local bytes = tonumber(ARGV[4])
  local held = tonumber(redis.call('HGET', KEYS[4], member) or '0')
  if bytes ~= held then redis.call('HINCRBY', KEYS[3], 'bytes', bytes - held) end
  redis.call('HSET', KEYS[4], member, bytes)
  created = 1
end
redis.call('HSET', KEYS[1], 'used_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return created
"""
# An image gone: its record, its place in the list, its bytes. KEYS: record, images list,
# usage, job-bytes. ARGV: id, and optionally a time: only if it was last used before it
# (upkeep: not one uploaded again meanwhile). Returns the record's fields (empty when
# there was none), or 0 when it was used since.
_DELETE = """
if ARGV[2] then
  local used = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if used and tonumber(used) > tonumber(ARGV[2]) then return 0 end
end
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local member = 'image:' .. ARGV[1]
local bytes = tonumber(redis.call('HGET', KEYS[4], member) or '0')
if bytes ~= 0 then redis.call('HINCRBY', KEYS[3], 'bytes', -bytes) end
redis.call('HDEL', KEYS[4], member)
return fields
"""
# An embedding into the cache, then the least recently used out until the tenant's
# embeddings fit ``cap`` bytes (never the one just put). Returns the storage keys of
# those removed (their files are the caller's to delete).
# Entries do not expire in Redis: upkeep removes those unused for the TTL (by their
# score), with their bytes and files. KEYS: entry, the tenant's embeddings list, usage.
# ARGV: name, score, cap, bytes, prefix of entry keys, fields...
_PUT_EMBEDDING = """
local old = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
local total = redis.call('HINCRBY', KEYS[3], 'embedding_bytes', tonumber(ARGV[4]) - old)
local cap = tonumber(ARGV[3])
local removed = {}
while cap > 0 and total > cap do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if oldest == nil or oldest == ARGV[1] then break end
  local entry = ARGV[5] .. oldest
  local size = tonumber(redis.call('HGET', entry, 'bytes') or '0')
  local key = redis.call('HGET', entry, 'key')
  if key then table.insert(removed, key) end
  redis.call('DEL', entry)
  redis.call('ZREM', KEYS[2], oldest)
  total = redis.call('HINCRBY', KEYS[3], 'embedding_bytes', -size)
end
return removed
"""
# One embedding out of the cache. KEYS: entry, list, usage. ARGV: name. Returns its key.
_DROP_EMBEDDING = """
local size = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
local key = redis.call('HGET', KEYS[1], 'key')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if size ~= 0 then redis.call('HINCRBY', KEYS[3], 'embedding_bytes', -size) end
return key
"""


def image_id_of(tenant: str, sha256: str) -> str:
    """The id of the tenant's image with this content: the same file, the same id; the
    same file of another tenant, another id (ids say nothing across tenants)."""
    return hashlib.sha256(f"{tenant}\0{sha256}".encode()).hexdigest()[:32]


def embedding_name(content_sha256: str, weights_sha256: str) -> str:
    """The cache's name of one picture's embedding under one set of weights."""
    return f"{content_sha256}-{weights_sha256[:16]}"


class Images(StorePart):
    """The tenants' images and the index of their embeddings."""

    def __post_init__(self) -> None:
        self._create = self.redis.register_script(_CREATE)
        self._delete = self.redis.register_script(_DELETE)
        self._hset_if_exists = self.redis.register_script(HSET_IF_EXISTS)
        self._hincr_if_exists = self.redis.register_script(HINCR_IF_EXISTS)
        self._put_embedding = self.redis.register_script(_PUT_EMBEDDING)
        self._drop_embedding = self.redis.register_script(_DROP_EMBEDDING)

    # images --------------------------------------------------------------------
    def create(self, tenant: str, image_id: str, fields: dict[str, Any], ttl: int) -> bool:
        """Record an image unless the tenant has it; renew it either way. True if new."""
        flat: list[Any] = []
        for name, value in {"id": image_id, "created_at": now_iso(), **fields}.items():
            flat += [name, value if isinstance(value, str) else json.dumps(value)]
        keys = self._image_keys(tenant, image_id)
        args = [ttl, repr(time.time()), image_id, int(fields.get("bytes") or 0), *flat]
        return bool(self._create(keys=keys, args=args))

    def get(self, tenant: str, image_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self.keys.image(tenant, image_id))
        return _decode(raw) if raw else None

    def touch(self, tenant: str, image_id: str, ttl: int) -> None:
        """A prompt used the image: it lives another ``ttl`` seconds."""
        now = time.time()
        with self.redis.pipeline() as pipe:
            pipe.expire(self.keys.image(tenant, image_id), ttl)
            pipe.zadd(self.keys.images(tenant), {image_id: now}, xx=True)
            pipe.execute()

    def delete(
        self, tenant: str, image_id: str, unused_since: float | None = None
    ) -> dict[str, Any] | None:
        """Remove the image's record and bytes; returns what it held (None: no such image,
        or, with ``unused_since``, one used after that time: it stays)."""
        args: list[Any] = [image_id] if unused_since is None else [image_id, repr(unused_since)]
        raw = self._delete(keys=self._image_keys(tenant, image_id), args=args)
        if not raw:
            return None
        return _decode(dict(zip(raw[::2], raw[1::2], strict=True)))

    def clear_embedding_state(self, tenant: str, image_id: str, model: str) -> None:
        """Nothing is known of the embedding under ``model`` (a queueing that did not go out)."""
        self.redis.hdel(self.keys.image(tenant, image_id), f"embedding:{model}")

    def count_redelivery(self, tenant: str, image_id: str, model: str) -> int:
        """One more delivery of the image's embedding after its worker died; the total."""
        key = self.keys.image(tenant, image_id)
        return int(self._hincr_if_exists(keys=[key], args=[f"deliveries:{model}"]))

    def set_embedding_state(
        self, tenant: str, image_id: str, model: str, state: dict[str, Any]
    ) -> None:
        """What the image's embedding under ``model`` is: queued, ready or failed."""
        value = json.dumps({**state, "updated_at": now_iso()})
        key = self.keys.image(tenant, image_id)
        self._hset_if_exists(keys=[key], args=[f"embedding:{model}", value])

    def expired(self, tenant: str, before: float) -> list[str]:
        """Ids of images last used before ``before`` (their records have expired)."""
        ids: list[str] = self.redis.zrangebyscore(self.keys.images(tenant), "-inf", before)
        return ids

    def _image_keys(self, tenant: str, image_id: str) -> list[str]:
        k = self.keys
        return [k.image(tenant, image_id), k.images(tenant), k.usage(tenant), k.job_bytes(tenant)]

    # the embedding cache -----------------------------------------------------------
    def embedding(self, tenant: str, name: str) -> dict[str, str] | None:
        """The cache entry ``name`` (storage key, bytes, model), marked used; None if absent."""
        with self.redis.pipeline() as pipe:
            pipe.hgetall(self.keys.embedding(tenant, name))
            pipe.zadd(self.keys.embeddings(tenant), {name: time.time()}, xx=True)
            entry, _ = pipe.execute()
        return entry or None

    def has_embedding(self, tenant: str, name: str) -> bool:
        return bool(self.redis.exists(self.keys.embedding(tenant, name)))

    def put_embedding(self, tenant: str, name: str, fields: dict[str, Any], cap: int) -> list[str]:
        """Index a stored embedding; returns the storage keys of those it pushed out."""
        flat: list[Any] = []
        for field, value in {"created_at": now_iso(), **fields}.items():
            flat += [field, str(value)]
        keys = [self.keys.embedding(tenant, name), self.keys.embeddings(tenant)]
        args = [name, repr(time.time()), cap, int(fields["bytes"])]
        prefix = self.keys.embedding(tenant, "")
        removed: list[str] = self._put_embedding(
            keys=[*keys, self.keys.usage(tenant)], args=[*args, prefix, *flat]
        )
        return removed

    def drop_embedding(self, tenant: str, name: str) -> str | None:
        """Remove one entry; returns its storage key (None: it was not there)."""
        keys = [
            self.keys.embedding(tenant, name),
            self.keys.embeddings(tenant),
            self.keys.usage(tenant),
        ]
        key: str | None = self._drop_embedding(keys=keys, args=[name])
        return key

    def stale_embeddings(self, tenant: str, before: float) -> list[str]:
        """Names of embeddings last used before ``before``."""
        names: list[str] = self.redis.zrangebyscore(self.keys.embeddings(tenant), "-inf", before)
        return names

    def embedding_bytes(self, tenant: str) -> int:
        return int(self.redis.hget(self.keys.usage(tenant), "embedding_bytes") or 0)

    # prompt jobs -------------------------------------------------------------------
    def signal_answered(self, job_id: str) -> None:
        """Wake the API request waiting for this prompt job (``wait_answered``)."""
        key = self.keys.answered(job_id)
        with self.redis.pipeline() as pipe:
            pipe.rpush(key, "1")
            pipe.expire(key, 60)
            pipe.execute()

    def wait_answered(self, job_id: str, seconds: float) -> bool:
        """Block until the job's worker signals, at most ``seconds``; True if it did."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            # In slices under the client's socket timeout (5 s), which BLPOP must not pass.
            if self.redis.blpop([self.keys.answered(job_id)], timeout=min(left, 4)):
                return True
        return False


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name in ("width", "height", "bytes") or name.startswith("deliveries:"):
            out[name] = int(value)
        elif name.startswith("embedding:"):
            out.setdefault("embeddings", {})[name.split(":", 1)[1]] = json.loads(value)
        else:
            out[name] = value
    return out
