"""Live job events: ``GET /v1/events`` (Server-Sent Events) and ``GET /v1/ws`` (WebSocket).

Both are long-lived, so neither is a Flask handler holding a request thread: the spec
declares them (``swagger/openapi.yaml``), Connexion routes, authenticates and validates
``/v1/events`` as any operation, and :class:`EventEndpoints`, an ASGI middleware just
before Flask, answers it from the event loop. WebSockets never reach Flask; the Host
allowlist applies to them as to everything, and their key arrives after the upgrade
(browsers cannot set headers on a WebSocket): as the subprotocol ``cvk_...`` next to
``cvjobs``, or as the first message ``{"type": "auth", "key": "cvk_..."}`` within
``CV_EVENTS_AUTH_SECONDS``. A plain ``GET /v1/ws`` reaches Flask: 426.

One :class:`EventHub` per API process reads the tenants' streams (``common.events``)
with one Redis connection (``XREAD BLOCK`` on the streams of the tenants that have
local subscribers) and hands each event, encoded once, to every matching subscriber.
A subscriber that reconnects with ``Last-Event-ID`` first gets the events after that
id up to where the hub stood when it joined, then the hub's: none twice, none lost.
Every ``CV_KEY_CACHE_SECONDS`` the hub looks up the keys of its subscribers again
(once per key) and closes the connections of those revoked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import redis
import redis.asyncio as aioredis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import ANONYMOUS_ADMIN, Authenticator, Caller
from api.errors import PROBLEM_JSON, ApiError, BadRequest, NotFound, send_problem
from api.services import Services
from common.events import Event, Selection, heartbeat, id_key, valid_id
from common.jobstore.keys import Keys

log = logging.getLogger(__name__)
SSE_OPERATION = "api.events.stream_events"
WS_PATH = "/v1/ws"
WS_PROTOCOL = "cvjobs"
# XREAD blocks this long at most: a tenant whose first local subscriber just joined is
# read from the next call on (its missed events come from the replay, never lost).
BLOCK_MS = 250
READ_COUNT = 1000
# A subscriber this far behind is dropped; it reconnects and replays from its last id.
MAX_PENDING = 5000
REVOKED_CLOSE = 4401  # WebSocket close code: the key is unknown or revoked


@dataclass(eq=False)
class Subscriber:
    """One connection's share of its tenant's events."""

    tenant: str
    selection: Selection
    secret: str | None
    pending: deque[Event] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: str | None = None  # why the hub dropped it ("revoked", "behind")
    quiet: bool = False  # nothing was delivered since the hub's previous heartbeat tick
    beat: bool = False  # the hub asks for a heartbeat (SSE: a comment line)

    def offer(self, event: Event) -> None:
        if self.closed or not self.selection.matches(event):
            return
        if len(self.pending) >= MAX_PENDING:
            self.close("behind")
            return
        self.pending.append(event)
        self.wake.set()

    def close(self, why: str) -> None:
        self.closed = why
        self.wake.set()

    def take(self) -> list[Event]:
        events = list(self.pending)
        self.pending.clear()
        self.wake.clear()
        self.beat = False
        if events:
            self.quiet = False
        return events

    def tick(self) -> None:
        """The hub's heartbeat tick: a subscriber quiet since the previous one beats."""
        if self.quiet and not self.closed:
            self.beat = True
            self.wake.set()
        self.quiet = True


