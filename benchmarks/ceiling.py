"""The orchestration ceiling: the most images a second the service can feed one GPU.

    make bench-ceiling   (.venv/bin/python benchmarks/ceiling.py [--images 400] [--batch 32])

THE MODEL HERE IS THE BENCHMARK-ONLY NULL MODEL (``format: null``): no network runs and
nothing is found. It is never in config/models.yaml; this script writes a catalogue of its
own with one model, ``ceiling-null``, and one pipeline, ``ceiling`` (preprocess.image ->
inference.detect -> postprocess.annotate). What is left of an image's cost is the
service's own: the message hops, the storage reads and writes, the Redis bookkeeping.

It needs RabbitMQ and Redis as `make test` starts them (`make services`), and uses a
vhost, a Redis prefix and storage of its own. Each hop is measured alone, with one worker
process of one queue, so the hops do not share the two cores of a small host:

1. ``--images`` jobs (zidane.jpg, 1280x720) are submitted through the API in-process
   while no worker runs; then a preprocess worker drains them into the inference queue.
2. An inference worker with ``max_batch: 1`` (unbatched) drains the inference queue.
3. Steps 1 and 2 again with ``max_batch: --batch`` (batched; ``max_wait_ms: 0``).
4. A postprocess worker finishes all the jobs.

A hop's time runs from the moment its worker began the first job's step (the job
records' ``started_at``, so workers' start-up is not counted) to the moment the next
queue holds every job's message (postprocess: every job succeeded), sampled every 20 ms.
Per image: the hop's wall time, the CPU time of the worker, RabbitMQ and Redis over it,
and the step's own recorded seconds.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import save_report

from common.contract import QUEUE_INFERENCE, QUEUE_POSTPROCESS, QUEUE_PREPROCESS
from common.settings import Settings

VHOST = "cvjobs-bench-ceiling"
TENANT = "bench-ceiling"
MODEL = "ceiling-null"
PIPELINE = "ceiling"
MODELS_YAML = f"""\
# benchmarks/ceiling.py only: the null model (no network, finds nothing).
models:
  {MODEL}:
    task: detect
    format: "null"  # quoted: a bare null is YAML's None
    max_batch: ${{CV_CEILING_BATCH:-1}}
    max_wait_ms: 0
"""
PIPELINES_YAML = f"""\
pipelines:
  {PIPELINE}:
    description: benchmarks/ceiling.py only (the null model)
    model: {MODEL}
    steps: [preprocess.image, inference.detect, postprocess.annotate]
"""
# Often enough for +-1% of a hop of seconds, seldom enough to cost the hop nothing.
SAMPLE_SECONDS = 0.02
HOP_TIMEOUT = 600.0
TARGET = 5.0


class Depths:
    """Ready-message counts of the service's queues (a passive declare: no side effects)."""

    def __init__(self, broker_url: str) -> None:
        from kombu import Connection

        from common.celery_app import queue
        from common.contract import QUEUES

        self.connection = Connection(broker_url)
        self.channel = self.connection.channel()
        for name in QUEUES:  # as the workers declare them (priorities, arguments)
            queue(name).bind(self.channel).declare()

    def ready(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue=queue, passive=True).message_count)

    def close(self) -> None:
        self.connection.release()


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = HOP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"ceiling: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(SAMPLE_SECONDS)


def stop(worker: Any) -> None:
    """A warm shutdown: the master alone is signalled, so the task in hand finishes (a
    signal to the whole group would kill it mid-task and Celery would run it again)."""
    from tests.support import stack

    worker.terminate()
    try:
        worker.wait(60)
    except subprocess.TimeoutExpired:
        stack.stop(worker)


