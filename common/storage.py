"""Files of a job on disk: the upload, intermediate arrays and the artifacts.

Every file of a job lives under ``<storage_dir>/tenants/<tenant>/jobs/<job_id>/``;
a storage key is the path relative to ``storage_dir``. A tenant's files are in one
folder of their own (its size is ``du`` of it; removing a tenant is one ``rm``).
Keys, not bytes, travel in task messages, so all hosts running workers must mount
the same storage directory.

``<storage_dir>/tmp/`` holds uploads while a request receives them (api/uploads.py):
on the same filesystem as the jobs, so a received upload is linked into place,
not copied.

Free space: ``reserve`` holds room on the volume for an upload about to be written,
refusing it (``StorageFull``) when it would leave less than a floor free; the
workers' artifacts of jobs already admitted need that floor. The probe of free
space is a collaborator (``free_space``), so tests hand in a full disk.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# Bytes free on the filesystem holding a path, for writers without root's reserve.
FreeSpace = Callable[[Path], int]


def disk_free(path: Path) -> int:
    """``shutil.disk_usage(path).free``: what an unprivileged process may still write."""
    return shutil.disk_usage(path).free


class StorageKeyError(ValueError):
    """A key or name that would leave the job's directory."""


class StorageFull(Exception):
    """Writing ``size`` more bytes would leave less than ``floor`` free on the volume."""

    def __init__(self, free: int, size: int, floor: int) -> None:
        super().__init__(f"{free} bytes free, {size} to write, {floor} to keep free")
        self.free, self.size, self.floor = free, size, floor


