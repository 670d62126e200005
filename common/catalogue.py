"""Models and pipelines as configuration: ``config/models.yaml`` and ``config/pipelines.yaml``.

The models file declares every model a worker may load (name, task, weights,
format, input size, default thresholds, class-name override, device, batch
size). The pipelines file declares every pipeline as an ordered list of
registered steps (``common.steps.STEPS``), a default model and option
defaults. Adding a pipeline that reuses existing steps is an edit of that file
and an API restart; workers need no change.

Values may name environment variables, ``${NAME}`` or ``${NAME:-default}``,
so one file serves several deployments. A malformed file stops the process at
start-up with a message naming the file and the entry.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from common.contract import MODEL_TASKS, STAGES
from common.settings import Settings
from common.steps import STEPS, VIDEO_STEP, Option, StepDef

FORMATS = {".pt": "pt", ".onnx": "onnx", ".engine": "engine"}
# A model that costs nothing and finds nothing, for benchmarks/ceiling.py only (the most
# the queues can feed a GPU); never in config/models.yaml. It needs no weights.
NULL_FORMAT = "null"
# The longest an inference step waits for a batch to fill (celery_worker.intake).
MAX_WAIT_MS = 1000
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class CatalogueError(ValueError):
    """A models or pipelines file is malformed."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    task: str
    weights: Path | None
    format: str
    input_size: int = 640
    defaults: dict[str, Any] = field(default_factory=dict)
    classes: dict[int, str] | None = None
    device: str | None = None
    max_batch: int = 1
    # How long the inference step waits for more queued images of this model to fill a
    # batch of max_batch (0: it takes only those already queued).
    max_wait_ms: float = 0.0

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "weights": str(self.weights) if self.weights else None,
            "format": self.format,
            "input_size": self.input_size,
            "defaults": self.defaults,
            "device": self.device,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_ms,
        }


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    description: str
    model: str
    steps: tuple[StepDef, ...]
    options: tuple[Option, ...]

    @property
    def inference(self) -> StepDef:
        return next(s for s in self.steps if s.model_task is not None)

    def defaults(self) -> dict[str, Any]:
        return {option.name: option.default for option in self.options}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "steps": [
                {"name": s.stage, "step": s.name, "task": s.task, "queue": s.queue}
                for s in self.steps
            ],
            "options": [
                {
                    "name": o.name,
                    "type": o.type,
                    "description": o.description,
                    "default": o.default,
                    "minimum": o.minimum,
                    "maximum": o.maximum,
                    "enum": list(o.enum) if o.enum else None,
                    "media": o.media,
                }
                for o in self.options
            ],
        }


@dataclass(frozen=True)
class Catalogue:
    models: dict[str, ModelConfig]
    pipelines: dict[str, PipelineConfig]

    def models_for(self, task: str) -> list[str]:
        return [m.name for m in self.models.values() if m.task == task]


