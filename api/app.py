"""The app factory: ``create_app()`` is what gunicorn serves (``api.app:create_app()``)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import connexion
import redis
from connexion.exceptions import Unauthorized
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.middleware import MiddlewarePosition
from kombu.exceptions import OperationalError
from starlette.requests import ClientDisconnect

from api import metrics, swagger_page, uploads
from api.allow import AllowHeader
from api.auth import (
    CHALLENGE,
    AuthContext,
    Authenticator,
    KeyLookup,
    operation_roles,
    without_security,
)
from api.errors import PROBLEM_JSON, ApiError, BadRequest, ServiceUnavailable
from api.events import EventEndpoints
from api.hosts import HostAllowlist
from api.limits import BodySizeLimit
from api.paths import PathCharacters
from api.quotas import Quotas
from api.services import EXTENSION_KEY, Services
from api.spec import load_spec
from common.catalogue import load_catalogue
from common.celery_app import make_celery
from common.jobstore import JobStore
from common.settings import REPO_ROOT, Settings
from common.storage import Storage

SPEC = REPO_ROOT / "swagger" / "openapi.yaml"
log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    services: Services | None = None,
    keys: KeyLookup | None = None,
) -> connexion.FlaskApp:
    """Build the API. Tests pass their own ``settings`` (or whole ``services``), and where
    Redis is down on purpose, a table of ``keys``."""
    if settings is None:
        # The server's own configuration (gunicorn): refuse guessable passwords.
        settings = Settings.from_env()
        settings.require_strong_secrets()
        metrics.serve_metrics_of_processes(settings)
    services = services or build_services(settings)

    spec = load_spec(settings, services.catalogue)
    if not settings.auth:
        log.warning(
            "CV_AUTH=false: API keys are not checked; every request acts as an admin of the "
            "default tenant. Never run this where anyone else can reach the API."
        )
        spec = without_security(spec)
    roles = operation_roles(spec)
    keys = keys or services.store.apikeys
    authenticator = Authenticator(keys, roles, settings.key_cache_seconds)

    app = connexion.FlaskApp(__name__, specification_dir=str(SPEC.parent))
    validator_map = uploads.install(app, services.storage.tmp_dir)
    app.add_api(
        spec,
        strict_validation=True,
        validate_responses=True,
        validator_map=validator_map,
        swagger_ui_options=connexion.options.SwaggerUIOptions(
            swagger_ui_path="/ui", serve_spec=False
        ),
    )
    app.app.extensions[EXTENSION_KEY] = services
    app.app.add_url_rule("/", "swagger_ui_root", swagger_page.index)
    app.app.add_url_rule("/openapi.json", "openapi_json", lambda: swagger_page.spec_view(SPEC))
    app.add_error_handler(ApiError, _problem)
    app.add_error_handler(Unauthorized, _unauthorized)
    app.add_error_handler(redis.RedisError, _redis_down)
    app.add_error_handler(OperationalError, _broker_down)
    app.add_error_handler(ClientDisconnect, _client_gone)
    metrics.install(app, settings, services.store, spec)  # outermost: counts every answer
    app.add_middleware(PathCharacters, position=MiddlewarePosition.BEFORE_EXCEPTION)
    app.add_middleware(
        HostAllowlist,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        allowed_hosts=settings.allowed_hosts,
    )
    app.add_middleware(
        BodySizeLimit,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        max_upload_bytes=settings.max_upload_bytes,
        max_batch_bytes=settings.max_batch_bytes,
        max_video_bytes=settings.max_video_bytes,
        body_idle_seconds=settings.body_idle_seconds,
        max_concurrent=settings.max_concurrent_uploads,
        body_min_rate=settings.body_min_rate,
    )
    app.add_middleware(
        AuthContext, position=MiddlewarePosition.BEFORE_SECURITY, authenticator=authenticator
    )
    app.add_middleware(AllowHeader, position=MiddlewarePosition.BEFORE_EXCEPTION, spec=spec)
    app.add_middleware(
        EventEndpoints,
        position=MiddlewarePosition.BEFORE_CONTEXT,
        services=services,
        authenticator=authenticator,
        auth=settings.auth,
    )
    _warm_broker(services)
    return app


def build_services(settings: Settings) -> Services:
    storage_dir = settings.resolve(settings.storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore.from_settings(settings)
    return Services(
        settings=settings,
        catalogue=load_catalogue(settings),
        store=store,
        storage=Storage(Path(storage_dir)),
        celery=make_celery(settings, name="cvjobs-api"),
        quotas=Quotas(settings, store),
    )


def _problem(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ApiError)
    return ConnexionResponse(
        status_code=exc.status, content_type=PROBLEM_JSON, body=exc.body(), headers=exc.headers()
    )


def _unauthorized(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, Unauthorized)
    body = {"type": "about:blank", "title": "Unauthorized", "status": 401, "detail": exc.detail}
    return ConnexionResponse(
        status_code=401,
        content_type=PROBLEM_JSON,
        body=json.dumps(body).encode(),
        headers={"WWW-Authenticate": CHALLENGE},
    )


def _redis_down(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    # The exception names hosts and ports: the log gets it, the client does not.
    log.warning("Redis error: %s", exc)
    return _problem(request, ServiceUnavailable("the job store (Redis) does not answer"))


def _broker_down(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    log.warning("broker error: %s", exc)
    return _problem(request, ServiceUnavailable("the message broker does not answer"))


def _client_gone(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    # Nobody reads this answer; it only ends the request without an error traceback.
    log.info("client disconnected during the upload to %s", request.url.path)
    return _problem(request, BadRequest("the client disconnected before the body was complete"))


def _warm_broker(services: Services) -> None:
    """Open the publish connection in the background: the first one costs ~200 ms."""

    def warm() -> None:
        try:
            with services.celery.producer_or_acquire() as producer:
                producer.connection.ensure_connection(max_retries=1)
        except (OperationalError, OSError) as exc:
            log.warning("broker not reachable at start-up: %s", exc)

    threading.Thread(target=warm, name="broker-warm-up", daemon=True).start()