class Storage:
    """The storage directory; all paths it hands out stay inside it."""

    def __init__(self, root: Path, free_space: FreeSpace = disk_free) -> None:
        self.root = root
        self.free_space = free_space
        # Bytes held by ``reserve`` for writes in flight in this process: uploads received
        # at once must not each count the same free space.
        self._reserved = 0
        self._lock = threading.Lock()

    @property
    def tmp_dir(self) -> Path:
        """Scratch space for uploads being received (not made here: its users create it)."""
        return self.root / "tmp"

    def tenant_dir(self, tenant: str) -> Path:
        if not _TENANT.match(tenant):
            raise StorageKeyError(f"not a tenant name: {tenant!r}")
        return self.root / "tenants" / tenant

    def job_dir(self, tenant: str, job_id: str) -> Path:
        if not _JOB_ID.match(job_id):
            raise StorageKeyError(f"not a job id: {job_id!r}")
        return self.tenant_dir(tenant) / "jobs" / job_id

    def key(self, tenant: str, job_id: str, *parts: str) -> str:
        """The storage key of ``parts`` (e.g. ``"artifacts", "blurred.jpg"``) of a job."""
        return self._key(self.job_dir(tenant, job_id), parts)

    def image_dir(self, tenant: str, image_id: str) -> Path:
        """An uploaded image of ``POST /v1/images`` and what its prompts left (mask logits)."""
        if not _JOB_ID.match(image_id):
            raise StorageKeyError(f"not an image id: {image_id!r}")
        return self.tenant_dir(tenant) / "images" / image_id

    def image_key(self, tenant: str, image_id: str, *parts: str) -> str:
        return self._key(self.image_dir(tenant, image_id), parts)

    def embedding_key(self, tenant: str, name: str) -> str:
        """The key of one cached image embedding (``celery_worker.embeddings``)."""
        return self._key(self.tenant_dir(tenant) / "embeddings", (name,))

    def remove_image(self, tenant: str, image_id: str) -> None:
        shutil.rmtree(self.image_dir(tenant, image_id), ignore_errors=True)

    def image_ids(self, tenant: str) -> list[str]:
        """Ids of the tenant's images that have files, for upkeep."""
        images = self.tenant_dir(tenant) / "images"
        if not images.is_dir():
            return []
        return [p.name for p in images.iterdir() if _JOB_ID.match(p.name)]

    def embedding_keys(self, tenant: str) -> list[str]:
        """Keys of the tenant's embedding files, for upkeep."""
        folder = self.tenant_dir(tenant) / "embeddings"
        if not folder.is_dir():
            return []
        return [str(p.relative_to(self.root)) for p in folder.iterdir() if p.suffix == ".npz"]

    def _key(self, folder: Path, parts: tuple[str, ...]) -> str:
        for part in parts:
            if not _NAME.match(part):
                raise StorageKeyError(f"bad file name: {part!r}")
        return str(folder.relative_to(self.root).joinpath(*parts))

    def path(self, key: str) -> Path:
        """The absolute path of a key; refuses keys that escape the storage directory."""
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageKeyError(f"key outside storage: {key!r}")
        return path

    @contextmanager
    def reserve(self, size: int, floor: int) -> Iterator[None]:
        """Hold ``size`` bytes of the volume while the block writes them.

        Raises ``StorageFull`` (holding nothing) when writing them would leave less
        than ``floor`` bytes free. Call it before an upload is written; once written,
        the bytes count in the volume's own free space and the hold ends.
        """
        with self._lock:
            free = self.free_space(self._probe()) - self._reserved
            if free - size < floor:  # free may already be below the floor: size 0 fails too
                raise StorageFull(free, size, floor)
            self._reserved += size
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= size

    def _probe(self) -> Path:
        """The storage root, or its nearest existing parent (same volume) before it exists."""
        probe = self.root
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        return probe

    def write_stream(self, key: str, stream: IO[bytes], chunk_size: int = 1 << 20) -> int:
        """Copy the rest of ``stream`` to ``key`` atomically (temp file + rename).

        Returns the bytes written and leaves ``stream`` at its end. A stream that is
        a whole file under ``tmp_dir`` (an upload, read from its start) is hard-linked
        into place instead: a 2 GB video costs no copy. Copies where linking fails.
        """
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        source = self._own_temp_file(stream)
        if source is not None:
            link = target.parent / f".upload-{uuid.uuid4().hex}"
            try:
                os.link(source, link)
            except OSError:
                pass  # another filesystem, or one without hard links: copy below
            else:
                try:
                    os.replace(link, target)
                except BaseException:
                    link.unlink(missing_ok=True)
                    raise
                return stream.seek(0, os.SEEK_END)
        written = 0
        with self.atomic(key) as tmp, tmp.open("wb") as out:
            while chunk := stream.read(chunk_size):
                out.write(chunk)
                written += len(chunk)
        return written

    @contextmanager
    def atomic(self, key: str, suffix: str = "") -> Iterator[Path]:
        """A temporary path beside ``key`` to write; renamed to ``key`` when the block ends
        without error, removed otherwise. A reader never sees half a file.

        ``suffix`` keeps the extension for writers that pick the format by it (``.mp4``).
        """
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-", suffix=suffix)
        os.close(fd)
        try:
            yield Path(tmp)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _own_temp_file(self, stream: IO[bytes]) -> str | None:
        """The path of ``stream`` when it is a regular file under ``tmp_dir`` read from its start.

        Only files of ``tmp_dir`` are linked: a link to any other file would make the
        stored copy change whenever that file is written to.
        """
        name = getattr(stream, "name", None)  # None for in-memory spools: no rollover forced
        if not isinstance(name, str):
            return None
        try:
            if not Path(name).resolve().is_relative_to(self.tmp_dir.resolve()):
                return None
            if stream.tell() != 0:
                return None
            stream.flush()
            opened, named = os.fstat(stream.fileno()), os.stat(name)
        except (OSError, ValueError):
            return None
        same_file = (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)
        return name if same_file and stat.S_ISREG(opened.st_mode) else None

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` to ``key`` atomically, so a reader never sees half a file."""
        self.write_stream(key, io.BytesIO(data))

    def artifact_path(self, tenant: str, job_id: str, name: str) -> Path:
        return self.path(self.key(tenant, job_id, "artifacts", name))

    def remove_job(self, tenant: str, job_id: str) -> None:
        """Delete every file of a job (no error when there are none)."""
        shutil.rmtree(self.job_dir(tenant, job_id), ignore_errors=True)

    def tenants(self) -> list[str]:
        """The tenants that have files, for upkeep."""
        folder = self.root / "tenants"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if _TENANT.match(p.name))

    def job_ids(self, tenant: str) -> list[str]:
        """Ids of the tenant's jobs that have files, for upkeep."""
        jobs = self.tenant_dir(tenant) / "jobs"
        if not jobs.is_dir():
            return []
        return [p.name for p in jobs.iterdir() if _JOB_ID.match(p.name)]
