"""One Settings object per process, read from the environment (and `.env`).

Both the API and the workers build it once in their factory and pass it down;
nothing else reads ``os.environ`` for configuration. The shell scripts read what
they need through the same parser: ``python -m common.settings api_bind``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from dotenv import dotenv_values

from common.secrets import WeakSecret, require_strong, with_password

REPO_ROOT = Path(__file__).resolve().parent.parent
# Where the SAM family's mask decoder may run (CV_SAM_DECODER_QUEUE).
DECODER_QUEUES = ("inference", "postprocess")


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the service. Environment names are ``CV_`` + the field name upper-cased."""

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Files holding the broker's and Redis' passwords (put into the URLs above when these
    # carry none): `make start` and docker compose generate them on first start.
    broker_password_file: str = ""
    redis_password_file: str = ""
    # "development" lets the service start with a known default password (guest, cvjobs,
    # ...) or a Redis without one; anything else refuses to (common/secrets.py).
    env: str = "production"
    # Host names the API answers to (Host header; comma list, "*" for any): a DNS-rebinding
    # page cannot reach an API on loopback by naming its own host.
    allowed_hosts: str = "localhost,127.0.0.1,[::1]"
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
    # Uploads are refused (507) while the storage volume has less free space than this.
    storage_min_free_bytes: int = 1024**3
    # Slow clients: seconds to send the request head, longest pause while sending a body,
    # the slowest average pace of a body (bytes a second, judged once it has run for
    # body_idle_seconds; 0: any), and requests with a body in flight at once in one API
    # process (503 beyond).
    header_timeout_seconds: float = 10
    body_idle_seconds: float = 15
    body_min_rate: int = 4096
    max_concurrent_uploads: int = 256
    # Connections one API process holds at once (uvicorn answers 503 beyond).
    max_connections: int = 1000
    # Media probe (videos) in a child process: CPU seconds, address space, wall clock.
    probe_cpu_seconds: int = 10
    probe_memory_bytes: int = 1024**3
    probe_timeout_seconds: float = 20
    max_image_pixels: int = 40_000_000
    # A batch request (all files, or the zip, together) and its number of images.
    max_batch_bytes: int = 512 * 1024 * 1024
    max_batch_files: int = 1000
    # A zip batch: total uncompressed bytes of its members, and the largest compression
    # ratio of one member (uncompressed / compressed; a zip bomb is far above).
    max_batch_uncompressed_bytes: int = 2 * 1024**3
    max_member_ratio: int = 100
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
    # Heavy options: crop files one job writes (of its most confident detections or tracks;
    # the rest are noted and the job succeeds), and the largest result document (JSON
    # bytes) a job may store in Redis (a job past it fails with kind "input").
    max_crops: int = 100
    max_result_bytes: int = 16 * 1024 * 1024
    step_time_limit_seconds: int = 300
    # Key prefix in Redis; lets several deployments (or the test suite) share one Redis.
    redis_prefix: str = "cv"
    # Seconds a publish may keep retrying a lost broker before the API answers 503.
    publish_timeout_seconds: float = 2.0
    # Seconds a worker's model report stays valid without a refresh.
    worker_heartbeat_seconds: int = 30
    # Seconds a new pool process may take to start (it loads every model first) before
    # its worker kills it and forks another; Celery's own default, 4 s, is shorter than
    # one model load on a busy CPU host, which loops forever after a pool process dies.
    worker_process_start_seconds: float = 300
    # Seconds between upkeep runs (expired files, stuck jobs, unpublished jobs), done by
    # whichever worker claims the period first.
    upkeep_seconds: float = 60
    # Callbacks: loopback receivers allowed? Only these hosts/CIDRs (comma list; empty: any)?
    # Private, link-local and loopback receivers are refused unless CV_CALLBACK_HOSTS names
    # them; only CV_CALLBACK_PORTS are allowed.
    callback_allow_loopback: bool = False
    callback_hosts: str = ""
    callback_ports: str = "80,443"
    # After a tenant's signing secret is rotated, callbacks carry signatures of both the new
    # and the old secret for this long, so receivers can switch without losing any.
    signing_secret_grace_seconds: int = 24 * 3600
    # API keys (api/auth.py). Off only when set explicitly; the API logs a warning at start.
    auth: bool = True
    # Seconds the API may answer from its memory of a key (a revoked key fails after this).
    key_cache_seconds: float = 2.0
    # Live events (GET /v1/events, /v1/ws; common/events.py): how long a tenant's events
    # are kept for clients reconnecting with Last-Event-ID, and at most how many; the
    # heartbeat comment's period (proxies cut streams idle for 60 s and more); how long a
    # WebSocket may take to send its key.
    events_retention_seconds: int = 3600
    events_max_per_tenant: int = 10_000
    events_heartbeat_seconds: float = 15
    events_auth_seconds: float = 5
    # Milliseconds an API process waits after a read of events before the next one, so
    # that a burst reaches each stream in one write: with many subscribers, less CPU per
    # event (POST latency) for at most this much more delivery latency (0: none).
    events_gather_ms: float = 0
    # Per-tenant limits unless the admin API sets others (0: no limit): jobs queued or
    # running (a video counts once), submissions per minute (a batch counts once), and
    # bytes stored (uploads and artifacts of jobs not yet expired or deleted).
    quota_active_jobs: int = 1000
    quota_submissions_per_minute: int = 600
    quota_bytes: int = 50 * 1024**3
    # Interactive segmentation (POST /v1/images, celery_worker/embeddings.py): the SAM
    # model an image is embedded with unless the upload names another; how long an image
    # is kept after its last use; the embeddings each tenant keeps (bytes, float16; the
    # least recently used go first past it) and how long one is kept after its last use;
    # how long POST /v1/images/{id}/segment waits for its masks before it answers 202 with
    # a job to follow; the queue that runs the mask decoder ("inference": beside the
    # encoder, on the GPU worker; "postprocess": the CPU workers, leaving the GPU to
    # encoders); embeddings each worker process keeps decoded in memory.
    sam_model: str = "mobile-sam"
    image_ttl_seconds: int = 24 * 3600
    embedding_cache_bytes: int = 2 * 1024**3
    embedding_ttl_seconds: int = 24 * 3600
    segment_wait_seconds: float = 10.0
    # Segment requests one API process lets wait at once (each holds a thread); past it,
    # a request answers 202 with its job at once.
    segment_max_waiting: int = 8
    sam_decoder_queue: str = "inference"
    sam_embeddings_in_memory: int = 8
    # Metrics (common/metrics.py). GET /metrics needs `Authorization: Bearer <token>` with
    # this token (or the file's; empty: /metrics answers 401 to everyone): a scrape-only
    # secret, so Prometheus never holds an API key.
    metrics_token: str = ""
    metrics_token_file: str = ""
    # Where each service's processes keep their samples (prometheus-client's multiprocess
    # files; one folder per running service, removed when it is gone). A tmpfs suits it,
    # and read-only containers have one at /tmp.
    metrics_dir: Path = Path("/tmp/cvjobs-metrics")
    # Each worker service's exporter: base port + the queue's place in preprocess,
    # inference, postprocess, notify (9101..9104); 0: no exporter. Loopback by default.
    worker_metrics_port: int = 9101
    worker_metrics_host: str = "127.0.0.1"
    # Tenants one process labels by name in the job counters; the rest are "other".
    metrics_tenant_limit: int = 50
    # Seconds the API keeps the queue depths and job counts it read for a scrape.
    metrics_cache_seconds: float = 5.0
    # Job events as JSON lines (common/logs.py): a file every process appends to, "-" for
    # stderr, empty for the ordinary text logs.
    event_log: str = "var/log/events.jsonl"
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
        settings = cls(**kwargs, environ=values)  # type: ignore[arg-type]
        if not 0 <= settings.segment_wait_seconds <= 60:
            raise SettingsError(
                f"CV_SEGMENT_WAIT_SECONDS={settings.segment_wait_seconds}: 0 to 60 (a request "
                "that waits longer holds its thread; past the bound it answers 202)"
            )
        if settings.sam_decoder_queue not in DECODER_QUEUES:
            raise SettingsError(
                f"CV_SAM_DECODER_QUEUE={settings.sam_decoder_queue!r}: choose one of "
                + ", ".join(DECODER_QUEUES)
            )
        return settings.with_password_files()

    def with_password_files(self) -> Settings:
        """These settings with the passwords of the password files put into the URLs."""
        try:
            return replace(
                self,
                broker_url=with_password(self.broker_url, self._file(self.broker_password_file)),
                redis_url=with_password(self.redis_url, self._file(self.redis_password_file)),
            )
        except WeakSecret as exc:
            raise SettingsError(str(exc)) from exc

    def require_strong_secrets(self) -> None:
        """Refuse known default passwords outside ``CV_ENV=development`` (the entry points
        of the API and the workers call this)."""
        try:
            require_strong(self.env, self.broker_url, self.redis_url)
        except WeakSecret as exc:
            raise SettingsError(str(exc)) from exc

    def scrape_token(self) -> str:
        """The token GET /metrics wants: ``metrics_token``, else the first line of its file."""
        if self.metrics_token or not self.metrics_token_file:
            return self.metrics_token
        try:
            return self.resolve(Path(self.metrics_token_file)).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"CV_METRICS_TOKEN_FILE: {exc}") from exc

    def _file(self, name: str) -> Path | None:
        return self.resolve(Path(name)) if name else None

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
