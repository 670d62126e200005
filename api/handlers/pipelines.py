"""Handlers of /v1/pipelines and /v1/models: the configured catalogue and what workers hold."""

from __future__ import annotations

from typing import Any

from api import pipelines
from api.services import services

JSON = {"Content-Type": "application/json"}


def list_pipelines() -> tuple[dict[str, Any], int, dict[str, str]]:
    return {"pipelines": pipelines.pipelines(services())}, 200, JSON


def list_models() -> tuple[dict[str, Any], int, dict[str, str]]:
    return {"models": pipelines.models(services())}, 200, JSON
