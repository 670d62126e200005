"""The state machine of job records: every change of state, as one transaction each.

A record is created ``queued`` (``records``) and moves through ``running`` to one of
the terminal states. Every change is a WATCH/MULTI transaction (``_transition``)
that refuses to leave a terminal state, so a worker finishing late can never revive
a cancelled job, and moves the id between the per-state lists in the same
transaction. The change's event (``common.events``) is appended to the tenant's
stream in that transaction too, so the stream's order is the order of the changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from common.clock import now_iso
from common.contract import ACTIVE_STATES, DEFAULT_TENANT, JobState
from common.events import TERMINAL_EVENTS, EventLog, entry, step_seconds
from common.jobstore.keys import StorePart

# What a transition writes: the record as it is -> the fields to change.
Update = Callable[[dict[str, Any]], dict[str, str]]
# What it reports: the record as it is, the fields changed -> (event type, data) pairs.
Report = Callable[[dict[str, Any], dict[str, str]], list[tuple[str, dict[str, Any]]]]

_JSON_FIELDS = ("options", "input", "steps", "task_ids", "artifacts", "error")
_OPTIONAL_FIELDS = (
    "key_id",
    "batch_id",
    "step",
    "finished_at",
    "callback_url",
    "notification",
    "progress_at",
    "active_at",
)


class JobTransitions(StorePart):
    """The state changes of ``JobRecords`` (which adds creating, reading and deleting)."""

    events: EventLog

    def step_started(self, job_id: str, step: str) -> bool:
        """Mark ``step`` running. False when the job is gone, cancelled or failed."""
        return self.steps_started([job_id], step)[0]

    def step_finished(self, job_id: str, step: str) -> bool:
        return self.steps_finished([job_id], step)[0]

    def steps_started(self, job_ids: list[str], step: str) -> list[bool]:
        """``step_started`` for many jobs (a batch) in one transaction: one answer each."""

        def update(record: dict[str, Any]) -> dict[str, str]:
            steps = _mark_step(record["steps"], step, "started_at")
            return {"step": step, "steps": json.dumps(steps)}

        return self._transitions(job_ids, ACTIVE_STATES, "running", update, report=_started(step))

    def steps_finished(self, job_ids: list[str], step: str) -> list[bool]:
        """``step_finished`` for many jobs in one transaction: one answer each."""

        def update(record: dict[str, Any]) -> dict[str, str]:
            return {"steps": json.dumps(_mark_step(record["steps"], step, "finished_at"))}

        return self._transitions(job_ids, ("running",), "running", update, report=_finished(step))

    def stage_started(self, job_id: str, stage: str) -> bool:
        """Mark a video's ``stage`` running (once: later chunks keep its start).

        False unless active. ``step`` names the furthest stage started: a video's
        stages overlap.
        """

        def update(record: dict[str, Any]) -> dict[str, str]:
            steps = record["steps"]
            names = [s["name"] for s in steps]
            stage_entry = steps[names.index(stage)]
            fields: dict[str, str] = {"active_at": now_iso()}
            if not stage_entry.get("started_at"):
                stage_entry["started_at"] = now_iso()
                fields["steps"] = json.dumps(steps)
            current = record.get("step")
            if not current or names.index(stage) > names.index(current):
                fields["step"] = stage
            return fields

        def report(record: dict[str, Any], fields: dict[str, str]) -> list[Any]:
            return _started(stage)(record, fields) if "steps" in fields else []

        return self._transition(job_id, ACTIVE_STATES, "running", update, report=report)

    def stage_finished(self, job_id: str, stage: str) -> bool:
        """Mark a video's ``stage`` finished (all its chunks are done)."""

        def update(record: dict[str, Any]) -> dict[str, str]:
            steps = record["steps"]
            stage_entry = next(s for s in steps if s["name"] == stage)
            if stage_entry.get("finished_at"):
                return {}
            stage_entry["finished_at"] = now_iso()
            return {"steps": json.dumps(steps)}

        def report(record: dict[str, Any], fields: dict[str, str]) -> list[Any]:
            return _finished(stage)(record, fields) if "steps" in fields else []

        return self._transition(job_id, ("running",), "running", update, report=report)

    def succeed(
        self, job_id: str, step: str, result: dict[str, Any], artifacts: list[dict[str, Any]]
    ) -> bool:
        """Store the result, finish ``step`` and mark the job succeeded (unless cancelled).

        The result is written in the same transaction as the state, so a client that
        sees ``succeeded`` can always read the result.
        """
        document = json.dumps(result)

        # A video's last stage was reported finished when its last chunk ended
        # (stage_finished): the finishing step must not report it a second time.
        reported: list[bool] = [False]

        def update(record: dict[str, Any]) -> dict[str, str]:
            entry: dict[str, Any] = next((x for x in record["steps"] if x["name"] == step), {})
            reported[0] = bool(entry.get("finished_at"))
            return {
                "step": "",
                "finished_at": now_iso(),
                "steps": json.dumps(_mark_step(record["steps"], step, "finished_at")),
                "artifacts": json.dumps(artifacts),
            }

        stored = sum(int(a.get("bytes") or 0) for a in artifacts)

        def store_result(pipe: Any, tenant: str) -> None:
            pipe.set(self.keys.result(job_id), document, ex=self.ttl)
            if stored:  # the artifacts count towards the tenant's bytes stored
                pipe.hincrby(self.keys.usage(tenant), "bytes", stored)
                pipe.hincrby(self.keys.job_bytes(tenant), job_id, stored)

        def report(record: dict[str, Any], fields: dict[str, str]) -> list[Any]:
            finished = [] if reported[0] else _finished(step)(record, fields)
            return [*finished, ("job.succeeded", {})]

        return self._transition(
            job_id, ACTIVE_STATES, "succeeded", update, store_result, report=report
        )

    def fail(self, job_id: str, step: str | None, kind: str, detail: str) -> bool:
        error = {"step": step, "kind": kind, "detail": detail}

        def update(record: dict[str, Any]) -> dict[str, str]:
            return {"step": "", "finished_at": now_iso(), "error": json.dumps(error)}

        def report(record: dict[str, Any], fields: dict[str, str]) -> list[Any]:
            return [("job.failed", error)]

        return self._transition(job_id, ACTIVE_STATES, "failed", update, report=report)

    def cancel(self, job_id: str) -> bool:
        def update(record: dict[str, Any]) -> dict[str, str]:
            return {"step": "", "finished_at": now_iso()}

        def report(record: dict[str, Any], fields: dict[str, str]) -> list[Any]:
            return [("job.cancelled", {})]

        return self._transition(job_id, ACTIVE_STATES, "cancelled", update, report=report)

    def _transition(
        self,
        job_id: str,
        allowed_from: Iterable[str],
        new_state: JobState,
        update: Update,
        also: Callable[[Any, str], None] | None = None,
        report: Report | None = None,
    ) -> bool:
        return self._transitions([job_id], allowed_from, new_state, update, also, report)[0]

    def _transitions(
        self,
        job_ids: list[str],
        allowed_from: Iterable[str],
        new_state: JobState,
        update: Update,
        also: Callable[[Any, str], None] | None = None,
        report: Report | None = None,
    ) -> list[bool]:
        """One change to each job that is in an ``allowed_from`` state, all in one
        WATCH/MULTI transaction (retried whole when another client wrote one of them).
        Answers, per job, whether it changed."""
        if not job_ids:
            return []
        keys = [self.keys.job(job_id) for job_id in job_ids]
        allowed = set(allowed_from)
        changed: list[bool] = []
        ended: list[tuple[str, str, str]] = []  # (tenant, batch id, job id)

        def attempt(pipe: Any) -> bool:
            changed.clear()
            ended.clear()
            raws = self._read(pipe, keys)
            pipe.multi()
            for job_id, key, raw in zip(job_ids, keys, raws, strict=True):
                ok = bool(raw) and raw.get("state") in allowed
                changed.append(ok)
                if ok:
                    tenant = self._change(pipe, job_id, key, raw, new_state, update, report)
                    if also is not None:
                        also(pipe, tenant)
                    if raw.get("batch_id"):
                        ended.append((tenant, raw["batch_id"], job_id))
            return True

        self.redis.transaction(attempt, *keys, value_from_callable=True)
        if new_state in TERMINAL_EVENTS:
            for tenant, batch_id, job_id in ended:
                self.events.batch_member_ended(tenant, batch_id, job_id, new_state, self.ttl)
        return changed

    def _read(self, pipe: Any, keys: list[str]) -> list[dict[str, Any]]:
        """The records, read after WATCH: one key on the watching connection, many in
        one round trip of a plain pipeline (a write to any of them still aborts EXEC)."""
        if len(keys) == 1:
            return [pipe.hgetall(keys[0])]
        reader = self.redis.pipeline(transaction=False)
        for key in keys:
            reader.hgetall(key)
        return list(reader.execute())

    def _change(
        self,
        pipe: Any,
        job_id: str,
        key: str,
        raw: dict[str, Any],
        new_state: JobState,
        update: Update,
        report: Report | None,
    ) -> str:
        """Queue one job's change on ``pipe`` (in MULTI); answers its tenant."""
        record = decode(raw)
        fields = update(record)
        fields.update(state=new_state, updated_at=now_iso())
        pipe.hset(key, mapping=fields)
        tenant = str(raw.get("tenant") or DEFAULT_TENANT)
        if raw["state"] != new_state:
            score = float(raw.get("submitted_ts") or time.time())
            for old, new in (
                (self.keys.index(raw["state"]), self.keys.index(new_state)),
                (
                    self.keys.tenant_index(tenant, raw["state"]),
                    self.keys.tenant_index(tenant, new_state),
                ),
            ):
                pipe.zrem(old, job_id)
                pipe.zadd(new, {job_id: score})
        for kind, data in report(record, fields) if report is not None else []:
            self.events.add(pipe, tenant, entry(kind, job_id, raw.get("batch_id"), data))
        return tenant


