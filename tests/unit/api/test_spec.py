"""The deployment's spec: configured pipelines and models as enums, routed and served alike."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.services import EXTENSION_KEY
from api.spec import SPEC, load_spec
from common.catalogue import Catalogue
from common.settings import Settings
from tests.support.catalogue import CATALOGUE

SETTINGS = Settings.from_env({}, env_file=Path("/nonexistent/.env"))


def schemas(spec: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = spec["components"]["schemas"]
    return found


def test_pipelines_and_models_are_the_configured_ones() -> None:
    spec = schemas(load_spec(SETTINGS, CATALOGUE))
    assert spec["PipelineName"]["enum"] == list(CATALOGUE.pipelines)
    for body in ("JobSubmission", "BatchSubmission"):
        assert spec[body]["properties"]["pipeline"] == {"$ref": "#/components/schemas/PipelineName"}
        assert spec[body]["properties"]["model"]["enum"] == list(CATALOGUE.models)
    # What a job reports stays a free string: a job outlives a pipeline removed since.
    assert spec["Job"]["properties"]["pipeline"] == {"type": "string"}


def test_the_example_names_a_configured_pipeline() -> None:
    only = Catalogue(CATALOGUE.models, {"redact": CATALOGUE.pipelines["redact"]})
    pipeline = schemas(load_spec(SETTINGS, only))["PipelineName"]
    assert pipeline["enum"] == ["redact"] and pipeline["example"] == "redact"


def test_no_configuration_no_enum() -> None:
    spec = schemas(load_spec(SETTINGS, Catalogue({}, {})))
    assert "enum" not in spec["PipelineName"]
    assert "enum" not in spec["JobSubmission"]["properties"]["model"]


@pytest.mark.parametrize("auth", [True, False])
def test_security_as_configured(auth: bool) -> None:
    spec = load_spec(replace(SETTINGS, auth=auth), CATALOGUE)
    written = yaml.safe_load(SPEC.read_text())
    assert spec["security"] == (written["security"] if auth else [])
    assert bool(spec["paths"]["/v1/jobs"]["post"]["security"]) is auth


def test_openapi_json_serves_the_deployments_spec(offline_client: Any) -> None:
    served = offline_client.get("/openapi.json")
    assert served.status_code == 200
    services = offline_client.app.app.extensions[EXTENSION_KEY]  # connexion app -> Flask's
    assert served.json() == load_spec(services.settings, services.catalogue)
    assert served.json()["components"]["schemas"]["PipelineName"]["enum"]
