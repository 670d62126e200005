"""common.metrics: tenant labels, instance folders, and sums across real forked processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from common.metrics import OTHER_TENANT, REGISTRY, TenantLabels, instance_directory, metric_names
from common.settings import REPO_ROOT


@pytest.mark.parametrize(
    ("limit", "tenants", "labels"),
    [
        (2, ["a", "b", "c", "a", "d"], ["a", "b", OTHER_TENANT, "a", OTHER_TENANT]),
        (0, ["a", "b", "c"], ["a", "b", "c"]),
        (1, [None, "x"], ["default", OTHER_TENANT]),
    ],
)
def test_tenant_labels_are_bounded(
    limit: int, tenants: list[str | None], labels: list[str]
) -> None:
    label = TenantLabels(limit)
    assert [label(t) for t in tenants] == labels


def test_an_instance_folder_replaces_those_of_dead_instances(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"api-{dead.pid}").mkdir()
    (tmp_path / f"api-{dead.pid}" / "counter_1.db").write_bytes(b"x")
    alive = tmp_path / f"api-{os.getppid()}"
    alive.mkdir()
    other = tmp_path / f"worker-inference-{dead.pid}"
    other.mkdir()
    mine = instance_directory(tmp_path, "api", os.getpid())
    assert mine == tmp_path / f"api-{os.getpid()}"
    assert not (tmp_path / f"api-{dead.pid}").exists()
    assert alive.exists()  # a running instance is never touched
    assert other.exists()  # another service's folder is its own business


def test_every_metric_has_labels() -> None:
    """Unlabelled metrics would take their storage at import, before the multiprocess
    folder is chosen (see the module docstring)."""
    for collector in list(REGISTRY._collector_to_names):
        assert collector._labelnames, collector


def test_sample_names_include_the_suffixes() -> None:
    names = metric_names()
    assert {"cv_jobs_finished_total", "cv_step_duration_seconds_bucket"} <= names
    assert "cv_gpu_memory_allocated_bytes" in names


SUMS_ACROSS_FORKS = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import prometheus_client  # imported before the folder is known, as in the servers
    from common import metrics

    metrics.use_directory(Path(sys.argv[1]))
    metrics.STEP_DURATION.labels("inference", "m").observe(0.2)
    children = []
    for n in range(3):
        pid = os.fork()
        if pid == 0:
            metrics.JOBS_FINISHED.labels("detect", "acme", "succeeded", "").inc(n + 1)
            metrics.STEP_DURATION.labels("inference", "m").observe(1.5)
            metrics.GPU_MEMORY.labels("cuda:0").set(100)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    metrics.process_exited(children[0])
    text = prometheus_client.generate_latest(metrics.scrape_registry()).decode()
    print(text)
    """
)


def test_samples_add_up_across_forked_processes(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    run = subprocess.run(
        [sys.executable, "-c", SUMS_ACROSS_FORKS, str(folder)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    finished = (
        'cv_jobs_finished_total{error_kind="",outcome="succeeded",pipeline="detect",tenant="acme"}'
    )
    assert f"{finished} 6.0" in lines  # 1 + 2 + 3 from three processes
    assert 'cv_step_duration_seconds_count{model="m",step="inference"} 4.0' in lines
    assert 'cv_step_duration_seconds_bucket{le="1.0",model="m",step="inference"} 1.0' in lines
    # a dead process's live gauge leaves the sum (mark_process_dead); two remain
    assert 'cv_gpu_memory_allocated_bytes{device="cuda:0"} 200.0' in lines
