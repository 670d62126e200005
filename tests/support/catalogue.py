"""The repository's own models and pipelines files, loaded as a process would."""

from __future__ import annotations

from pathlib import Path

from common.catalogue import Catalogue, load_catalogue
from common.settings import Settings

NO_ENV_FILE = Path("/nonexistent/.env")
CATALOGUE: Catalogue = load_catalogue(Settings.from_env({"CV_UNUSED": ""}, env_file=NO_ENV_FILE))
PIPELINES = CATALOGUE.pipelines
# The pipelines config/pipelines.yaml ships.
SHIPPED_PIPELINES = {
    "detect",
    "segment",
    "blur-faces",
    "detect-crops",
    "redact",
    "sam",
    "detect-sam",
}
