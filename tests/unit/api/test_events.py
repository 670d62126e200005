"""The event stream without servers: encoding, selection, replay hand-over, the SSE and
WebSocket endpoints on an in-memory stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, MutableMapping
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from api import events as endpoints
from api.auth import Authenticator
from api.events import EventEndpoints, EventHub, Subscriber
from common.events import Event, Selection, entry, id_key, valid_id, video_progress
from common.jobstore.keys import Keys
from common.settings import Settings
from tests.support.keys import StaticKeys

KEYS = Keys("cv")
SECRET = "cvk_unit-events-member-key-000000000000000000000"


class FakeStreams:
    """The few async Redis commands the hub uses, over in-memory streams."""

    def __init__(self) -> None:
        self.streams: dict[str, list[tuple[str, dict[str, str]]]] = {}
        self.values: dict[str, Any] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.clock = 1000
        self.added = asyncio.Event()

    def add(self, tenant: str, kind: str, job: str, batch: str | None = None) -> str:
        self.clock += 1
        entry_id = f"{self.clock}-0"
        fields = entry(kind, job, batch, {"n": self.clock})
        self.streams.setdefault(KEYS.events(tenant), []).append((entry_id, fields))
        self.added.set()
        return entry_id

    async def xrevrange(self, key: str, high: str, low: str, count: int) -> list[Any]:
        return list(reversed(self.streams.get(key, [])))[:count]

    async def xrange(self, key: str, low: str, high: str, count: int) -> list[Any]:
        after, until = id_key(low.lstrip("(")), id_key(high)
        found = [e for e in self.streams.get(key, []) if after < id_key(e[0]) <= until]
        return found[:count]

    async def xread(self, streams: dict[str, str], count: int, block: int) -> list[Any]:
        def ready() -> list[Any]:
            return [
                (key, found)
                for key, after in streams.items()
                if (found := [e for e in self.streams.get(key, []) if id_key(e[0]) > id_key(after)])
            ]

        if not ready():
            self.added.clear()
            try:
                await asyncio.wait_for(self.added.wait(), block / 1000)
            except TimeoutError:
                return []
        return ready()

    async def hget(self, key: str, field: str) -> str | None:
        return self.hashes.get(key, {}).get(field)

    async def get(self, key: str) -> Any:
        return self.values.get(key)

    async def aclose(self) -> None:
        return None


def run(coro: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(coro())


# --- the encoding --------------------------------------------------------------------


def test_an_event_is_one_sse_message_with_its_id_type_and_json() -> None:
    fields = entry("step.finished", "j" * 32, None, {"step": "inference", "seconds": 0.5}, 12.5)
    event = Event.from_entry("1700000000000-3", fields)
    assert event.sse == (
        b"id: 1700000000000-3\nevent: step.finished\ndata: "
        b'{"id":"1700000000000-3","type":"step.finished","job":"' + b"j" * 32 + b'",'
        b'"batch":null,"at":12.5,"data":{"step":"inference","seconds":0.5}}\n\n'
    )
    assert json.loads(event.json)["data"] == {"step": "inference", "seconds": 0.5}


def test_unknown_event_types_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        entry("job.exploded", "j", None, {})


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("0-0", True),
        ("1764633600000-12", True),
        ("1764633600000", False),
        ("a-1", False),
        ("1-2-3", False),
        ("", False),
        ("1-2\n", False),
    ],
)
def test_event_ids(text: str, valid: bool) -> None:
    assert valid_id(text) is valid


def test_ids_sort_as_numbers_not_text() -> None:
    assert id_key("999-5") < id_key("1000-0") < id_key("1000-10")


@pytest.mark.parametrize(
    ("selection", "job", "batch", "matches"),
    [
        (Selection(everything=True), "a", None, True),
        (Selection(jobs={"a"}), "a", None, True),
        (Selection(jobs={"a"}), "b", None, False),
        (Selection(batches={"x"}), "b", "x", True),
        (Selection(batches={"x"}), "b", "y", False),
        (Selection(batches={"x"}), "b", None, False),
        (Selection(), "a", "x", False),
    ],
)
def test_selection(selection: Selection, job: str, batch: str | None, matches: bool) -> None:
    event = Event("1-0", "job.created", job, batch, 0.0)
    assert selection.matches(event) is matches


def test_video_progress_from_a_raw_record() -> None:
    record = {
        "frames_total": "200",
        "frames_done:postprocess": "50",
        "steps": json.dumps([{"name": "preprocess", "started_at": "2026-12-01T00:00:00+00:00"}]),
    }
    started = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    data = video_progress(record, started + 10)
    assert data == {
        "frames_done": 50,
        "frames_total": 200,
        "percent": 25.0,
        "frames_per_second": 5.0,
        "eta_seconds": 30.0,
    }
    assert video_progress({"frames_total": "0"}, started) is None


def test_a_subscriber_too_far_behind_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoints, "MAX_PENDING", 3)

    async def scenario() -> Subscriber:
        subscriber = Subscriber("t", Selection(everything=True), None)
        for n in range(5):
            subscriber.offer(Event(f"{n}-0", "job.created", "j", None, 0.0))
        return subscriber

    subscriber = run(scenario)
    assert subscriber.closed == "behind" and len(subscriber.pending) == 3


def test_only_a_subscriber_quiet_for_a_whole_heartbeat_period_is_asked_to_beat() -> None:
    async def scenario() -> list[bool]:
        busy = Subscriber("t", Selection(everything=True), None)
        quiet = Subscriber("t", Selection(everything=True), None)
        seen = []
        for n in range(3):  # three ticks: busy gets an event between each
            busy.offer(Event(f"{n}-0", "job.created", "j", None, 0.0))
            assert busy.take()
            busy.tick()
            quiet.tick()
            seen.append(busy.beat or (quiet.beat and quiet.wake.is_set()))
            if quiet.beat:
                assert quiet.take() == [] and not quiet.beat and not quiet.wake.is_set()
        return seen

    # The quiet one beats from the second tick on, every tick; the busy one never.
    assert run(scenario) == [False, True, True]


# --- the hub -------------------------------------------------------------------------


def hub_on(
    fake: FakeStreams,
    keys: StaticKeys | None = None,
    heartbeat_seconds: float = 15,
    gather_seconds: float = 0,
) -> EventHub:
    authenticator = Authenticator(keys or StaticKeys(), {}, 0.5)
    return EventHub(KEYS, authenticator, fake, fake, heartbeat_seconds, gather_seconds)


@pytest.mark.parametrize(("gather", "wakes"), [(0, 3), (0.3, 2)])
def test_a_hub_that_gathers_hands_a_burst_over_at_once(gather: float, wakes: int) -> None:
    """Three events 50 ms apart: without gathering each wakes the stream; gathering for
    300 ms after the first read hands the second and third over together."""

    async def scenario() -> tuple[list[int], list[str]]:
        fake = FakeStreams()
        hub = hub_on(fake, gather_seconds=gather)
        subscriber, _ = await hub.subscribe("acme", Selection(everything=True), None)
        sizes: list[int] = []
        got: list[str] = []

        async def stream() -> None:  # as the SSE loop takes them
            while len(got) < 3:
                await asyncio.wait_for(subscriber.wake.wait(), 2)
                taken = subscriber.take()
                sizes.append(len(taken))
                got.extend(e.id for e in taken)

        reading = asyncio.create_task(stream())
        await asyncio.sleep(0.05)
        sent = []
        for n in range(3):
            sent.append(fake.add("acme", "job.created", f"j{n}"))
            await asyncio.sleep(0.05)
        await reading
        await hub.aclose()
        assert got == sent
        return sizes, got

    sizes, _ = run(scenario)
    assert len(sizes) == wakes


def test_hub_replays_up_to_its_cursor_then_delivers_live_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(endpoints, "READ_COUNT", 2)  # replay pages

    async def scenario() -> tuple[list[str], list[str], list[str], dict[str, str]]:
        fake = FakeStreams()
        old = [fake.add("acme", "job.created", f"j{n}") for n in range(5)]
        hub = hub_on(fake)
        subscriber, until = await hub.subscribe("acme", Selection(everything=True), None)
        replayed = [e.id for e in await hub.replay("acme", old[0], until)]
        live = [fake.add("acme", "job.created", "k"), fake.add("globex", "job.created", "g")]
        await asyncio.sleep(0.1)
        got = [e.id for e in subscriber.take()]
        hub.unsubscribe(subscriber)
        cursors = dict(hub.cursors)
        await hub.aclose()
        return replayed, old[1:] + live[:1], got, cursors

    replayed, expected, got, cursors = run(scenario)
    assert replayed + got == expected
    assert cursors == {}  # the last subscriber gone: the tenant is no longer read


def test_hub_drops_an_older_read_after_a_tenant_rejoined() -> None:
    async def scenario() -> list[str]:
        fake = FakeStreams()
        hub = hub_on(fake)
        first = fake.add("acme", "job.created", "a")
        subscriber, _ = await hub.subscribe("acme", Selection(everything=True), None)
        hub._dispatch(
            {KEYS.events("acme"): "acme"},
            [(KEYS.events("acme"), fake.streams[KEYS.events("acme")])],
        )
        await hub.aclose()
        return [e.id for e in subscriber.take()] + [first]

    got = run(scenario)
    assert got == [got[-1]]  # the entry at the cursor itself is not delivered again


def test_revoked_keys_close_their_subscribers() -> None:
    async def scenario() -> tuple[str | None, str | None]:
        table = StaticKeys()
        table.add(SECRET, tenant="acme")
        hub = hub_on(FakeStreams(), table)
        kept, _ = await hub.subscribe("acme", Selection(everything=True), "cvk_other")
        table.add("cvk_other", tenant="acme")
        revoked, _ = await hub.subscribe("acme", Selection(everything=True), SECRET)
        table.table[SECRET] = replace(table.table[SECRET], revoked_at="2026-12-01T00:00:00+00:00")
        await asyncio.sleep(1.2)
        await hub.aclose()
        return kept.closed, revoked.closed

    assert run(scenario) == (None, "revoked")


# --- the endpoints on ASGI -----------------------------------------------------------


def app_on(fake: FakeStreams, **settings: Any) -> EventEndpoints:
    async def downstream(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("reached the next app")

    table = StaticKeys()
    table.add(SECRET, tenant="acme")
    services = SimpleNamespace(
        store=SimpleNamespace(keys=KEYS), settings=replace(Settings(), **settings)
    )
    app = EventEndpoints(downstream, services, Authenticator(table, {}, 0.5), auth=True)  # type: ignore[arg-type]
    beat = services.settings.events_heartbeat_seconds
    app.hub = lambda: app._hub or _set(app, hub_on(fake, table, beat))  # type: ignore[method-assign]
    return app


def _set(app: EventEndpoints, hub: EventHub) -> EventHub:
    app._hub = hub
    return hub


def sse_scope(query: str = "", last: str | None = None) -> dict[str, Any]:
    headers = [(b"x-api-key", SECRET.encode())]
    if last is not None:
        headers.append((b"last-event-id", last.encode()))
    return {
        "type": "http",
        "path": "/v1/events",
        "query_string": query.encode(),
        "headers": headers,
        "extensions": {
            "connexion_routing": {"operation_id": endpoints.SSE_OPERATION},
            "connexion_context": {
                "token_info": {
                    "tenant": "acme",
                    "role": "member",
                    "sub": "k1",
                    "key_prefix": "cvk_",
                }
            },
        },
    }


def call_sse(
    fake: FakeStreams, scope: dict[str, Any], during: Callable[[], object] = lambda: None
) -> list[MutableMapping[str, Any]]:
    sent: list[MutableMapping[str, Any]] = []

    async def scenario() -> None:
        app = app_on(fake, events_heartbeat_seconds=0.05)
        gone = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        task = asyncio.create_task(app(scope, receive, send))
        await asyncio.sleep(0.1)
        during()
        await asyncio.sleep(0.4)
        gone.set()
        await asyncio.wait_for(task, 2)
        if app._hub is not None:
            await app._hub.aclose()

    asyncio.run(scenario())
    return sent


def body(sent: list[MutableMapping[str, Any]]) -> str:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()


def test_sse_replays_after_last_event_id_then_streams_with_heartbeats() -> None:
    fake = FakeStreams()
    first = fake.add("acme", "job.created", "a")
    second = fake.add("acme", "job.created", "b")
    sent = call_sse(fake, sse_scope(last=first), lambda: fake.add("acme", "job.succeeded", "b"))
    start = sent[0]
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    text = body(sent)
    ids = [line[4:] for line in text.splitlines() if line.startswith("id: ")]
    assert ids[:1] == [second] and len(ids) == 2 and first not in ids
    assert ": keep-alive" in text and text.startswith("retry: 2000")


def test_sse_of_one_job_and_of_another_tenants_job() -> None:
    fake = FakeStreams()
    fake.hashes[KEYS.job("a" * 32)] = {"tenant": "acme"}
    fake.hashes[KEYS.job("b" * 32)] = {"tenant": "globex"}
    sent = call_sse(
        fake,
        sse_scope(f"job={'a' * 32}"),
        lambda: [fake.add("acme", "job.created", j) for j in ("x" * 32, "a" * 32)],
    )
    assert body(sent).count("event: job.created") == 1 and "a" * 32 in body(sent)
    refused = call_sse(fake, sse_scope(f"job={'b' * 32}"))
    assert refused[0]["status"] == 404
    assert json.loads(body(refused))["detail"].startswith("no job")


def test_sse_refuses_a_malformed_last_event_id() -> None:
    sent = call_sse(FakeStreams(), sse_scope(last="yesterday"))
    assert sent[0]["status"] == 400


def ws_session(
    fake: FakeStreams, subprotocols: list[str], messages: list[dict[str, Any]], **settings: Any
) -> list[MutableMapping[str, Any]]:
    sent: list[MutableMapping[str, Any]] = []

    async def scenario() -> None:
        app = app_on(fake, events_auth_seconds=0.2, **settings)
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        inbox.put_nowait({"type": "websocket.connect"})
        for message in messages:
            inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(message)})

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "websocket", "path": "/v1/ws", "subprotocols": subprotocols, "headers": []}
        task = asyncio.create_task(app(scope, inbox.get, send))
        await asyncio.sleep(0.3)
        fake.add("acme", "job.created", "a" * 32)
        await asyncio.sleep(0.3)
        inbox.put_nowait({"type": "websocket.disconnect"})
        await asyncio.wait_for(task, 2)
        if app._hub is not None:
            await app._hub.aclose()

    asyncio.run(scenario())
    return sent


def texts(sent: list[MutableMapping[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(m["text"]) for m in sent if m["type"] == "websocket.send"]


def test_websocket_key_in_the_first_message_then_subscribe() -> None:
    fake = FakeStreams()
    sent = ws_session(fake, [], [{"type": "auth", "key": SECRET}, {"type": "subscribe"}])
    assert sent[0] == {"type": "websocket.accept"}
    got = texts(sent)
    assert got[0] == {"type": "ready", "tenant": "acme", "role": "member"}
    assert got[1]["type"] == "subscribed"
    assert got[2]["type"] == "event" and got[2]["event"]["job"] == "a" * 32


def test_websocket_key_as_subprotocol_is_not_echoed() -> None:
    sent = ws_session(FakeStreams(), ["cvjobs", SECRET], [{"type": "bogus"}])
    assert sent[0] == {"type": "websocket.accept", "subprotocol": "cvjobs"}
    got = texts(sent)
    assert got[0]["type"] == "ready" and got[1]["status"] == 400
    assert all(m["type"] != "event" for m in got)  # nothing subscribed


@pytest.mark.parametrize(
    ("messages", "code"),
    [([], 1008), ([{"type": "auth", "key": "cvk_unknown"}], 4401), ([{"type": "hello"}], 1008)],
)
def test_websocket_without_a_valid_key_is_closed(messages: list[dict[str, Any]], code: int) -> None:
    sent = ws_session(FakeStreams(), [], messages)
    closes = [m for m in sent if m["type"] == "websocket.close"]
    assert closes and closes[0]["code"] == code
    assert not texts(sent)