class EventHub:
    """The fan-out of one API process: one Redis reader, every local subscriber."""

    def __init__(
        self,
        keys: Keys,
        authenticator: Authenticator,
        reader: Any,
        client: Any,
        heartbeat_seconds: float = 15,
        gather_seconds: float = 0,
    ) -> None:
        """``reader``: the one connection that blocks on the streams; ``client``: a small
        pool for replays and look-ups (both ``redis.asyncio``, ``decode_responses``).
        A subscriber sent nothing for ``heartbeat_seconds`` (up to twice that) gets a
        heartbeat: one timer for the hub, none per stream or per wake-up. After a read
        that brought events the hub waits ``gather_seconds`` before the next, so that what
        arrives meanwhile reaches each stream in one write (0: read again at once)."""
        self.heartbeat_seconds = heartbeat_seconds
        self.gather_seconds = gather_seconds
        self.keys = keys
        self.authenticator = authenticator
        self.reader = reader
        self.client = client
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.cursors: dict[str, str] = {}  # tenant -> the last id read of its stream
        self.loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._read(), name="events-reader"),
            asyncio.create_task(self._recheck_keys(), name="events-keys"),
            asyncio.create_task(self._heartbeats(), name="events-heartbeats"),
        ]

    async def subscribe(
        self, tenant: str, selection: Selection, secret: str | None
    ) -> tuple[Subscriber, str]:
        """Join; returns the subscriber and the id up to which it must replay itself."""
        if tenant not in self.cursors:
            last = await self.last_id(tenant)
            self.cursors.setdefault(tenant, last)
        subscriber = Subscriber(tenant, selection, secret)
        self.subscribers.setdefault(tenant, set()).add(subscriber)
        return subscriber, self.cursors[tenant]

    def unsubscribe(self, subscriber: Subscriber) -> None:
        group = self.subscribers.get(subscriber.tenant)
        if group is not None:
            group.discard(subscriber)
            if not group:
                del self.subscribers[subscriber.tenant]
                self.cursors.pop(subscriber.tenant, None)

    async def aclose(self) -> None:
        """Stop reading and close both clients (tests; a server's hub lives as long as it)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.reader.aclose()
        await self.client.aclose()

    async def last_id(self, tenant: str) -> str:
        raw = await self.client.xrevrange(self.keys.events(tenant), "+", "-", count=1)
        return str(raw[0][0]) if raw else "0-0"

    async def replay(self, tenant: str, after: str, until: str) -> list[Event]:
        """The tenant's events after ``after`` up to ``until`` (both ids), oldest first."""
        events: list[Event] = []
        if id_key(after) >= id_key(until):
            return events
        start = after
        while True:
            raw = await self.client.xrange(
                self.keys.events(tenant), f"({start}", until, count=READ_COUNT
            )
            events.extend(Event.from_entry(str(i), dict(f)) for i, f in raw)
            if len(raw) < READ_COUNT:
                return events
            start = str(raw[-1][0])

    async def _read(self) -> None:
        while True:
            if not self.cursors:
                await asyncio.sleep(BLOCK_MS / 1000)
                continue
            tenants = {self.keys.events(t): t for t in self.cursors}
            streams = {key: self.cursors[t] for key, t in tenants.items()}
            try:
                answer = await self.reader.xread(streams, count=READ_COUNT, block=BLOCK_MS)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("event reader: Redis does not answer: %s", exc)
                await asyncio.sleep(1)
                continue
            self._dispatch(tenants, answer or [])
            if answer and self.gather_seconds:
                # What arrives meanwhile goes out in one write per stream, not one each.
                await asyncio.sleep(self.gather_seconds)

    def _dispatch(self, tenants: dict[str, str], answer: list[Any]) -> None:
        for stream, entries in answer:
            tenant = tenants.get(str(stream))
            if tenant is None or tenant not in self.cursors or not entries:
                continue
            # A read begun before the tenant's cursor was set again may hold older ones.
            cursor = id_key(self.cursors[tenant])
            entries = [e for e in entries if id_key(str(e[0])) > cursor]
            if not entries:
                continue
            self.cursors[tenant] = str(entries[-1][0])
            group = list(self.subscribers.get(tenant, ()))
            for entry_id, fields in entries:
                event = Event.from_entry(str(entry_id), dict(fields))
                for subscriber in group:
                    subscriber.offer(event)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            for group in self.subscribers.values():
                for subscriber in group:
                    subscriber.tick()

    async def _recheck_keys(self) -> None:
        every = max(self.authenticator.cache_seconds, 0.5)
        while True:
            await asyncio.sleep(every)
            secrets = {s.secret for group in self.subscribers.values() for s in group if s.secret}
            if not secrets:
                continue
            try:
                gone = {
                    secret
                    for secret in secrets
                    if await asyncio.to_thread(self.authenticator.lookup, secret) is None
                }
            except redis.RedisError as exc:
                log.warning("event keys: Redis does not answer: %s", exc)
                continue
            for group in self.subscribers.values():
                for subscriber in group:
                    if subscriber.secret in gone:
                        subscriber.close("revoked")


def connect_hub(services: Services, authenticator: Authenticator) -> EventHub:
    url = services.settings.redis_url
    reader = aioredis.Redis.from_url(url, decode_responses=True, single_connection_client=True)
    # A pool that waits for a free connection (the plain one refuses past its size).
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, max_connections=16, timeout=5
    )
    client = aioredis.Redis(connection_pool=pool)
    settings = services.settings
    return EventHub(
        services.store.keys,
        authenticator,
        reader,
        client,
        settings.events_heartbeat_seconds,
        settings.events_gather_ms / 1000,
    )


