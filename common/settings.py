"""One Settings object per process, read from the environment (and `.env`).

Both the API and the workers build it once in their factory and pass it down;
nothing else reads ``os.environ`` for configuration. The shell scripts read what
they need through the same parser: ``python -m common.settings api_bind``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from dotenv import dotenv_values

REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the service. Environment names are ``CV_`` + the field name upper-cased."""

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    redis_url: str = "redis://127.0.0.1:6379/0"
    storage_dir: Path = Path("var/storage")
    models_dir: Path = Path("models")
    # The models and pipelines files (common/catalogue.py).
    models_file: Path = Path("config/models.yaml")
    pipelines_file: Path = Path("config/pipelines.yaml")
    device: str = "auto"
    # Ultralytics' settings directory (YOLO_CONFIG_DIR); it never downloads anything.
    ultralytics_dir: Path = Path("var/ultralytics")
    # Where `make models` downloads the official weights from (a mirror inside your network).
    weights_base_url: str = "https://github.com/ultralytics/assets/releases/download/v8.3.0"
    # CPU threads of PyTorch in each inference process (0: PyTorch's default, one per
    # core). Running N inference processes on one CPU host, give each cores / N: two
    # processes of 2 threads on 2 cores ran a video 7x slower than one (threads spin-wait).
    torch_threads: int = 0
    # Inference processes `make start` runs (celery -c).
    inference_processes: int = 1
    # Where `make start` binds the API.
    api_bind: str = "127.0.0.1:8000"
    max_upload_bytes: int = 25 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    # A batch request (all files, or the zip, together) and its number of images.
    max_batch_bytes: int = 512 * 1024 * 1024
    max_batch_files: int = 1000
    # Members of one batch in flight at once (the rest wait, recorded, and each member that
    # ends releases the next): a big batch never floods the queues ahead of other work.
    # 0: all at once.
    batch_window: int = 16
    # Videos: largest upload, longest duration, frames per chunk (one inference task each),
    # the most bytes of decoded frames one chunk may hold (fewer frames for large sizes),
    # and how many chunks of one video are in flight at once (bounds the disk they use).
    max_video_bytes: int = 2 * 1024 * 1024 * 1024
    max_video_seconds: float = 4 * 3600
    video_chunk_frames: int = 64
    video_chunk_bytes: int = 256 * 1024 * 1024
    video_window_chunks: int = 4
    job_ttl_seconds: int = 7 * 24 * 3600
    step_time_limit_seconds: int = 300
    # Key prefix in Redis; lets several deployments (or the test suite) share one Redis.
    redis_prefix: str = "cv"
    # Seconds a publish may keep retrying a lost broker before the API answers 503.
    publish_timeout_seconds: float = 2.0
    # Seconds a worker's model report stays valid without a refresh.
    worker_heartbeat_seconds: int = 30
    # Seconds between upkeep runs (expired files, stuck jobs, unpublished jobs), done by
    # whichever worker claims the period first.
    upkeep_seconds: float = 60
    # Callbacks: loopback receivers allowed? Only these hosts/CIDRs (comma list; empty: any)?
    callback_allow_loopback: bool = False
    callback_hosts: str = ""
    # After a tenant's signing secret is rotated, callbacks carry signatures of both the new
    # and the old secret for this long, so receivers can switch without losing any.
    signing_secret_grace_seconds: int = 24 * 3600
    # API keys (api/auth.py). Off only when set explicitly; the API logs a warning at start.
    auth: bool = True
    # Seconds the API may answer from its memory of a key (a revoked key fails after this).
    key_cache_seconds: float = 2.0
    # Per-tenant limits unless the admin API sets others (0: no limit): jobs queued or
    # running (a video counts once), submissions per minute (a batch counts once), and
    # bytes stored (uploads and artifacts of jobs not yet expired or deleted).
    quota_active_jobs: int = 1000
    quota_submissions_per_minute: int = 600
    quota_bytes: int = 50 * 1024**3
    # Every variable seen (.env under the environment), for ${NAME} in the config files.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: Path | None = None
    ) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``) over the ``.env`` file.

        Real environment variables win over `.env`, so a deployment can override a
        single value without editing the file. Relative paths are taken from the
        repository root, not the current directory.
        """
        env_file = env_file if env_file is not None else REPO_ROOT / ".env"
        values: dict[str, str] = {}
        if env_file.is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        kwargs: dict[str, object] = {}
        for spec in fields(cls):
            raw = values.get("CV_" + spec.name.upper())
            if spec.name == "environ" or raw is None or raw == "":
                continue
            kwargs[spec.name] = _convert(spec.name, spec.type, raw)
        return cls(**kwargs, environ=values)  # type: ignore[arg-type]

    def resolve(self, path: Path) -> Path:
        """An absolute path: relative ones are taken from the repository root."""
        return path if path.is_absolute() else REPO_ROOT / path


def _convert(name: str, type_name: object, raw: str) -> object:
    try:
        if type_name in ("int", int):
            return int(raw)
        if type_name in ("float", float):
            return float(raw)
        if type_name in ("Path", Path):
            return Path(raw)
        if type_name in ("bool", bool):
            return parse_bool(raw)
    except ValueError as exc:
        raise SettingsError(f"CV_{name.upper()}={raw!r}: {exc}") from exc
    return raw


def parse_bool(text: str) -> bool:
    """``true``/``1``/``yes``/``on`` or ``false``/``0``/``no``/``off``, any case."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, not {text!r}")


def main(argv: list[str]) -> int:
    """Print settings by field name, one per line, for the shell scripts."""
    settings = Settings.from_env()
    names = {spec.name for spec in fields(Settings)} - {"environ"}
    unknown = [name for name in argv if name not in names]
    if not argv or unknown:
        print(f"usage: python -m common.settings NAME...; names: {', '.join(sorted(names))}")
        return 2
    for name in argv:
        print(getattr(settings, name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
