"""The spec loads, every operationId resolves, and it agrees with the pipeline catalogue."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import yaml

from api.app import SPEC
from api.options import NON_OPTIONS
from common.steps import ALL_OPTIONS

SPEC_DOC: dict[str, Any] = yaml.safe_load(SPEC.read_text())
OPERATIONS = [
    (path, method, op)
    for path, item in SPEC_DOC["paths"].items()
    for method, op in item.items()
    if method in ("get", "post", "put", "patch", "delete")
]


@pytest.mark.parametrize(("path", "method", "op"), OPERATIONS, ids=lambda v: str(v)[:40])
def test_every_operation_id_resolves_to_a_handler(
    path: str, method: str, op: dict[str, Any]
) -> None:
    module = importlib.import_module(op["x-openapi-router-controller"])
    handler = getattr(module, op["operationId"])
    assert callable(handler), f"{method.upper()} {path}"


def test_operation_ids_are_unique() -> None:
    ids = [op["operationId"] for _, _, op in OPERATIONS]
    assert len(ids) == len(set(ids))


def test_spec_offers_exactly_the_steps_options() -> None:
    schemas = SPEC_DOC["components"]["schemas"]
    fields = set(schemas["JobSubmission"]["properties"]) - NON_OPTIONS
    assert fields == set(ALL_OPTIONS)


SPEC_TYPES = {
    "number": "number",
    "integer": "integer",
    "boolean": "boolean",
    "string": "string",
    "class-list": "string",
}


@pytest.mark.parametrize(
    "option",
    [o for o in ALL_OPTIONS.values() if o.name != "model"],
    ids=lambda o: o.name,
)
def test_each_option_has_the_same_type_bounds_and_choices_in_the_spec(option: Any) -> None:
    field = SPEC_DOC["components"]["schemas"]["JobSubmission"]["properties"][option.name]
    assert field["type"] == SPEC_TYPES[option.type]
    assert field.get("minimum") == option.minimum
    assert field.get("maximum") == option.maximum
    assert field.get("enum") == (list(option.enum) if option.enum else None)


def test_app_serves_spec_and_swagger_ui_at_root(offline_client: Any) -> None:
    spec = offline_client.get("/openapi.json")
    assert spec.status_code == 200
    assert spec.json()["paths"].keys() == SPEC_DOC["paths"].keys()
    root = offline_client.get("/")
    assert root.status_code == 200
    assert "text/html" in root.headers["content-type"]
    assert 'url: "/openapi.json"' in root.text
    for asset in ("/ui/swagger-ui-bundle.js", "/ui/swagger-ui.css"):
        assert offline_client.get(asset).status_code == 200, asset
