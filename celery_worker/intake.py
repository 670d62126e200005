"""Batching across requests: an inference process takes more queued messages itself.

Celery hands a pool process one message at a time (prefetch 1, acks_late). A batch step
(``task.batch_step``), given one, takes up to ``max_batch - 1`` more messages of the same
task from the same queue through a connection of this process's own (``basic_get``, not
acknowledged), waiting at most ``max_wait_ms`` for them; it runs one forward pass per model
and input shape, and for each message it took writes the result, publishes the chain's
next step (as Celery's tracer does) and acknowledges that message alone.

A process killed in the middle of a batch closes its connection: RabbitMQ redelivers at
once exactly the messages it took and had not acknowledged (marked redelivered, counted as
any worker death is), and Celery's own message goes back through
``task_reject_on_worker_lost``. A message taken that does not join the batch (another
task) runs after the batch in the same process, as Celery would have run it, so nothing is
reordered.

Why not celery-batches (0.11): it acknowledges a batch's messages only when the whole batch
has returned, has no worker-lost handling (a batch whose process died stays unacknowledged
until the worker restarts), needs a prefetch of the batch size (a long video chunk would
hold prefetched images), and leaves chains to each task.

Followers are invisible to Celery's events (Flower lists only the message Celery
delivered); the service's own metrics, job records and events count every one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery
from celery.canvas import signature
from celery.exceptions import Ignore
from kombu import Connection, Producer

from common.celery_app import queue as service_queue

if TYPE_CHECKING:
    from kombu.message import Message

log = logging.getLogger(__name__)

# How often an empty queue is asked again while a batch waits to fill.
POLL_SECONDS = 0.001
# A message taken that does not join the batch may itself be a batch step's leader: it
# batches too, this many levels deep at most.
MAX_DEPTH = 2
# The longest a batch waits for RabbitMQ to confirm its followers' next steps.
CONFIRM_SECONDS = 30.0


class Unconfirmed(Exception):
    """RabbitMQ did not confirm (or refused) a publish of the intake's channel."""


@dataclass
class Delivery:
    """One task message: what Celery's request holds of it, and the message to acknowledge
    (``None`` for the message Celery itself delivered: Celery acknowledges that one)."""

    task: str
    id: str
    args: list[Any]
    kwargs: dict[str, Any]
    delivery_info: dict[str, Any]
    chain: list[Any] | None = None
    callbacks: list[Any] | None = None
    root_id: str | None = None
    message: Message | None = None
    settled: bool = field(default=False, compare=False)

    @property
    def payload(self) -> Any:
        return self.args[0] if self.args else None

    @property
    def redelivered(self) -> bool:
        return bool(self.delivery_info.get("redelivered"))

    @classmethod
    def of_request(cls, name: str, request: Any, payload: Any) -> Delivery:
        """The message Celery delivered, from the task's request."""
        return cls(
            task=name,
            id=str(request.id),
            args=[payload],
            kwargs={},
            delivery_info=dict(request.delivery_info or {}),
            chain=request.chain,
            callbacks=request.callbacks,
            root_id=request.root_id,
        )

    @classmethod
    def of_message(cls, message: Message) -> Delivery | None:
        """A message of Celery's protocol 2 taken from the queue (None if it is not one)."""
        headers = message.headers or {}
        try:
            args, kwargs, embed = message.decode()
        except (ValueError, TypeError):
            return None
        if "task" not in headers or not isinstance(args, list):
            return None
        info = dict(message.delivery_info or {})
        info["priority"] = (message.properties or {}).get("priority")
        return cls(
            task=str(headers["task"]),
            id=str(headers.get("id")),
            args=args,
            kwargs=kwargs or {},
            delivery_info=info,
            chain=(embed or {}).get("chain"),
            callbacks=(embed or {}).get("callbacks"),
            root_id=headers.get("root_id"),
            message=message,
        )


