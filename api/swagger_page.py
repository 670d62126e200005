"""Swagger UI at the root URL, and the spec as written at ``/openapi.json``.

Connexion's own ``swagger_ui_path="/"`` breaks on the first request (connexion
issue 1851), so the UI stays at ``/ui/`` (assets included) and ``/`` serves the
same page pointing at those assets and at ``/openapi.json``.

Connexion would serve the spec with every ``$ref`` inlined, which makes client
generators invent a model per operation (``CreateJobResponse202`` instead of
``Job``); ``/openapi.json`` serves it as written instead, with what this
deployment adds (``api.spec.load_spec``: the configured pipelines and models), so clients see
the document the API validates by. These two are the only routes not in the spec.
"""

from __future__ import annotations

import json
from pathlib import Path

from flask import current_app

from api.services import services
from api.spec import load_spec

# Flask extension key of the served document, built on the first request for it.
SPEC_JSON_KEY = "cvjobs.openapi_json"

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


def spec_view(path: Path) -> tuple[str, int, dict[str, str]]:
    """The spec at ``path`` as this app routes by it (once per app: the configuration
    is read at start-up, so the document cannot change while the app runs)."""
    document = current_app.extensions.get(SPEC_JSON_KEY)
    if document is None:
        svc = services()
        document = json.dumps(load_spec(svc.settings, svc.catalogue, path))
        current_app.extensions[SPEC_JSON_KEY] = document
    return document, 200, {"Content-Type": "application/json"}