class EventEndpoints:
    """ASGI middleware (after Connexion's security and validation): answers
    ``stream_events`` and every WebSocket; passes everything else on."""

    def __init__(
        self, app: ASGIApp, services: Services, authenticator: Authenticator, auth: bool
    ) -> None:
        self.app = app
        self.services = services
        self.authenticator = authenticator
        self.auth = auth
        self.settings = services.settings
        self._hub: EventHub | None = None

    def hub(self) -> EventHub:
        # One per event loop (a server has one; test clients may start several).
        if self._hub is None or self._hub.loop is not asyncio.get_running_loop():
            self._hub = connect_hub(self.services, self.authenticator)
        return self._hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        routing = scope.get("extensions", {}).get("connexion_routing", {})
        if scope["type"] == "http" and routing.get("operation_id") == SSE_OPERATION:
            try:
                await self._sse(scope, receive, send)
            except ApiError as exc:
                await send_problem(send, exc)
            return
        await self.app(scope, receive, send)

    # --- Server-Sent Events ----------------------------------------------------------
    async def _sse(self, scope: Scope, receive: Receive, send: Send) -> None:
        caller = _caller(scope)
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        last = headers.get("last-event-id", "").strip()
        if last and not valid_id(last):
            raise BadRequest("Last-Event-ID is not an event id (<milliseconds>-<sequence>)")
        selection = await self.selection(caller, query.get("job"), query.get("batch"))
        hub = self.hub()
        subscriber, until = await hub.subscribe(caller.tenant, selection, _secret(headers))
        watcher = asyncio.create_task(_wait_disconnect(receive, subscriber))
        try:
            replayed = await hub.replay(caller.tenant, last, until) if last else []
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),  # nginx: pass events on at once
                    ],
                }
            )
            first = b"retry: 2000\n\n" + b"".join(e.sse for e in replayed if selection.matches(e))
            await send({"type": "http.response.body", "body": first, "more_body": True})
            while subscriber.closed is None:
                # No timer per stream: 1,000 streams wake for every event of their tenant
                # (the hub's heartbeat tick wakes the quiet ones).
                await subscriber.wake.wait()
                events = subscriber.take()
                if events:
                    body = b"".join(e.sse for e in events)
                elif subscriber.closed is None:
                    body = heartbeat()
                else:
                    break
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            hub.unsubscribe(subscriber)
            watcher.cancel()

    async def selection(self, caller: Caller, job: str | None, batch: str | None) -> Selection:
        """Everything of the caller's tenant, or one job's, or one batch's (404 when it is
        not the tenant's, as when it never existed)."""
        if job is None and batch is None:
            return Selection(everything=True)
        selection = Selection()
        client = self.hub().client
        if job is not None:
            tenant = await client.hget(self.services.store.keys.job(job), "tenant")
            if tenant != caller.tenant:
                raise NotFound(f"no job {job} (never submitted, deleted, or expired)")
            selection.jobs.add(job)
        if batch is not None:
            raw = await client.get(self.services.store.keys.batch(batch))
            if raw is None or (json.loads(raw).get("tenant") or "default") != caller.tenant:
                raise NotFound(f"no batch {batch} (never submitted, or expired)")
            selection.batches.add(batch)
        return selection

    # --- WebSocket -------------------------------------------------------------------
    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("path") != WS_PATH:
            await send({"type": "websocket.close", "code": 1008})
            return
        if (await receive())["type"] != "websocket.connect":
            return
        offered = list(scope.get("subprotocols") or [])
        secret = next((p for p in offered if p.startswith("cvk_")), None)
        accept: Message = {"type": "websocket.accept"}
        if WS_PROTOCOL in offered:
            accept["subprotocol"] = WS_PROTOCOL  # never the key: it is not echoed
        await send(accept)
        session = _Socket(self, receive, send)
        await session.run(secret)


