"""The collaborators a request needs, built once per process by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app

from api.quotas import Quotas
from common.catalogue import Catalogue
from common.jobstore import JobStore
from common.settings import Settings
from common.storage import Storage

EXTENSION_KEY = "cvjobs"


@dataclass
class Services:
    settings: Settings
    catalogue: Catalogue
    store: JobStore
    storage: Storage
    celery: Celery
    quotas: Quotas


def services() -> Services:
    """The current app's services (inside a request)."""
    found: Services = current_app.extensions[EXTENSION_KEY]
    return found
