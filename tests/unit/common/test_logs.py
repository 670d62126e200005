"""common.logs: job events as one JSON object a line, the other logs untouched."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.logs import EVENTS, JsonFormatter, event, install_event_log


@pytest.fixture
def restore_events() -> Iterator[None]:
    yield
    install_event_log("", "test")  # back to the ordinary logs


def test_a_record_becomes_one_json_line_with_its_fields() -> None:
    record = logging.makeLogRecord(
        {
            "name": EVENTS,
            "msg": "step.finished",
            "levelname": "INFO",
            "job_id": "j1",
            "seconds": 0.5,
        }
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["event"] == "step.finished"
    assert data["job_id"] == "j1"
    assert data["seconds"] == 0.5
    assert data["level"] == "info"
    assert data["time"].endswith("Z")


def test_events_are_appended_to_the_file_and_nowhere_else(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, restore_events: None
) -> None:
    target = tmp_path / "logs" / "events.jsonl"
    install_event_log(str(target), "worker-inference")
    with caplog.at_level(logging.INFO):
        event("step.finished", job_id="j1", tenant="acme", step="inference", queue="inference")
        event("job.finished", job_id="j1", outcome="succeeded", error_kind=None)
        logging.getLogger("celery_worker.x").info("an ordinary line")
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["step.finished", "job.finished"]
    assert lines[0]["service"] == "worker-inference"
    assert lines[0]["queue"] == "inference"
    assert "error_kind" not in lines[1]  # None fields are left out
    assert [r.getMessage() for r in caplog.records] == ["an ordinary line"]


def test_a_second_install_replaces_the_first(tmp_path: Path, restore_events: None) -> None:
    install_event_log(str(tmp_path / "a.jsonl"), "api")
    install_event_log(str(tmp_path / "b.jsonl"), "api")
    event("job.submitted", job_id="j2")
    assert not (tmp_path / "a.jsonl").read_text()
    assert json.loads((tmp_path / "b.jsonl").read_text())["job_id"] == "j2"


def test_without_a_target_events_go_to_the_ordinary_logs(
    caplog: pytest.LogCaptureFixture, restore_events: None
) -> None:
    install_event_log("", "api")
    with caplog.at_level(logging.INFO, logger=EVENTS):
        event("job.submitted", job_id="j3")
    assert [(r.getMessage(), getattr(r, "job_id", None)) for r in caplog.records] == [
        ("job.submitted", "j3")
    ]


def test_an_unwritable_target_falls_back_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_events: None
) -> None:
    (tmp_path / "a-file").write_text("")
    install_event_log(str(tmp_path / "a-file" / "events.jsonl"), "api")  # as on a read-only fs
    event("job.submitted", job_id="j4")
    assert json.loads(capsys.readouterr().err.splitlines()[-1])["job_id"] == "j4"