def decode(raw: dict[str, Any]) -> dict[str, Any]:
    """A job hash as Python values: JSON fields parsed, empty optional fields None."""
    record: dict[str, Any] = dict(raw)
    for name in _JSON_FIELDS:
        value = record.get(name)
        record[name] = json.loads(value) if value else None
    for name in _OPTIONAL_FIELDS:
        record[name] = record.get(name) or None
    record["tenant"] = record.get("tenant") or DEFAULT_TENANT  # made before tenants existed
    record["priority"] = record.get("priority") or "normal"
    record["held"] = bool(record.get("held"))
    record.pop("submitted_ts", None)
    return record


def _started(step: str) -> Report:
    def report(record: dict[str, Any], fields: dict[str, str]) -> list[Any]:
        return [("step.started", {"step": step})]

    return report


def _finished(step: str) -> Report:
    """``step.finished`` with the step's seconds, read from the steps just written."""

    def report(record: dict[str, Any], fields: dict[str, str]) -> list[Any]:
        steps = json.loads(fields["steps"]) if "steps" in fields else record["steps"]
        done: dict[str, Any] = next((s for s in steps if s["name"] == step), {})
        return [("step.finished", {"step": step, "seconds": step_seconds(done)})]

    return report


def _mark_step(steps: list[dict[str, Any]], step: str, field: str) -> list[dict[str, Any]]:
    for item in steps:
        if item["name"] == step:
            item[field] = now_iso()
            if field == "started_at":
                item["finished_at"] = None
    return steps