class Intake:
    """This process's own consumer of the inference queue: the followers of a batch."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._connection: Connection | None = None
        self.depth = 0
        self._confirms = False
        self._published = self._confirmed = 0
        self._refused = False

    def _channel(self) -> Any:
        """The intake's channel: it takes the followers, publishes their next steps and
        acknowledges them. On RabbitMQ it is in confirm mode without waiting on each
        publish: ``confirm`` waits once for all of a batch's."""
        if self._connection is None:
            connection = self.app.connection_for_read(transport_options={"confirm_publish": False})
            channel = connection.default_channel
            self._published = self._confirmed = 0
            self._refused = False
            self._confirms = hasattr(channel, "confirm_select")  # py-amqp; not memory://
            if self._confirms:
                channel.confirm_select()
                channel.events["basic_ack"].add(self._on_ack)
                channel.events["basic_nack"].add(self._on_nack)
                publish = channel.basic_publish

                def counted(*args: Any, **kwargs: Any) -> Any:
                    self._published += 1
                    return publish(*args, **kwargs)

                channel.basic_publish = counted
            self._connection = connection
        return self._connection.default_channel

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._confirmed = max(self._confirmed, delivery_tag)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._refused = True
        self._confirmed = max(self._confirmed, delivery_tag)

    def confirm(self, timeout: float = CONFIRM_SECONDS) -> None:
        """Wait until RabbitMQ has confirmed every publish of the intake's channel (at
        once on memory://); ``Unconfirmed`` if it refused one or took too long."""
        if self._connection is None or not self._confirms:
            return
        deadline = time.monotonic() + timeout
        while self._confirmed < self._published and not self._refused:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unconfirmed(f"no confirm within {timeout:.0f} s")
            try:
                self._connection.drain_events(timeout=left)
            except TimeoutError:
                continue
        if self._refused:
            raise Unconfirmed("RabbitMQ refused a publish (basic.nack)")

    def _errors(self) -> tuple[type[BaseException], ...]:
        connection = self._connection or self.app.connection_for_read()
        return (*connection.connection_errors, *connection.channel_errors, OSError, Unconfirmed)

    def _drop(self) -> None:
        """Close the connection: RabbitMQ redelivers every message taken on it and not
        acknowledged. A connection that cannot be closed cleanly has its socket closed."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.release()
        except Exception:  # already broken: close the socket itself
            log.debug("intake connection closed with an error", exc_info=True)
            try:
                connection.collect()
            except Exception:
                log.debug("intake connection collected with an error", exc_info=True)

    def take(
        self, queue: str, task: str, most: int, wait_seconds: float
    ) -> tuple[list[Delivery], Delivery | None]:
        """Up to ``most`` queued messages of ``task`` from ``queue``, waiting at most
        ``wait_seconds`` for them; and the first other message taken, if one came between
        (run it with ``run_alone``). An empty list when the broker cannot be reached: the
        batch is then the leader alone."""
        if most <= 0 or self.depth > MAX_DEPTH:
            return [], None
        taken: list[Delivery] = []
        deadline = time.monotonic() + wait_seconds
        try:
            bound = service_queue(queue).bind(self._channel())
            while len(taken) < most:
                message = bound.get(no_ack=False, accept=["json"])
                if message is None:
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(POLL_SECONDS)
                    continue
                delivery = Delivery.of_message(message)
                if delivery is None:
                    log.error("dropped a message on %s that is no Celery task", queue)
                    message.reject(requeue=False)
                    continue
                if delivery.task != task:
                    return taken, delivery
                taken.append(delivery)
        except self._errors() as exc:
            # What was taken on the broken connection is redelivered by RabbitMQ already.
            log.warning("batching off for this message: the broker failed (%s)", exc)
            self._drop()
            return [], None
        return taken, None

    def finish(self, delivery: Delivery, result: Any) -> None:
        """``finish_all`` of one message."""
        self.finish_all([(delivery, result)])

    def finish_all(self, ended: list[tuple[Delivery, Any]]) -> None:
        """Messages whose steps ended: publish each one's next step (unless it was
        ignored, ``result`` None), wait once for RabbitMQ to confirm them all, then
        acknowledge each. If the broker fails meanwhile, the connection is closed and
        RabbitMQ redelivers them all (a step run again finds its work done)."""
        pending = [(d, r) for d, r in ended if d.message is not None and not d.settled]
        if not pending:
            return
        try:
            producer = Producer(self._channel(), auto_declare=False)
            for delivery, result in pending:
                if result is not None:
                    forward(self.app, delivery, result, producer)
            self.confirm()
            for delivery, _ in pending:
                delivery.settled = True
                delivery.message.ack()  # type: ignore[union-attr]
        except self._errors() as exc:
            log.warning(
                "the broker failed finishing %d messages (%s); redelivered", len(pending), exc
            )
            self._drop()
            for delivery, _ in pending:
                delivery.settled = True  # no longer this process's: RabbitMQ has them

    def ack(self, delivery: Delivery) -> None:
        if delivery.message is None or delivery.settled:
            return
        delivery.settled = True
        try:
            delivery.message.ack()
        except self._errors() as exc:
            # RabbitMQ redelivers it; the step runs again and finds its work done.
            log.warning("could not acknowledge %s (%s); it will be redelivered", delivery.id, exc)
            self._drop()

    def give_back(self, delivery: Delivery) -> None:
        """Put an unfinished follower back on its queue (a copy, then the original acked:
        not marked redelivered, as no worker died), e.g. when the batch stopped early."""
        message = delivery.message
        if message is None or delivery.settled:
            return
        queue = str(delivery.delivery_info.get("routing_key") or "")
        try:
            Producer(self._channel()).publish(
                message.body,
                exchange=queue,
                routing_key=queue,
                headers=message.headers,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                priority=delivery.delivery_info.get("priority"),
                delivery_mode=2,
            )
            self.confirm()  # the copy is RabbitMQ's before the original goes
        except self._errors() as exc:
            log.warning("could not give back %s (%s); RabbitMQ redelivers it", delivery.id, exc)
            self._drop()
            delivery.settled = True
            return
        self.ack(delivery)

    def run_alone(self, delivery: Delivery) -> None:
        """Run a message taken from the queue as Celery's worker would: its task with a
        request made from the message, then its chain, then the acknowledgement.

        A step records its own failure (``task._guarded``), so a task that raised is
        acknowledged too; one stopped by Redis trouble goes back on its queue."""
        task = self.app.tasks.get(delivery.task)
        if task is None:
            log.error("dropped a message of an unknown task %r", delivery.task)
            self.ack(delivery)
            return
        self.depth += 1
        task.push_request(
            id=delivery.id,
            args=delivery.args,
            kwargs=delivery.kwargs,
            delivery_info=delivery.delivery_info,
            chain=delivery.chain,
            callbacks=delivery.callbacks,
            root_id=delivery.root_id,
            retries=0,
            is_eager=False,
        )
        try:
            result = task.run(*delivery.args, **delivery.kwargs)
        except Ignore:
            self.ack(delivery)
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("%s: Redis failed (%s); back on its queue", delivery.id, exc)
            self.give_back(delivery)
            return
        except Exception:
            log.exception("task %s[%s] raised", delivery.task, delivery.id)
            self.ack(delivery)
            return
        finally:
            task.pop_request()
            self.depth -= 1
        self.finish(delivery, result)


def forward(app: Celery, delivery: Delivery, result: Any, producer: Producer | None = None) -> None:
    """Publish what follows a finished message: its callbacks and its chain's next step,
    with its priority, as Celery's tracer does (``celery.app.trace``). With ``producer``:
    on its channel, with no retry (the caller closes the connection on failure)."""
    options: dict[str, Any] = {
        "parent_id": delivery.id,
        "root_id": delivery.root_id,
        "priority": delivery.delivery_info.get("priority"),
    }
    if producer is not None:
        options.update(producer=producer, retry=False)
    for callback in delivery.callbacks or []:
        signature(callback, app=app).apply_async((result,), **options)
    if delivery.chain:
        chain = list(delivery.chain)
        signature(chain[-1], app=app).apply_async((result,), chain=chain[:-1], **options)
