"""Swagger UI at the root URL.

Connexion's own ``swagger_ui_path="/"`` breaks on the first request (connexion
issue 1851), so the UI stays at ``/ui/`` (assets included) and ``/`` serves the
same page pointing at those assets and at ``/openapi.json``. This is the one
route not in the spec.
"""

from __future__ import annotations

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
