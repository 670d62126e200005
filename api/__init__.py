"""The HTTP side: Connexion routes every operation of swagger/openapi.yaml to api.handlers."""
