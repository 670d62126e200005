"""Uploads go to disk, never whole into memory: videos reach 2 GB.

Two copies of a multipart body would otherwise sit in RAM or /tmp:

1. Connexion's body validators keep every ASGI message of the body in a list
   to replay it to Flask. ``SpooledMultipartValidator`` writes the body to an
   anonymous temporary file instead and replays it from there, 1 MiB at a
   time; its parser drops the bytes of file parts (validation only needs to
   know they are there) instead of copying them to /tmp.
2. Werkzeug spools file parts to temporary files in /tmp. ``UploadRequest``
   spools them to named files in the storage's ``tmp/`` directory instead, on
   the same filesystem as the stored uploads, so ``Storage.write_stream`` can
   hard-link a part into place rather than copy it.

``SpoolCleanup`` closes (and so deletes) the body spools of a request when it
ends, whatever way it ends; Flask closes the part files with its request.
``install(app, spool_dir)`` wires all three into a ``connexion.FlaskApp``.

Before a body is spooled, its Content-Length is held on the storage volume
(``api.storage_space.room_for``): a body that would leave the volume below
``CV_STORAGE_MIN_FREE_BYTES`` free gets a 507 before a byte of it is written.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from functools import partial
from pathlib import Path
from typing import IO, Any

import connexion
import flask
from connexion.datastructures import MediaTypeDict
from connexion.exceptions import BadRequestProblem
from connexion.middleware import MiddlewarePosition
from connexion.validators import (
    VALIDATOR_MAP,
    JSONRequestBodyValidator,
    MultiPartFormDataValidator,
)
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.services import EXTENSION_KEY, Services
from api.storage_space import room_for

log = logging.getLogger(__name__)

# Size of the pieces the body is written to disk in and replayed to Flask in.
CHUNK = 1 << 20
# File parts up to this size stay in memory (a batch of many small images must
# not hold one open file each); larger ones go to a named file in the spool dir.
PART_MEMORY_MAX = 1 << 20
# Scope key of the per-request list of body spools (and holds of room on the storage
# volume) that SpoolCleanup closes.
SPOOLS = "cvjobs.upload_spools"
# Flask config key of the directory file parts are spooled to.
SPOOL_DIR_CONFIG = "UPLOAD_SPOOL_DIR"

# Holds room on the storage volume for a body of this many bytes while it is spooled;
# raises InsufficientStorage when there is none.
Room = Callable[[int], AbstractContextManager[None]]


def install(app: connexion.FlaskApp, spool_dir: Path) -> dict[str, Any]:
    """Spool uploads of ``app`` to ``spool_dir``; returns the ``validator_map`` for add_api.

    Call before ``add_api`` and pass it the result.
    """
    app.app.request_class = UploadRequest
    app.app.config[SPOOL_DIR_CONFIG] = spool_dir
    app.add_middleware(SpoolCleanup, position=MiddlewarePosition.BEFORE_VALIDATION)
    return validator_map(spool_dir, partial(_room_of_app, app))


def validator_map(spool_dir: Path, room: Room | None = None) -> dict[str, Any]:
    """Connexion's body validators, with the multipart one spooling to ``spool_dir``
    (each body first holding its size with ``room``).

    Connexion replaces the whole ``"body"`` entry of its map with ours, so the
    JSON and form validators are carried over.
    """
    body = MediaTypeDict(VALIDATOR_MAP["body"])
    body["multipart/form-data"] = partial(SpooledMultipartValidator, spool_dir=spool_dir, room=room)
    body["*/*json"] = Utf8JSONValidator
    return {"body": body}


class Utf8JSONValidator(JSONRequestBodyValidator):
    """Connexion's JSON body validator, with a body that is not UTF-8 a 400, not a 500
    (it decodes the bytes outside its own error handling)."""

    async def _parse(self, stream: AsyncGenerator[bytes, None], scope: Scope) -> Any:
        try:
            return await super()._parse(stream, scope)
        except UnicodeDecodeError as exc:
            raise BadRequestProblem(detail=f"the body is not UTF-8 JSON: {exc.reason}") from exc


def _room_of_app(app: connexion.FlaskApp, size: int) -> AbstractContextManager[None]:
    """Room for ``size`` bytes on the storage of ``app``'s services (the ones its handlers
    use, registered by ``create_app`` after ``install``)."""
    svc: Services | None = app.app.extensions.get(EXTENSION_KEY)
    if svc is None:
        return nullcontext()
    return room_for(svc.storage, size, svc.settings.storage_min_free_bytes)


class SpooledMultipartValidator(MultiPartFormDataValidator):
    """Connexion's multipart validation, with the body kept on disk rather than in memory."""

    def __init__(self, *, spool_dir: Path, room: Room | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spool_dir = spool_dir
        self.room = room

    @property
    def _form_parser_cls(self) -> type[MultiPartParser]:
        return FieldsOnlyParser

    async def _parse(self, stream: AsyncGenerator[bytes, None], scope: Scope) -> Any:
        try:
            return await super()._parse(stream, scope)
        except MultiPartException as exc:
            # Starlette's parser error is not an HTTP error: Connexion would answer 500.
            raise BadRequestProblem(detail=f"invalid multipart body: {exc.message}") from exc

    async def wrap_receive(self, receive: Receive, *, scope: Scope) -> tuple[Receive, Scope]:
        """Validate the body while writing it to a spool file; replay it from that file."""
        headers = Headers(scope=scope)
        declared = int(headers.get("content-length", 0))
        if not declared:
            # As Connexion does: no Content-Length (chunked) counts as no body, so
            # the size limit checked on Content-Length cannot be dodged.
            default = self._schema.get("default")
            if default is None and self._required:
                raise BadRequestProblem("RequestBody is required")
            receive, scope = self._insert_body(receive, body=default, scope=scope)

        # The body's size stays held on the volume until the request ends: first the spool,
        # then Flask's copy of the file part as the spool is replayed (for a moment both),
        # then the stored upload. Requests at once never count the same free space.
        held = ExitStack()
        if self.room is not None:
            held.enter_context(self.room(declared))
        spools = scope.get(SPOOLS)
        try:
            spool = _open_spool(self.spool_dir)
        except BaseException:
            held.close()
            raise
        if isinstance(spools, list):
            spools += [spool, held]
        try:
            body = await self._parse(_copy_to(spool, receive), scope=scope)
            if not (body is None and self._nullable):
                self._validate(body)
            size = spool.tell()
            spool.seek(0)
        except BaseException:
            spool.close()
            held.close()
            raise
        if not isinstance(spools, list):
            held.close()  # no SpoolCleanup to end the hold with the request
        return _replay(spool, size, receive), scope


class FieldsOnlyParser(MultiPartParser):
    """Starlette's multipart parser, dropping the bytes of file parts.

    Validation needs the fields and which parts are files, not the files'
    content; Flask parses the replayed body again for the handler.
    """

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is None:
            super().on_part_data(data, start, end)

    async def parse(self) -> FormData:
        form = await super().parse()
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                value.file.close()
        return form


class SpoolCleanup:
    """ASGI middleware: closes the request's body spools, and ends its hold of room on the
    storage volume, when the request ends.

    The replay closes a spool once Flask has read all of it; this catches the
    rest (errors, a handler that never reads the body, a client gone away).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        spools: list[IO[bytes] | ExitStack] = []
        try:
            await self.app({**scope, SPOOLS: spools}, receive, send)
        finally:
            for spool in spools:
                spool.close()


class UploadRequest(flask.Request):
    """Flask's request, spooling file parts to the app's spool dir (see ``PartFile``)."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        spool_dir = flask.current_app.config.get(SPOOL_DIR_CONFIG)
        if spool_dir is None:
            return super()._get_file_stream(
                total_content_length, content_type, filename, content_length
            )
        return PartFile(Path(spool_dir))


class PartFile(tempfile.SpooledTemporaryFile[bytes]):
    """A file part: in memory up to ``PART_MEMORY_MAX``, then a named file in ``spool_dir``.

    Named (unlike the stdlib's rollover file) so that ``Storage.write_stream``
    can hard-link it; deleted when closed.
    """

    def __init__(self, spool_dir: Path, max_size: int = PART_MEMORY_MAX) -> None:
        super().__init__(max_size=max_size, mode="w+b")
        self.spool_dir = spool_dir

    def rollover(self) -> None:
        memory = self._file
        if not isinstance(memory, io.BytesIO):
            return  # rolled over already
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        named = tempfile.NamedTemporaryFile(dir=self.spool_dir, prefix="part-")  # noqa: SIM115
        named.write(memory.getbuffer())
        named.seek(memory.tell())
        self._file = named


def _open_spool(spool_dir: Path) -> IO[bytes]:
    """An anonymous file in ``spool_dir``: gone once closed, even if the process is killed."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=spool_dir, prefix="body-")


async def _copy_to(spool: IO[bytes], receive: Receive) -> AsyncGenerator[bytes, None]:
    """The body's chunks, as they arrive, also written to ``spool`` (1 MiB per write)."""
    pending = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk: bytes = message.get("body", b"")
        pending += chunk
        more = bool(message.get("more_body", False))
        if len(pending) >= CHUNK or not more:
            # In a thread: a write stalled by disk write-back must not block the event loop.
            await run_in_threadpool(spool.write, bytes(pending))
            pending.clear()
        yield chunk
        if not more:
            break
    yield b""


def _replay(spool: IO[bytes], size: int, receive: Receive) -> Receive:
    """A receive channel that sends the spooled body again, then hands over to ``receive``."""
    done = False

    async def replay() -> Message:
        nonlocal done
        if done:
            return await receive()
        chunk = await run_in_threadpool(spool.read, CHUNK)
        done = spool.tell() >= size or not chunk
        if done:
            spool.close()  # free the disk now; Flask has its own copy of the file parts
        return {"type": "http.request", "body": chunk, "more_body": not done}

    return replay
