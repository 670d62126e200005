"""Handlers of /v1/pipelines and /v1/models: the configured catalogue and what workers hold."""

from __future__ import annotations

from typing import Any

from api.jobs import model_status
from api.services import services

JSON = {"Content-Type": "application/json"}


def list_pipelines() -> tuple[dict[str, Any], int, dict[str, str]]:
    svc = services()
    catalogue = []
    for pipeline in svc.catalogue.pipelines.values():
        available, reason, _ = model_status(svc, pipeline.model)
        entry = pipeline.describe()
        entry.update(
            available=available,
            unavailable_reason=reason,
            models=svc.catalogue.models_for(str(pipeline.inference.model_task)),
        )
        catalogue.append(entry)
    return {"pipelines": catalogue}, 200, JSON


def list_models() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Each configured model, with what the inference workers reported about it."""
    svc = services()
    reports = svc.store.workers()
    models = []
    for model in svc.catalogue.models.values():
        available, reason, _ = model_status(svc, model.name)
        loaded: dict[str, Any] = next(
            (
                r["models"][model.name]
                for r in reports
                if r.get("models", {}).get(model.name, {}).get("available")
            ),
            {},
        )
        models.append(
            {
                **model.describe(),
                "available": available,
                "unavailable_reason": reason,
                "weights_sha256": loaded.get("weights_sha256"),
                "weights_bytes": loaded.get("weights_bytes"),
                "version": loaded.get("version"),
                "classes": loaded.get("names"),
                "workers": [
                    r["name"]
                    for r in reports
                    if r.get("models", {}).get(model.name, {}).get("available")
                ],
            }
        )
    return {"models": models}, 200, JSON
