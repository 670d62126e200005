"""Swagger UI at the root URL, and the spec as written at ``/openapi.json``.

Connexion's own ``swagger_ui_path="/"`` breaks on the first request (connexion
issue 1851), so the UI stays at ``/ui/`` (assets included) and ``/`` serves the
same page pointing at those assets and at ``/openapi.json``.

Connexion would serve the spec with every ``$ref`` inlined, which makes client
generators invent a model per operation (``CreateJobResponse202`` instead of
``Job``); ``/openapi.json`` serves it as written instead. These two are the only
routes not in the spec.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import yaml

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>CV job service - API</title>
  <link rel="stylesheet" href="/ui/swagger-ui.css">
  <link rel="icon" type="image/png" href="/ui/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/ui/swagger-ui-bundle.js"></script>
  <script src="/ui/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout"
    });
  </script>
</body>
</html>
"""


def index() -> tuple[str, int, dict[str, str]]:
    return PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}


@cache
def _spec_json(path: Path) -> str:
    return json.dumps(yaml.safe_load(path.read_text()))


def spec_view(path: Path) -> tuple[str, int, dict[str, str]]:
    return _spec_json(path), 200, {"Content-Type": "application/json"}