class _Socket:
    """One WebSocket: auth, then subscribe/unsubscribe messages and events."""

    def __init__(self, endpoints: EventEndpoints, receive: Receive, send: Send) -> None:
        self.endpoints = endpoints
        self.receive = receive
        self._send = send
        self.subscriber: Subscriber | None = None

    async def send(self, document: dict[str, Any] | str) -> None:
        text = document if isinstance(document, str) else json.dumps(document)
        await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def run(self, secret: str | None) -> None:
        endpoints = self.endpoints
        caller = await self.authenticate(secret)
        if caller is None:
            return
        hub = endpoints.hub()
        subscriber, _ = await hub.subscribe(caller.tenant, Selection(), secret)
        self.subscriber = subscriber
        await self.send({"type": "ready", "tenant": caller.tenant, "role": caller.role})
        reader = asyncio.create_task(self.read_messages(caller, hub))
        try:
            while subscriber.closed is None and not reader.done():
                await subscriber.wake.wait()
                for event in subscriber.take():
                    await self.send('{"type":"event","event":' + event.json + "}")
            if subscriber.closed == "revoked":
                await self.close(REVOKED_CLOSE, "the API key is unknown or revoked")
            elif subscriber.closed == "behind":
                await self.close(1013, "too far behind; reconnect and replay")
        finally:
            hub.unsubscribe(subscriber)
            reader.cancel()

    async def authenticate(self, secret: str | None) -> Caller | None:
        endpoints = self.endpoints
        if not endpoints.auth:
            return ANONYMOUS_ADMIN
        if secret is None:
            try:
                message = await asyncio.wait_for(
                    self.receive(), endpoints.settings.events_auth_seconds
                )
            except TimeoutError:
                await self.close(1008, 'send {"type": "auth", "key": ...} first')
                return None
            document = _json_message(message)
            if document is None or document.get("type") != "auth":
                await self.close(1008, 'the first message must be {"type": "auth", ...}')
                return None
            secret = str(document.get("key") or "")
        caller = await asyncio.to_thread(endpoints.authenticator.lookup, secret)
        if caller is None:
            await self.close(REVOKED_CLOSE, "the API key is unknown or revoked")
            return None
        return caller

    async def read_messages(self, caller: Caller, hub: EventHub) -> None:
        subscriber = self.subscriber
        assert subscriber is not None
        while True:
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                subscriber.close("gone")
                return
            document = _json_message(message)
            if document is None:
                await self.send({"type": "error", "status": 400, "detail": "not a JSON object"})
                continue
            try:
                await self.handle(caller, hub, document)
            except ApiError as exc:
                await self.send({"type": "error", "status": exc.status, "detail": exc.detail})

    async def handle(self, caller: Caller, hub: EventHub, document: dict[str, Any]) -> None:
        subscriber = self.subscriber
        assert subscriber is not None
        kind = document.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            raise BadRequest(
                "a message is subscribe or unsubscribe, with job or batch (or neither)"
            )
        job, batch = document.get("job"), document.get("batch")
        for value in (job, batch):
            if value is not None and not isinstance(value, str):
                raise BadRequest("job and batch are ids (strings)")
        wanted = await self.endpoints.selection(caller, job, batch)
        current = subscriber.selection
        if kind == "unsubscribe":
            current.everything = current.everything and not wanted.everything
            current.jobs -= wanted.jobs
            current.batches -= wanted.batches
            await self.send({"type": "unsubscribed", "job": job, "batch": batch})
            return
        last = document.get("last_event_id")
        if last is not None and not (isinstance(last, str) and valid_id(last)):
            raise BadRequest("last_event_id is not an event id (<milliseconds>-<sequence>)")
        # Replay before widening the selection: what the hub delivers from now on is
        # newer than anything replayed (the hub's cursor), so nothing comes twice.
        until = hub.cursors.get(caller.tenant, "0-0")
        replayed = await hub.replay(caller.tenant, last, until) if last else []
        current.everything = current.everything or wanted.everything
        current.jobs |= wanted.jobs
        current.batches |= wanted.batches
        await self.send({"type": "subscribed", "job": job, "batch": batch})
        for event in replayed:
            if wanted.matches(event):
                await self.send('{"type":"event","event":' + event.json + "}")


def _json_message(message: Message) -> dict[str, Any] | None:
    if message.get("type") != "websocket.receive":
        return None
    try:
        document = json.loads(message.get("text") or message.get("bytes") or b"")
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


async def _wait_disconnect(receive: Receive, subscriber: Subscriber) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    subscriber.close("gone")


def _caller(scope: Scope) -> Caller:
    info = scope.get("extensions", {}).get("connexion_context", {}).get("token_info")
    if not info:
        return ANONYMOUS_ADMIN
    return Caller(info["tenant"], info["role"], info["sub"], info.get("key_prefix"))


def _secret(headers: dict[str, str]) -> str | None:
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


# --- the spec's operations (Connexion resolves them; see the module docstring) --------


def stream_events(job: str | None = None, batch: str | None = None) -> Any:
    """Never reached: :class:`EventEndpoints` answers ``GET /v1/events``."""
    raise RuntimeError("GET /v1/events is served by api.events.EventEndpoints")


def open_websocket() -> tuple[dict[str, Any], int, dict[str, str]]:
    """A plain GET of ``/v1/ws`` (no upgrade): 426, saying how to connect."""
    body = {
        "type": "about:blank",
        "title": "Upgrade Required",
        "status": 426,
        "detail": "GET /v1/ws is a WebSocket: connect with Upgrade: websocket",
    }
    return body, 426, {"Content-Type": PROBLEM_JSON, "Upgrade": "websocket"}
