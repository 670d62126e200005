"""The worker app factory: every task registered, settings from the caller, nothing at import."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from celery_worker.worker import create_worker_app
from common.contract import TASK_NOTIFY
from common.settings import REPO_ROOT, Settings
from common.steps import STEPS


def test_each_app_gives_its_tasks_its_own_settings(tmp_path: Path) -> None:
    first = create_worker_app(
        replace(Settings(), broker_url="memory://", storage_dir=tmp_path / "a")
    )
    second = create_worker_app(
        replace(Settings(), broker_url="memory://", storage_dir=tmp_path / "b")
    )
    for app, folder in ((first, "a"), (second, "b")):
        assert app._context is None  # built on first use, not with the app
        task = app.tasks["cv.inference.detect"]
        assert task.app is app
        assert task.ctx.settings.storage_dir == tmp_path / folder
        assert task.ctx.storage.root == tmp_path / folder
        assert task.ctx is app.context  # once per app (per process)
    first.close()
    second.close()


def test_every_registered_step_and_the_callback_are_tasks() -> None:
    app = create_worker_app(replace(Settings(), broker_url="memory://"))
    names = {name for name in app.tasks if name.startswith("cv.")}
    assert {step.task for step in STEPS.values()} | {TASK_NOTIFY} <= names
    assert all(app.tasks[name].acks_late for name in names)  # from common.celery_app
    app.close()


PROBE = """
import gc, sys
import celery_worker.upkeep, celery_worker.worker, celery_worker.tasks.postprocess
from celery_worker.context import WorkerContext
from celery_worker.worker import WorkerApp
from common.jobstore import JobStore
from common.settings import Settings
built = [type(o).__name__ for o in gc.get_objects()
         if isinstance(o, (Settings, WorkerApp, WorkerContext, JobStore))]
print("celery_worker.app" in sys.modules, built)
"""


def test_importing_the_worker_code_builds_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd="/", capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False []"


CLI_APP_IMPORT = re.compile(
    r"^\s*(from\s+celery_worker\.app\s+import|from\s+celery_worker\s+import\s+app\b"
    r"|import\s+celery_worker\.app\b)",
    re.MULTILINE,
)


def test_only_the_cli_imports_the_cli_app() -> None:
    importers = [
        str(path.relative_to(REPO_ROOT))
        for folder in ("api", "common", "celery_worker", "scripts", "benchmarks", "tests")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if CLI_APP_IMPORT.search(path.read_text())
    ]
    assert importers == []
    assert CLI_APP_IMPORT.search("from celery_worker.app import app\n")  # the check can fail