def profile(pid: int, folder: Path, env: dict[str, str]) -> Any:
    """py-spy (pip install py-spy) on a worker and its pool: collapsed stacks per round."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"inference-batch{env.get('CV_CEILING_BATCH', '1')}.txt"
    command = ["py-spy", "record", "--subprocesses", "--format", "raw", "-r", "250"]
    return subprocess.Popen([*command, "-p", str(pid), "-o", str(out)])


def servers() -> dict[str, Any]:
    """RabbitMQ's and Redis's processes, for their CPU time."""
    import psutil

    found: dict[str, Any] = {}
    for process in psutil.process_iter(["name"]):
        name = process.info["name"] or ""
        if name.startswith("beam.smp"):
            found["rabbitmq"] = process
        elif name.startswith("redis-server"):
            found["redis"] = process
    return found


def cpu_seconds(process: Any) -> float:
    import psutil

    try:
        times = process.cpu_times()
        return float(times.user + times.system)
    except psutil.Error:
        return 0.0


class CpuMeter:
    """CPU seconds of a process with its children (``label``: a worker's master and pool,
    or gunicorn's master and workers), RabbitMQ and Redis from now on."""

    def __init__(self, pid: int, label: str = "worker") -> None:
        import psutil

        master = psutil.Process(pid)
        self.processes = {label: [master, *master.children(recursive=True)]}
        self.processes.update({name: [p] for name, p in servers().items()})
        self.start = self.read()

    def read(self) -> dict[str, float]:
        return {n: sum(cpu_seconds(p) for p in ps) for n, ps in self.processes.items()}

    def ms_per_image(self, count: int) -> dict[str, float]:
        end = self.read()
        return {n: round(1000 * (end[n] - self.start[n]) / count, 3) for n in end}


def hop(
    store: Any, ids: list[str], step: str, start: Callable[[], Any], done: Callable[[], bool]
) -> tuple[float, Any, dict[str, float]]:
    """Start a worker (``start()``) for ``step`` of the jobs ``ids``, whose messages are
    queued: seconds from the moment it began the first (the job records' ``started_at``,
    so its start-up is not counted) to ``done()``; and the CPU milliseconds per image of
    the worker, RabbitMQ and Redis meanwhile."""
    worker = start()
    wait_for(lambda: step_started(store, ids[0], step) is not None, f"the first {step}")
    meter = CpuMeter(worker.pid)
    wait_for(done, f"the {step} of {len(ids)} jobs")
    ended = time.time()
    first = min(t for t in (step_started(store, job_id, step) for job_id in ids) if t)
    return ended - first, worker, meter.ms_per_image(len(ids))


def holds(depths: Depths, queue: str, count: int) -> Callable[[], bool]:
    """Whether ``queue`` holds ``count`` messages more than it does now."""
    before = depths.ready(queue)
    return lambda: depths.ready(queue) >= before + count


def step_started(store: Any, job_id: str, step: str) -> float | None:
    """When ``step`` of the job last began (Unix time), from its record."""
    record = store.jobs.get(job_id) or {}
    for entry in record.get("steps") or []:
        if entry["name"] == step and entry.get("started_at"):
            return datetime.fromisoformat(entry["started_at"]).timestamp()
    return None


def finished(store: Any, ids: list[str]) -> bool:
    """Whether every job succeeded (one round trip); SystemExit if one ended otherwise."""
    reads = store.redis.pipeline(transaction=False)
    for job_id in ids:
        reads.hget(store.keys.job(job_id), "state")
    states = collections.Counter(reads.execute())
    others = {s: n for s, n in states.items() if s not in ("queued", "running", "succeeded")}
    if others:
        raise SystemExit(f"ceiling: jobs ended otherwise: {others}")
    return states["succeeded"] == len(ids)


def submit(client: Any, count: int, content: bytes) -> list[str]:
    ids = []
    for index in range(count):
        response = client.post(
            "/v1/jobs",
            files={"file": (f"c{index}.jpg", content, "image/jpeg")},
            data={"pipeline": PIPELINE},
        )
        if response.status_code != 202:
            status = response.status_code
            raise SystemExit(f"ceiling: POST /v1/jobs answered {status}: {response.text}")
        ids.append(response.json()["id"])
    return ids


def step_stats(store: Any, ids: list[str], step: str) -> dict[str, Any]:
    """From the finished jobs' records: the step's own seconds and the batch sizes."""
    seconds, batches = [], []
    for job_id in ids:
        timings = (store.jobs.result(job_id) or {}).get("timings") or {}
        if step in timings:
            seconds.append(float(timings[step]))
        if f"{step}_batch" in timings:
            batches.append(int(timings[f"{step}_batch"]))
    out: dict[str, Any] = {
        "step_ms_per_image_median": round(1000 * statistics.median(seconds), 3) if seconds else None
    }
    if batches:
        out["batch_mean"] = round(statistics.mean(batches), 1)
        out["batch_max"] = max(batches)
    return out


def per_image(seconds: float, count: int) -> dict[str, float]:
    return {
        "images_per_second": round(count / seconds, 1),
        "ms_per_image": round(1000 * seconds / count, 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from api.app import create_app
    from benchmarks.tenants import photo
    from common.jobstore import JobStore
    from tests.support import stack

    stack.require_servers()
    stack.fresh_vhost(VHOST)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ceiling-"))
    (tmp / "models.yaml").write_text(MODELS_YAML)
    (tmp / "pipelines.yaml").write_text(PIPELINES_YAML)
    env = stack.stack_environment(tmp, tmp / "none.pt", tmp / "none-seg.pt")
    env["CV_BROKER_URL"] = stack.broker_url(VHOST, password=False)
    env["CV_MODELS_FILE"] = str(tmp / "models.yaml")
    env["CV_PIPELINES_FILE"] = str(tmp / "pipelines.yaml")
    settings = Settings.from_env(env, env_file=Path("/nonexistent"))
    store = JobStore.from_settings(settings)
    store.tenants.ensure(TENANT)
    store.tenants.set_limits(TENANT, {"active_jobs": 0, "submissions_per_minute": 0, "bytes": 0})
    key = store.apikeys.create(TENANT, "bench ceiling", "member")[1]
    client = create_app(settings).test_client(base_url="http://localhost")
    client.headers.update({"X-API-Key": key})
    depths = Depths(stack.broker_url(VHOST, password=True))
    logs = tmp / "logs"
    logs.mkdir()
    content, count = photo(), args.images
    report: dict[str, Any] = {
        "model": f"{MODEL}: THE BENCHMARK-ONLY NULL MODEL (no network runs, nothing found)",
        "images": count,
        "image": "zidane.jpg 1280x720",
        "worker_processes_per_hop": 1,
    }
    ids: dict[str, list[str]] = {}
    workers: list[Any] = []
    profiles: list[Any] = []

    def start(queue: str, worker_env: dict[str, str]) -> Any:
        workers.append(stack.start_worker(queue, worker_env, logs))
        if args.profile and queue == QUEUE_INFERENCE:
            profiles.append(profile(workers[-1].pid, args.profile, worker_env))
        return workers[-1]

    try:
        for label, batch in (("unbatched", 1), ("batched", args.batch)):
            ids[label] = submit(client, count, content)
            seconds, worker, cpu = hop(
                store,
                ids[label],
                "preprocess",
                lambda: start(QUEUE_PREPROCESS, env),
                holds(depths, QUEUE_INFERENCE, count),
            )
            stop(worker)
            report[f"preprocess_{label}_round"] = {
                **per_image(seconds, count),
                "cpu_ms_per_image": cpu,
            }
            worker_env = {**env, "CV_CEILING_BATCH": str(batch)}
            seconds, worker, cpu = hop(
                store,
                ids[label],
                "inference",
                functools.partial(start, QUEUE_INFERENCE, worker_env),
                holds(depths, QUEUE_POSTPROCESS, count),
            )
            stop(worker)
            for spy in profiles:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            profiles.clear()
            report[f"inference_{label}"] = {
                "max_batch": batch,
                **per_image(seconds, count),
                "cpu_ms_per_image": cpu,
            }
            print(f"ceiling: inference {label} (max_batch {batch}): {report[f'inference_{label}']}")
        every = [*ids["unbatched"], *ids["batched"]]
        seconds, worker, cpu = hop(
            store,
            every,
            "postprocess",
            lambda: start(QUEUE_POSTPROCESS, env),
            lambda: finished(store, every),
        )
        stop(worker)
        report["postprocess"] = {**per_image(seconds, len(every)), "cpu_ms_per_image": cpu}
        for label in ("unbatched", "batched"):
            report[f"inference_{label}"].update(step_stats(store, ids[label], "inference"))
        report["preprocess"] = step_stats(store, every, "preprocess")
        report["postprocess"].update(step_stats(store, every, "postprocess"))
        unbatched = report["inference_unbatched"]["images_per_second"]
        batched = report["inference_batched"]["images_per_second"]
        report["batched_over_unbatched"] = round(batched / unbatched, 2)
        return report
    finally:
        for worker in workers:
            stack.stop(worker)  # no-op for those stopped already
        depths.close()
        stack.delete_prefix(store.redis, settings.redis_prefix)
        if args.keep:
            print(f"ceiling: logs kept in {logs}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32, help="max_batch of the batched round")
    parser.add_argument("--keep", action="store_true", help="keep the workers' logs")
    parser.add_argument("--profile", type=Path, help="py-spy each inference worker into DIR")
    args = parser.parse_args()
    report = run(args)
    print(json.dumps(report, indent=2))
    save_report("ceiling", report)
    ratio = report["batched_over_unbatched"]
    print(f"ceiling: batched {ratio}x unbatched (target {TARGET}x): {ratio >= TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
