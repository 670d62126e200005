"""The API's metrics: operation labels, the scrape token, and the live gauges' cache."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from api.metrics import HttpMetrics, LiveCollector
from api.spec import load_spec
from common.catalogue import load_catalogue
from common.settings import Settings
from tests.support.api import offline_app
from tests.support.keys import OFFLINE_KEY

TOKEN = "scrape-token-of-the-unit-tests"


@pytest.fixture(scope="module")
def labels() -> HttpMetrics:
    settings = Settings()
    spec = load_spec(settings, load_catalogue(settings))
    return HttpMetrics(lambda *a: None, spec)  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("POST", "/v1/jobs", "create_job"),
        ("GET", "/v1/jobs", "list_jobs"),
        ("GET", "/v1/jobs/0123456789abcdef0123456789abcdef", "get_job"),
        ("HEAD", "/v1/jobs/0123456789abcdef0123456789abcdef", "get_job"),
        ("GET", "/v1/jobs/x/artifacts/annotated.jpg", "get_artifact"),
        ("GET", "/metrics", "scrape"),
        ("GET", "/", "docs"),
        ("GET", "/openapi.json", "docs"),
        ("GET", "/v1/nothing-here/12", "unmatched"),
        ("PUT", "/v1/jobs", "unmatched"),
    ],
)
def test_the_operation_label_is_the_operation_id_never_the_path(
    labels: HttpMetrics, method: str, path: str, operation: str
) -> None:
    assert labels.operation(method, path) == operation


@pytest.fixture
def client(offline_settings: Settings) -> Any:
    return offline_app(replace(offline_settings, metrics_token=TOKEN))


def test_metrics_need_the_scrape_token(client: Any) -> None:
    assert client.get("/metrics").status_code == 401
    member = {"Authorization": f"Bearer {OFFLINE_KEY}"}
    assert client.get("/metrics", headers=member).status_code == 401  # an API key is not it
    wrong = {"Authorization": f"Bearer {TOKEN}x"}
    assert client.get("/metrics", headers=wrong).status_code == 401


def test_without_a_token_nobody_reads_metrics(offline_settings: Settings) -> None:
    client = offline_app(offline_settings)
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


def test_metrics_count_answers_by_operation_and_status(client: Any) -> None:
    client.get("/v1/jobs/not-an-id")
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.text
    assert 'cv_http_requests_total{method="GET",operation="get_job",status="400"}' in text
    assert (
        'cv_http_request_duration_seconds_bucket{le="0.005",method="GET",operation="get_job"}'
        in text
    )
    # RabbitMQ and Redis are down here: the scrape still answers, and says so
    assert "cv_broker_up 0.0" in text
    assert "cv_store_up 0.0" in text


def test_live_gauges_are_read_once_per_cache_period() -> None:
    calls = {"queues": 0, "jobs": 0}

    def queues() -> dict[str, tuple[int, int]]:
        calls["queues"] += 1
        return {"inference": (7, 0), "preprocess": (0, 2)}

    def jobs() -> dict[str, tuple[int, float]]:
        calls["jobs"] += 1
        raise ConnectionError("redis is down")

    live = LiveCollector(queues, jobs, cache_seconds=60)
    first = {m.name: m.samples for m in live.collect()}
    live.collect()
    assert calls == {"queues": 1, "jobs": 1}
    messages = {s.labels["queue"]: s.value for s in first["cv_queue_messages"]}
    consumers = {s.labels["queue"]: s.value for s in first["cv_queue_consumers"]}
    assert messages == {"inference": 7, "preprocess": 0}
    assert consumers == {"inference": 0, "preprocess": 2}
    assert [s.value for s in first["cv_store_up"]] == [0]
    assert [s.value for s in first["cv_broker_up"]] == [1]
