"""Uploads on disk: the spooling body validator, Flask's part files, the linked store.

See api/uploads.py and ``Storage.write_stream``. The app here points at ports
where nothing listens, as in test_api_offline.py.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import pytest
import redis
from connexion.exceptions import BadRequestProblem
from connexion.uri_parsing import OpenAPIURIParser
from starlette.requests import ClientDisconnect
from starlette.types import Message

from api.app import build_services, create_app
from api.errors import InsufficientStorage
from api.limits import BodySizeLimit
from api.quotas import Limits
from api.uploads import (
    CHUNK,
    PART_MEMORY_MAX,
    PartFile,
    SpoolCleanup,
    SpooledMultipartValidator,
)
from common.settings import Settings
from common.storage import Storage, StorageFull
from tests.support.api import assert_problem, offline_app
from tests.support.images import jpeg
from tests.support.keys import OFFLINE_KEY, headers, offline_keys

BOUNDARY = "test-boundary-7MA4YWxkTrZu0gW"
SCHEMA = {
    "type": "object",
    "properties": {"pipeline": {"type": "string"}, "file": {"type": "string", "format": "binary"}},
    "required": ["pipeline", "file"],
}


def multipart(fields: dict[str, str], data: bytes, filename: str = "x.jpg") -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return b"".join(parts)


def big_jpeg(size: int) -> bytes:
    """A real JPEG header followed by ``size`` random bytes (the header check passes)."""
    return jpeg() + random.Random(size).randbytes(size)


def open_files_under(directory: Path) -> list[str]:
    """Files of this process open under ``directory`` (also deleted or anonymous ones)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


def files_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


# --- the validator on its own -------------------------------------------------------


def validator(spool_dir: Path, room: Any = None) -> SpooledMultipartValidator:
    return SpooledMultipartValidator(
        schema=SCHEMA,
        required=True,
        encoding="utf-8",
        strict_validation=True,
        uri_parser=OpenAPIURIParser([], {"schema": SCHEMA}),
        spool_dir=spool_dir,
        room=room,
    )


def scope(body: bytes | None, boundary: str = BOUNDARY) -> dict[str, Any]:
    headers = [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())]
    if body is not None:
        headers.append((b"content-length", str(len(body)).encode()))
    return {"type": "http", "method": "POST", "path": "/v1/jobs", "headers": headers}


def client_sends(body: bytes, sizes: Iterator[int], disconnect_after: int | None = None) -> Any:
    """An ASGI receive channel delivering ``body`` in pieces of ``sizes``."""
    sent = 0

    async def receive() -> Message:
        nonlocal sent
        if disconnect_after is not None and sent >= disconnect_after:
            return {"type": "http.disconnect"}
        piece = body[sent : sent + next(sizes)]
        sent += len(piece)
        return {"type": "http.request", "body": piece, "more_body": sent < len(body)}

    return receive


async def drain(receive: Any) -> list[Message]:
    messages = [await receive()]
    while messages[-1].get("more_body"):
        messages.append(await receive())
    return messages