def expand(value: Any, environ: Mapping[str, str]) -> Any:
    """``${NAME}`` / ``${NAME:-default}`` in strings, recursively."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: environ.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [expand(v, environ) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, environ) for k, v in value.items()}
    return value


def _read(path: Path, key: str, environ: Mapping[str, str]) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogueError(f"{path}: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get(key), dict):
        raise CatalogueError(f"{path}: expected a mapping under '{key}:'")
    entries: dict[str, Any] = expand(document[key], environ)
    return entries


def load_models(
    path: Path, settings: Settings, environ: Mapping[str, str]
) -> dict[str, ModelConfig]:
    models = {}
    for name, entry in _read(path, "models", environ).items():
        where = f"{path}: model {name!r}"
        if not _NAME.match(str(name)) or not isinstance(entry, dict):
            raise CatalogueError(f"{where}: a lower-case name and a mapping are needed")
        task = entry.get("task")
        if task not in MODEL_TASKS:
            raise CatalogueError(f"{where}: task must be one of {', '.join(MODEL_TASKS)}")
        weights = settings.resolve(Path(entry["weights"])) if entry.get("weights") else None
        fmt = entry.get("format") or (FORMATS.get(weights.suffix, "") if weights else "bundled")
        if fmt == NULL_FORMAT:
            if task != "detect" or weights is not None:
                raise CatalogueError(f"{where}: a null model is a detect model with no weights")
        elif weights is None and task != "faces":
            raise CatalogueError(f"{where}: a weights path is needed")
        elif weights is not None and fmt not in FORMATS.values():
            raise CatalogueError(f"{where}: format must be pt, onnx or engine")
        classes = entry.get("classes")
        if isinstance(classes, list):
            classes = dict(enumerate(classes))
        try:
            models[name] = ModelConfig(
                name=name,
                task=task,
                weights=weights,
                format=fmt,
                input_size=int(entry.get("input_size", 640)),
                defaults=dict(entry.get("defaults") or {}),
                classes={int(k): str(v) for k, v in classes.items()} if classes else None,
                device=entry.get("device"),
                max_batch=int(entry.get("max_batch", 1)),
                max_wait_ms=float(entry.get("max_wait_ms", 0)),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise CatalogueError(f"{where}: {exc}") from exc
        if not 1 <= models[name].max_batch <= 1024:
            raise CatalogueError(f"{where}: max_batch must be 1 to 1024")
        if not 0 <= models[name].max_wait_ms <= MAX_WAIT_MS:
            raise CatalogueError(f"{where}: max_wait_ms must be 0 to {MAX_WAIT_MS}")
    return models


def load_pipelines(
    path: Path, models: dict[str, ModelConfig], environ: Mapping[str, str]
) -> dict[str, PipelineConfig]:
    pipelines = {}
    for name, entry in _read(path, "pipelines", environ).items():
        where = f"{path}: pipeline {name!r}"
        if not _NAME.match(str(name)) or not isinstance(entry, dict):
            raise CatalogueError(f"{where}: a lower-case name and a mapping are needed")
        unknown = [s for s in entry.get("steps") or [] if s not in STEPS]
        if unknown:
            raise CatalogueError(
                f"{where}: unknown steps {unknown}; registered: {', '.join(STEPS)}"
            )
        if VIDEO_STEP.name in (entry.get("steps") or []):
            raise CatalogueError(
                f"{where}: {VIDEO_STEP.name} is implied for videos; list only preprocess.image"
            )
        steps = tuple(STEPS[s] for s in entry.get("steps") or [])
        if tuple(s.stage for s in steps) != STAGES:
            raise CatalogueError(f"{where}: steps must be one preprocess, inference, postprocess")
        model = models.get(str(entry.get("model")))
        task = steps[1].model_task
        if model is None or model.task != task:
            raise CatalogueError(
                f"{where}: model must name a {task} model of the models file "
                f"({', '.join(m for m in models if models[m].task == task) or 'none'})"
            )
        options = _options(steps, model, dict(entry.get("defaults") or {}), where)
        pipelines[name] = PipelineConfig(
            name=name,
            description=str(entry.get("description") or name),
            model=model.name,
            steps=steps,
            options=options,
        )
    return pipelines


def _options(
    steps: tuple[StepDef, ...], model: ModelConfig, defaults: dict[str, Any], where: str
) -> tuple[Option, ...]:
    """The steps' options, defaults from the model, then from the pipeline entry."""
    merged: dict[str, Option] = {}
    for step in (*steps, VIDEO_STEP):
        for option in step.options:
            merged[option.name] = option
    overrides = {"model": model.name, "image_size": model.input_size, **model.defaults}
    unknown = sorted(set(defaults) - set(merged))
    if unknown:
        raise CatalogueError(f"{where}: defaults for options its steps do not read: {unknown}")
    overrides.update(defaults)
    return tuple(
        replace(o, default=overrides[o.name]) if o.name in overrides else o for o in merged.values()
    )


def load_catalogue(settings: Settings) -> Catalogue:
    """Both files, with ${NAME} taken from the settings' variables (else the environment)."""
    environ = settings.environ or os.environ
    models = load_models(settings.resolve(settings.models_file), settings, environ)
    pipelines = load_pipelines(settings.resolve(settings.pipelines_file), models, environ)
    return Catalogue(models, pipelines)
