"""The OpenAPI document of this deployment: ``swagger/openapi.yaml`` and its configuration.

The file is written once for every deployment; what it cannot know is what
``config/pipelines.yaml`` and ``config/models.yaml`` configure. ``load_spec`` fills
that in as enums: the pipelines for every ``pipeline`` field (``PipelineName``), the
models for the ``model`` option of the submissions. So Connexion refuses an unknown
name while validating, clients generated from ``/openapi.json`` offer the names, and a
fuzzer sending a schema-valid request sends names that exist.

Every configured pipeline is listed, available or not: availability is what the
workers report and changes while the API runs, so a pipeline whose model no worker
can load (missing weights) stays in the enum and a submission of it answers 409, as
documented. Which model suits which pipeline (its task) is still the handler's check
(400). Response fields naming a pipeline or model (``Job.pipeline``) stay free
strings: a job outlives a pipeline removed from the configuration.

Connexion routes by this document and ``/openapi.json`` serves the same one
(``api.swagger_page``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from api.auth import without_security
from common.catalogue import Catalogue
from common.settings import REPO_ROOT, Settings

SPEC = REPO_ROOT / "swagger" / "openapi.yaml"
# The schema every request field naming a pipeline refers to.
PIPELINE_SCHEMA = "PipelineName"
# The request bodies with a ``model`` option.
SUBMISSIONS = ("OptionFields", "JobSubmission", "BatchSubmission")


def load_spec(settings: Settings, catalogue: Catalogue, path: Path = SPEC) -> dict[str, Any]:
    """The spec at ``path`` with ``catalogue``'s pipelines and models as enums; without
    security requirements when ``settings.auth`` is off (no key is asked for then)."""
    spec: dict[str, Any] = yaml.safe_load(path.read_text())
    schemas = spec["components"]["schemas"]
    # OpenAPI wants at least one value in an enum: with none configured, none is set.
    if catalogue.pipelines:
        names = list(catalogue.pipelines)
        schemas[PIPELINE_SCHEMA]["enum"] = names
        if schemas[PIPELINE_SCHEMA].get("example") not in names:
            schemas[PIPELINE_SCHEMA]["example"] = names[0]
    if catalogue.models:
        for name in SUBMISSIONS:
            schemas[name]["properties"]["model"]["enum"] = list(catalogue.models)
    if not settings.auth:
        spec = without_security(spec)
    return spec