@pytest.mark.parametrize("piece", [65_536, 1_000_003, 3 * CHUNK])
def test_validator_replays_the_exact_body_in_bounded_messages(tmp_path: Path, piece: int) -> None:
    body = multipart({"pipeline": "detect"}, big_jpeg(5 * CHUNK + 17))
    sizes = iter(random.Random(piece).choice([1, piece // 3, piece]) for _ in range(10**6))

    async def run() -> list[Message]:
        receive, _ = await validator(tmp_path).wrap_receive(
            client_sends(body, sizes), scope=scope(body)
        )
        return await drain(receive)

    messages = asyncio.run(run())
    assert b"".join(m["body"] for m in messages) == body
    assert max(len(m["body"]) for m in messages) <= CHUNK
    assert open_files_under(tmp_path) == []


def test_validator_still_validates_and_closes_its_spool(tmp_path: Path) -> None:
    body = multipart({"pipeline": "detect", "colour": "red"}, jpeg())
    with pytest.raises(BadRequestProblem):
        asyncio.run(
            validator(tmp_path).wrap_receive(
                client_sends(body, iter(lambda: 4096, 0)), scope=scope(body)
            )
        )
    assert open_files_under(tmp_path) == []


def test_client_disconnect_mid_body_closes_the_spool(tmp_path: Path) -> None:
    body = multipart({"pipeline": "detect"}, big_jpeg(3 * CHUNK))
    receive = client_sends(body, iter(lambda: 65_536, 0), disconnect_after=CHUNK + 1)
    with pytest.raises(ClientDisconnect):
        asyncio.run(validator(tmp_path).wrap_receive(receive, scope=scope(body)))
    assert open_files_under(tmp_path) == []
    assert files_under(tmp_path) == []


def test_spool_cleanup_closes_a_body_the_app_never_read(tmp_path: Path) -> None:
    body = multipart({"pipeline": "detect"}, big_jpeg(3 * CHUNK))

    replays = []  # held, so that only SpoolCleanup (not the GC) can close the spool

    async def app(scope: Any, receive: Any, send: Any) -> None:
        replays.append(await validator(tmp_path).wrap_receive(receive, scope=scope))
        assert len(open_files_under(tmp_path)) == 1  # validated, never replayed

    receive = client_sends(body, iter(lambda: 65_536, 0))
    asyncio.run(SpoolCleanup(app)(scope(body), receive, send=None))  # type: ignore[arg-type]
    assert replays and open_files_under(tmp_path) == []


def test_a_body_without_content_length_is_refused_unread(tmp_path: Path) -> None:
    async def never() -> Message:
        raise AssertionError("the body must not be read")

    with pytest.raises(BadRequestProblem, match="RequestBody is required"):
        asyncio.run(validator(tmp_path).wrap_receive(never, scope=scope(None)))


def test_a_body_without_room_on_the_volume_is_refused_unread(tmp_path: Path) -> None:
    body = multipart({"pipeline": "detect"}, big_jpeg(CHUNK))
    asked: list[int] = []

    def no_room(size: int) -> Any:
        asked.append(size)
        raise InsufficientStorage("full")

    async def never() -> Message:
        raise AssertionError("the body must not be read")

    with pytest.raises(InsufficientStorage):
        asyncio.run(validator(tmp_path, no_room).wrap_receive(never, scope=scope(body)))
    assert asked == [len(body)]  # the declared Content-Length
    assert files_under(tmp_path) == [] and open_files_under(tmp_path) == []


# --- through the whole app ---------------------------------------------------------


class RecordingStore:
    """Stands in for Redis: no workers online; ``jobs.create`` looks at the stored upload, then
    fails."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.stored: bytes | None = None
        self.links = 0
        self.jobs = self.workers = self

    def alive(self) -> list[dict[str, Any]]:
        return []

    def create(self, job_id: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        info = next(a for a in args if isinstance(a, dict) and "key" in a)
        path = self.storage.path(info["key"])
        self.stored, self.links = path.read_bytes(), path.stat().st_nlink
        raise redis.ConnectionError("recorded; no Redis here")


class NoLimits:
    """Admits everything (the quotas' own Redis is down here)."""

    def admit(self, tenant: str, jobs: int, upload_bytes: int) -> Limits:
        return Limits(active_jobs=0, submissions_per_minute=0, bytes=0)


@pytest.mark.parametrize(("size", "linked"), [(10_000, False), (3 * PART_MEMORY_MAX, True)])
def test_upload_reaches_storage_byte_for_byte(
    offline_settings: Settings, size: int, linked: bool
) -> None:
    services = build_services(offline_settings)
    store = RecordingStore(services.storage)
    app = create_app(
        offline_settings,
        replace(services, store=store, quotas=NoLimits()),  # type: ignore[arg-type]
        keys=offline_keys(),
    )
    client = app.test_client(base_url="http://localhost")
    client.headers.update(headers(OFFLINE_KEY))
    data = big_jpeg(size)

    response = client.post(
        "/v1/jobs", files={"file": ("x.jpg", data, "image/jpeg")}, data={"pipeline": "detect"}
    )

    assert_problem(response, 503, "Redis")
    assert store.stored == data
    # A part spooled to disk is linked into place (its spool file is the second link).
    assert store.links == (2 if linked else 1)
    assert files_under(services.storage.root) == []
    assert open_files_under(services.storage.root) == []


@pytest.mark.parametrize(
    ("fields", "status", "detail"),
    [
        ({"pipeline": "detect"}, 503, "Redis"),
        ({}, 400, "'pipeline' is a required property"),
        ({"pipeline": "detect", "colour": "red"}, 400, "colour"),
        ({"pipeline": "nope"}, 400, "'nope' is not one of ['detect'"),
    ],
)
def test_a_few_mb_upload_gets_the_usual_answers(
    offline_client: Any,
    offline_settings: Settings,
    fields: dict[str, str],
    status: int,
    detail: str,
) -> None:
    response = offline_client.post(
        "/v1/jobs", files={"file": ("x.jpg", big_jpeg(4 * CHUNK), "image/jpeg")}, data=fields
    )
    assert_problem(response, status, detail)
    storage = offline_settings.resolve(offline_settings.storage_dir)
    assert files_under(storage) == []
    assert open_files_under(storage) == []


@pytest.mark.parametrize(
    ("body", "content_type", "detail"),
    [
        (b"garbage", f"multipart/form-data; boundary={BOUNDARY}", "invalid multipart body"),
        (b"garbage", "multipart/form-data", "Missing boundary"),
    ],
)
def test_invalid_multipart_is_400(
    offline_client: Any, offline_settings: Settings, body: bytes, content_type: str, detail: str
) -> None:
    response = offline_client.post("/v1/jobs", content=body, headers={"content-type": content_type})
    assert_problem(response, 400, detail)
    assert open_files_under(offline_settings.resolve(offline_settings.storage_dir)) == []


def test_chunked_upload_is_400(offline_client: Any) -> None:
    body = multipart({"pipeline": "detect"}, jpeg())
    response = offline_client.post(
        "/v1/jobs",
        content=iter([body]),
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert_problem(response, 400, "RequestBody is required")


FLOOR = 1 << 20


@pytest.mark.parametrize(
    ("path", "field", "size", "free", "status"),
    [
        ("/v1/jobs", "file", 10_000, FLOOR + 100_000, 503),  # fits: on to Redis (down)
        ("/v1/jobs", "file", 200_000, FLOOR + 100_000, 507),  # its own size passes the floor
        ("/v1/jobs", "file", 10_000, FLOOR - 1, 507),  # below the floor already
        ("/v1/batches", "files", 200_000, FLOOR + 100_000, 507),
    ],
)
def test_uploads_are_refused_while_the_volume_is_nearly_full(
    offline_settings: Settings, path: str, field: str, size: int, free: int, status: int
) -> None:
    settings = replace(offline_settings, storage_min_free_bytes=FLOOR)
    services = build_services(settings)
    probed: list[Path] = []

    def free_space(where: Path) -> int:
        probed.append(where)
        return free

    storage = Storage(services.storage.root, free_space=free_space)
    fakes: dict[str, Any] = {"store": RecordingStore(storage), "quotas": NoLimits()}
    app = create_app(settings, replace(services, storage=storage, **fakes), keys=offline_keys())
    client = app.test_client(base_url="http://localhost")
    client.headers.update(headers(OFFLINE_KEY))

    response = client.post(
        path, files={field: ("x.jpg", big_jpeg(size), "image/jpeg")}, data={"pipeline": "detect"}
    )

    if status == 507:
        assert_problem(response, 507, f"would leave less than {FLOOR} bytes free")
        assert response.json()["title"] == "Insufficient Storage"
    else:
        assert_problem(response, 503, "Redis")
    assert probed and all(p == storage.root for p in probed)
    assert files_under(storage.root) == [] and open_files_under(storage.root) == []
    if free >= FLOOR:  # the request's hold ended with it
        with storage.reserve(free - FLOOR, FLOOR):
            pass


class RoomWatchingStore(RecordingStore):
    """Records, while the handler stores the upload, which sizes another upload could hold."""

    def __init__(self, storage: Storage, sizes: list[int]) -> None:
        super().__init__(storage)
        self.sizes = sizes
        self.fits: list[bool] = []

    def create(self, job_id: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        for size in self.sizes:
            try:
                with self.storage.reserve(size, FLOOR):
                    self.fits.append(True)
            except StorageFull:
                self.fits.append(False)
        return super().create(job_id, *args, **kwargs)


def test_an_upload_holds_its_size_until_its_request_ends(offline_settings: Settings) -> None:
    settings = replace(offline_settings, storage_min_free_bytes=FLOOR)
    services = build_services(settings)
    storage = Storage(services.storage.root, free_space=lambda _: FLOOR + 500_000)
    body = big_jpeg(200_000)
    # The rest once the body's request (the file and under 1 kB of envelope) is held.
    store = RoomWatchingStore(storage, [500_000 - len(body) - 1000, 500_000 - len(body)])
    fakes: dict[str, Any] = {"store": store, "quotas": NoLimits()}
    app = create_app(settings, replace(services, storage=storage, **fakes), keys=offline_keys())
    client = app.test_client(base_url="http://localhost")
    client.headers.update(headers(OFFLINE_KEY))

    response = client.post(
        "/v1/jobs", files={"file": ("x.jpg", body, "image/jpeg")}, data={"pipeline": "detect"}
    )

    assert_problem(response, 503, "Redis")
    assert store.stored == body
    # While the handler stored it, the request still held its size: a second upload
    # could have had the rest, not the whole 500 kB over the floor.
    assert store.fits == [True, False]


# --- Flask's part files --------------------------------------------------------------


def test_part_file_stays_in_memory_until_large_then_is_a_named_spool(tmp_path: Path) -> None:
    part = PartFile(tmp_path, max_size=1000)
    part.write(b"a" * 1000)
    assert part.name is None and files_under(tmp_path) == []
    part.write(b"b")
    part.seek(0)
    assert part.name is not None and Path(part.name).parent == tmp_path
    assert part.read() == b"a" * 1000 + b"b"
    part.close()
    assert files_under(tmp_path) == []


# --- Storage.write_stream ------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    storage = Storage(tmp_path / "storage")
    storage.tmp_dir.mkdir(parents=True)
    return storage


DATA = random.Random(1).randbytes(3 * CHUNK + 5)
KEY = "jobs/" + "a" * 32 + "/input.jpg"


def test_write_stream_links_a_spooled_upload(storage: Storage) -> None:
    spooled = storage.tmp_dir / "part-1"
    spooled.write_bytes(DATA)
    with spooled.open("rb") as stream:
        assert storage.write_stream(KEY, stream) == len(DATA)
        assert stream.read() == b""  # left at the end, as a copy would
    stored = storage.path(KEY)
    assert stored.read_bytes() == DATA
    assert stored.stat().st_ino == spooled.stat().st_ino
    assert [p.name for p in stored.parent.iterdir()] == ["input.jpg"]


def open_stream(storage: Storage, case: str, monkeypatch: pytest.MonkeyPatch) -> IO[bytes]:
    if case == "in memory":
        return io.BytesIO(DATA)
    if case == "file outside tmp":
        outside = storage.root / "elsewhere"
        outside.write_bytes(DATA)
        return outside.open("rb")
    spooled = storage.tmp_dir / "part-1"
    if case == "read from the middle":
        spooled.write_bytes(b"header" + DATA)
        stream = spooled.open("rb")
        stream.seek(len(b"header"))
        return stream
    assert case == "link fails"
    spooled.write_bytes(DATA)

    def cross_device(*args: Any, **kwargs: Any) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    return spooled.open("rb")


@pytest.mark.parametrize(
    "case", ["in memory", "file outside tmp", "read from the middle", "link fails"]
)
def test_write_stream_copies_otherwise_with_the_same_result(
    storage: Storage, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    with open_stream(storage, case, monkeypatch) as stream:
        assert storage.write_stream(KEY, stream) == len(DATA)
        assert stream.read() == b""
    stored = storage.path(KEY)
    assert stored.read_bytes() == DATA
    assert stored.stat().st_nlink == 1
    assert [p.name for p in stored.parent.iterdir()] == ["input.jpg"]


# --- the size limit ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "upload", "video", "expected"),
    [
        ("/v1/jobs", 100, 2000, ("uploads", 2000, "CV_MAX_VIDEO_BYTES")),
        ("/v1/jobs", 3000, 2000, ("uploads", 3000, "CV_MAX_UPLOAD_BYTES")),
        ("/v1/batches", 100, 2000, ("batches", 500, "CV_MAX_BATCH_BYTES")),
    ],
)
def test_body_limit_per_path(
    path: str, upload: int, video: int, expected: tuple[str, int, str]
) -> None:
    limit = BodySizeLimit(
        app=None, max_upload_bytes=upload, max_batch_bytes=500, max_video_bytes=video
    )  # type: ignore[arg-type]
    assert limit.limit(path) == expected


def test_body_over_the_video_limit_is_413_naming_the_setting(offline_settings: Settings) -> None:
    settings = replace(offline_settings, max_upload_bytes=1000, max_video_bytes=200_000)
    client = offline_app(settings)
    response = client.post(
        "/v1/jobs", files={"file": ("v.mp4", b"\0" * 300_000, "video/mp4")}, data={}
    )
    assert_problem(response, 413, "limited to 200000 bytes (CV_MAX_VIDEO_BYTES)")
