"""What ``GET /v1/pipelines`` and ``GET /v1/models`` show: the catalogue and what workers hold."""

from __future__ import annotations

from typing import Any

from api.services import Services


def model_status(svc: Services, model: str) -> tuple[bool, str | None, bool]:
    """(available on some worker, why not, whether any worker reported the model)."""
    return _status(svc.store.workers.alive(), model)


def _status(reports: list[dict[str, Any]], model: str) -> tuple[bool, str | None, bool]:
    reasons = []
    for worker in reports:
        status = (worker.get("models") or {}).get(model)
        if status is None:
            continue
        if status.get("available"):
            return True, None, True
        reasons.append(status.get("reason") or "unavailable")
    if reasons:
        return False, reasons[0], True
    return False, "no inference worker is online; jobs wait in the queue until one starts", False


def pipelines(svc: Services) -> list[dict[str, Any]]:
    """Each pipeline as the catalogue describes it, with its model's availability."""
    reports = svc.store.workers.alive()
    listing = []
    for pipeline in svc.catalogue.pipelines.values():
        available, reason, _ = _status(reports, pipeline.model)
        entry = pipeline.describe()
        entry.update(
            available=available,
            unavailable_reason=reason,
            models=svc.catalogue.models_for(str(pipeline.inference.model_task)),
        )
        listing.append(entry)
    return listing


def models(svc: Services) -> list[dict[str, Any]]:
    """Each configured model, with what the inference workers reported about it."""
    reports = svc.store.workers.alive()
    listing = []
    for model in svc.catalogue.models.values():
        available, reason, _ = _status(reports, model.name)
        holders = [r for r in reports if r.get("models", {}).get(model.name, {}).get("available")]
        loaded: dict[str, Any] = holders[0]["models"][model.name] if holders else {}
        listing.append(
            {
                **model.describe(),
                "available": available,
                "unavailable_reason": reason,
                "weights_sha256": loaded.get("weights_sha256"),
                "weights_bytes": loaded.get("weights_bytes"),
                "version": loaded.get("version"),
                "classes": loaded.get("names"),
                "workers": [r["name"] for r in holders],
            }
        )
    return listing
