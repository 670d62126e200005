"""Handlers of /v1/batches."""

from __future__ import annotations

from typing import Any

from flask import request, send_file

from api import batches
from api.auth import caller
from api.services import services

JSON = {"Content-Type": "application/json"}


def create_batch(body: dict[str, Any], **_: Any) -> tuple[Any, int, dict[str, str]]:
    # Multipart files come from Flask: connexion hands over only one per field name.
    files = [(f.filename or "upload", f.stream) for f in request.files.getlist("files")]
    archive = request.files.get("archive")
    fields = {k: v for k, v in body.items() if k not in ("files", "archive")}
    svc = services()
    batch = batches.submit(svc, caller(), files, archive.stream if archive else None, fields)
    location = batches.batch_url(batch["id"])
    return batches.view(svc, batch), 202, {**JSON, "Location": location}


def get_batch(batch_id: str) -> tuple[Any, int, dict[str, str]]:
    svc = services()
    return batches.view(svc, batches.get(svc, caller(), batch_id)), 200, JSON


def download_batch(batch_id: str) -> Any:
    bundle = batches.archive(services(), caller(), batch_id)
    return send_file(bundle, mimetype="application/zip", download_name=f"batch-{batch_id}.zip")
