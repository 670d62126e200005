"""Handler of /v1/pipelines."""

from __future__ import annotations

from typing import Any

from api.jobs import model_status
from api.services import services
from common.contract import PIPELINES


def list_pipelines() -> tuple[dict[str, Any], int, dict[str, str]]:
    svc = services()
    catalogue = []
    for pipeline in PIPELINES.values():
        available, reason, _ = model_status(svc, pipeline.model)
        entry = pipeline.as_dict()
        entry["options"] = [
            {**o, "enum": list(o["enum"]) if o["enum"] else None} for o in entry["options"]
        ]
        entry.update(available=available, unavailable_reason=reason)
        catalogue.append(entry)
    return {"pipelines": catalogue}, 200, {"Content-Type": "application/json"}
