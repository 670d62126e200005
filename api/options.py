"""Checks a submission's options against its pipeline and fills in the defaults.

The spec already checks each field's type and bounds; what it cannot say is
which options belong to which pipeline (configuration, not code), and which
models a pipeline may run, so that is done here.
"""

from __future__ import annotations

from typing import Any

from api.errors import BadRequest
from common.catalogue import Catalogue, PipelineConfig
from common.prompts import PromptError, from_options
from common.settings import parse_bool
from common.steps import Option

# Multipart fields that are not options.
NON_OPTIONS = frozenset({"file", "pipeline", "callback_url", "priority"})


def get_pipeline(catalogue: Catalogue, name: str) -> PipelineConfig:
    try:
        return catalogue.pipelines[name]
    except KeyError:
        known = ", ".join(sorted(catalogue.pipelines))
        raise BadRequest(f"unknown pipeline {name!r}; choose one of {known}") from None


def resolve_options(
    catalogue: Catalogue, pipeline: PipelineConfig, fields: dict[str, Any]
) -> dict[str, Any]:
    """The pipeline's defaults overridden by ``fields``; refuses options of other pipelines."""
    known = {option.name: option for option in pipeline.options}
    given = {k: v for k, v in fields.items() if k not in NON_OPTIONS and v is not None}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise BadRequest(
            f"pipeline {pipeline.name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are {', '.join(sorted(known)) or 'none'}"
        )
    options = {**pipeline.defaults(), **given}
    for name, value in options.items():
        if value is not None and name not in ("model", "detector"):
            options[name] = _coerce(known[name], value)
    task = pipeline.inference.model_task
    model = catalogue.models.get(str(options["model"]))
    if model is None or model.task != task:
        raise BadRequest(
            f"model {options['model']!r} cannot run pipeline {pipeline.name!r}; "
            f"its {task} models are {', '.join(catalogue.models_for(str(task))) or 'none'}"
        )
    if "detector" in options:
        detector = catalogue.models.get(str(options["detector"]))
        if detector is None or detector.task != "detect":
            raise BadRequest(
                f"detector {options['detector']!r} is not a detect model; they are "
                f"{', '.join(catalogue.models_for('detect')) or 'none'}"
            )
    elif task == "sam":
        try:
            from_options(options.get("boxes"), options.get("points"), options.get("labels"))
        except PromptError as exc:
            raise BadRequest(str(exc)) from exc
    if "image_size" in options and options["image_size"] % 32:
        raise BadRequest(f"image_size must be a multiple of 32, got {options['image_size']}")
    return options


def _coerce(option: Option, value: Any) -> Any:
    """Form fields may arrive as strings; turn them into the option's type and check bounds."""
    try:
        if option.type == "boolean":
            coerced: Any = value if isinstance(value, bool) else parse_bool(str(value))
        elif option.type == "integer":
            coerced = int(value)
        elif option.type == "number":
            coerced = float(value)
        elif option.type == "class-list":
            coerced = sorted({int(part) for part in str(value).split(",") if part.strip()})
        else:
            coerced = str(value)
    except ValueError:
        raise BadRequest(f"option {option.name!r}: {value!r} is not a {option.type}") from None
    if option.minimum is not None and coerced < option.minimum:
        raise BadRequest(f"option {option.name!r} must be >= {option.minimum}, got {coerced}")
    if option.maximum is not None and coerced > option.maximum:
        raise BadRequest(f"option {option.name!r} must be <= {option.maximum}, got {coerced}")
    if option.enum is not None and coerced not in option.enum:
        raise BadRequest(f"option {option.name!r} must be one of {', '.join(option.enum)}")
    return coerced
