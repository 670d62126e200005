"""The model registry: a model name -> a loader and a weights path from configuration.

Each worker process loads a model once, on first use or at start-up
(``load_all``, called after fork so CUDA initialises in the child), and keeps
it for its lifetime. A model whose weights are missing is *unavailable*, with
a reason that the API shows; nothing ever stands in for it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from celery_worker import metrics
from celery_worker.errors import ModelUnavailable
from common.catalogue import NULL_FORMAT, ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str
    loader: Callable[[ModelSpec, str], Any]
    weights: Path | None = None
    config: ModelConfig | None = None


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: Any
    device: str
    info: dict[str, Any]  # what the heartbeat reports and results name (with "names")

    @property
    def names(self) -> dict[int, str]:
        """Class id -> name (the checkpoint's, with the models file's overrides)."""
        names: dict[int, str] = self.info.get("names", {})
        return names

    def report(self) -> dict[str, Any]:
        """What a result says of the model: its info without the class names."""
        return {k: v for k, v in self.info.items() if k != "names"}


def yolo_arguments(options: dict[str, Any], device: str) -> dict[str, Any]:
    """Ultralytics ``predict`` keywords from a job's options (images and videos alike)."""
    return {
        "imgsz": int(options["image_size"]),
        "conf": float(options["confidence"]),
        "iou": float(options["iou"]),
        "max_det": int(options["max_detections"]),
        "classes": options.get("classes") or None,
        "device": device,
        "verbose": False,
    }


def pick_device(preference: str) -> str:
    """``auto``/``cuda`` -> CUDA when torch sees a GPU, else CPU; anything else as given."""
    import torch

    if preference in ("auto", "cuda", "gpu"):
        if torch.cuda.is_available():
            return "cuda:0"
        if preference != "auto":
            log.warning("CV_DEVICE=%s but no CUDA device is visible; using the CPU", preference)
        return "cpu"
    return preference


def sha256_of(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


class ModelRegistry:
    """Loads each configured model at most once per process."""

    def __init__(self, specs: dict[str, ModelSpec], device_preference: str = "auto") -> None:
        self.specs = specs
        self.device_preference = device_preference
        self._loaded: dict[str, LoadedModel] = {}

    def get(self, name: str) -> LoadedModel:
        if name in self._loaded:
            return self._loaded[name]
        spec = self.specs.get(name)
        if spec is None:
            raise ModelUnavailable(f"no model named {name!r} is configured on this worker")
        if spec.weights is not None and not spec.weights.is_file():
            raise ModelUnavailable(
                f"model {name!r}: no weights file at {spec.weights}; "
                f"put {_KIND.get(spec.task, 'a ' + spec.task)} weights file there "
                "(make models where the internet is reachable; see config/models.yaml)"
            )
        preference = spec.config.device if spec.config and spec.config.device else None
        device = pick_device(preference or self.device_preference)
        started = time.perf_counter()
        loaded: LoadedModel = spec.loader(spec, device)  # ModelUnavailable for bad weights
        metrics.model_loaded(name, device, time.perf_counter() - started)
        self._loaded[name] = loaded
        log.info("loaded model %s on %s: %s", name, device, loaded.info)
        return loaded

    def load_all(self) -> dict[str, dict[str, Any]]:
        """Load every configured model; returns the availability report for heartbeats."""
        report: dict[str, dict[str, Any]] = {}
        for name in self.specs:
            try:
                report[name] = {"available": True, **self.get(name).info}
            except ModelUnavailable as exc:
                report[name] = {"available": False, "reason": str(exc)}
                log.warning("%s", exc)
        return report


LOADERS: dict[str, Callable[[ModelSpec, str], Any]] = {}
# What the weights of a task are, for the reason a missing file gives.
_KIND = {"detect": "a YOLO detect", "segment": "a YOLO segment", "sam": "a SAM-family"}


def specs_from(models: dict[str, ModelConfig]) -> dict[str, ModelSpec]:
    """A spec per model of the models file (config/models.yaml)."""
    return {
        name: ModelSpec(
            name=name,
            task=config.task,
            loader=load_null if config.format == NULL_FORMAT else LOADERS[config.task],
            weights=config.weights,
            config=config,
        )
        for name, config in models.items()
    }


def configure_ultralytics(config_dir: Path) -> None:
    """Ultralytics' offline switches, the one place they are set; before ``import ultralytics``.

    No network look-ups at import, no pip installs, settings in ``config_dir``
    (``CV_ULTRALYTICS_DIR``) unless the environment names another.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)


# What Ultralytics and ONNX Runtime raise for a weights file they cannot use: TypeError
# ("not a loadable checkpoint", its own wording for empty, truncated or foreign files),
# RuntimeError (torch's zip reader, ONNX Runtime), OSError and ValueError.
WEIGHTS_ERRORS = (TypeError, RuntimeError, OSError, ValueError)


def load_yolo(spec: ModelSpec, device: str) -> LoadedModel:
    """An Ultralytics YOLO model from an explicit path (never a hub name), warmed up once."""
    assert spec.weights is not None
    from ultralytics import YOLO

    try:
        model = YOLO(str(spec.weights), task=spec.task)
        model.predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, device=device, verbose=False)
        if spec.weights.suffix == ".onnx" and device == "cpu":
            _stop_onnx_spinning(model, spec.weights)
        digest, size = sha256_of([spec.weights]), spec.weights.stat().st_size
    except WEIGHTS_ERRORS as exc:
        raise ModelUnavailable(f"model {spec.name!r} failed to load: {exc}") from exc
    names = {int(k): str(v) for k, v in model.names.items()}
    if spec.config is not None and spec.config.classes:
        names.update(spec.config.classes)
    fmt = spec.config.format if spec.config else spec.weights.suffix.lstrip(".")
    info = {**_ultralytics_info(spec, device, fmt, digest, size), "classes": len(names)}
    return LoadedModel(spec, model, device, {**info, "names": names})


def _ultralytics_info(
    spec: ModelSpec, device: str, fmt: str, digest: str, size: int
) -> dict[str, Any]:
    """What the heartbeat reports of a model Ultralytics loaded from ``spec.weights``."""
    return {
        "name": spec.name,
        "task": spec.task,
        "version": f"ultralytics {importlib.metadata.version('ultralytics')}",
        "weights": str(spec.weights),
        "weights_sha256": digest,
        "weights_bytes": size,
        "format": fmt,
        "device": device,
    }


def _stop_onnx_spinning(model: Any, weights: Path) -> None:
    """Reopen the ONNX Runtime session with its threads sleeping when idle.

    By default they spin between operators; next to the other workers on a small host
    that doubled the inference time in the service (84 vs 49 ms measured with one busy
    core; 64 ms without spinning).
    """
    import onnxruntime

    backend = getattr(getattr(model.predictor, "model", None), "backend", None)
    if backend is None or not hasattr(backend, "session"):
        log.warning("ONNX Runtime session not found; spinning stays on")
        return
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    backend.session = onnxruntime.InferenceSession(
        str(weights), options, providers=["CPUExecutionProvider"]
    )


def batch_capacity(spec: ModelSpec) -> int:
    """Images per forward pass for ``spec``: its ``max_batch``, or 1 for an export whose
    batch size is fixed at 1 (a static ONNX file; TensorRT engines are built for one)."""
    most = spec.config.max_batch if spec.config else 1
    weights = spec.weights
    if most <= 1 or weights is None or weights.suffix == ".pt":
        return max(1, most)
    if weights.suffix == ".onnx" and weights.is_file():
        fixed = _onnx_batch(str(weights), weights.stat().st_mtime)
        return most if fixed is None else max(1, min(most, fixed))
    return 1


@functools.cache
def _onnx_batch(path: str, mtime: float) -> int | None:
    """The batch size an ONNX file fixes (None: dynamic)."""
    import onnx

    first = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return None if first.dim_param or not first.dim_value else int(first.dim_value)


def rectangular_input(weights: Path | None) -> bool:
    """Whether Ultralytics letterboxes this model to the smallest stride-multiple rectangle.

    PyTorch models and dynamic-shape ONNX exports take any size; static exports
    (ONNX, TensorRT) a square. The preprocess worker must letterbox the same way.
    """
    if weights is None or weights.suffix == ".pt":
        return True
    if weights.suffix != ".onnx":
        return False
    return _onnx_is_dynamic(str(weights), weights.stat().st_mtime)


@functools.cache
def _onnx_is_dynamic(path: str, mtime: float) -> bool:
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    return any(dim.dim_param for dim in dims[2:])


def detect_faces(model: Any, pictures: np.ndarray) -> tuple[Any, Any, Any]:
    """MTCNN's ``detect(pictures, landmarks=True)`` for one RGB picture (H, W, 3) or a batch
    of one size (N, H, W, 3).

    MTCNN looks for faces of at least ``min_face_size`` pixels (20); a smaller picture has
    no scale to search at, and facenet-pytorch fails on it (``torch.cat`` of an empty list)
    where the answer is simply: no face.
    """
    height, width = pictures.shape[-3:-1]
    if min(height, width) < model.min_face_size:
        if pictures.ndim == 3:
            return None, None, None
        none = [None] * len(pictures)
        return none, list(none), list(none)
    boxes, probs, landmarks = model.detect(pictures, landmarks=True)
    return boxes, probs, landmarks


def load_mtcnn(spec: ModelSpec, device: str) -> LoadedModel:
    """facenet-pytorch's MTCNN with the pretrained weights its wheel ships."""
    import facenet_pytorch
    from facenet_pytorch import MTCNN

    data_dir = Path(facenet_pytorch.__file__).parent / "data"
    weights = sorted(data_dir.glob("[por]net.pt"))
    try:
        model = MTCNN(keep_all=True, device=device)
        model.detect(np.zeros((64, 64, 3), dtype=np.uint8))
        digest = sha256_of(weights) if weights else None
        size = sum(p.stat().st_size for p in weights)
    except (RuntimeError, OSError) as exc:  # its wheel's weights missing or unreadable
        raise ModelUnavailable(f"model {spec.name!r} failed to load: {exc}") from exc
    info = {
        "name": spec.name,
        "task": spec.task,
        "version": f"facenet-pytorch {importlib.metadata.version('facenet-pytorch')}",
        "weights": str(data_dir),
        "weights_sha256": digest,
        "weights_bytes": size,
        "format": "pt",
        "device": device,
    }
    return LoadedModel(spec, model, device, info)


def load_sam(spec: ModelSpec, device: str) -> LoadedModel:
    """A SAM-family model (celery_worker.sam) from an explicit path. Not warmed up: its
    encoder takes seconds on a CPU for any image, and a bad file fails while loading."""
    assert spec.weights is not None
    from celery_worker.sam import PromptableSegmenter

    try:
        segmenter = PromptableSegmenter(spec.weights, device)
        digest, size = sha256_of([spec.weights]), spec.weights.stat().st_size
    # (A file name Ultralytics does not know raises FileNotFoundError, an OSError.)
    except (*WEIGHTS_ERRORS, KeyError, NotImplementedError) as exc:
        raise ModelUnavailable(
            f"model {spec.name!r} failed to load: {exc} (the file name must end as "
            "Ultralytics names the weights: mobile_sam.pt, sam_b.pt, sam2_t.pt, ...)"
        ) from exc
    family = "sam2" if segmenter.is_sam2 else "sam"
    info = {**_ultralytics_info(spec, device, "pt", digest, size), "family": family}
    return LoadedModel(spec, segmenter, device, info)


class _NoBoxes:
    """What an Ultralytics ``Results`` with nothing found reads as (``adapters.from_yolo``)."""

    boxes = None
    masks = None


class NullModel:
    """The benchmark-only model (``format: null``): ``predict`` costs nothing, finds nothing.

    benchmarks/ceiling.py runs it through the real queues and workers: what is left is what
    the service itself costs per image, the most it can ever feed one GPU. It does the one
    thing every batched model must: gather its inputs into one array (every byte read)."""

    def predict(self, source: Any, **_: Any) -> list[_NoBoxes]:
        images = source if isinstance(source, list) else [source]
        np.stack(images)
        return [_NoBoxes() for _ in images]


def load_null(spec: ModelSpec, device: str) -> LoadedModel:
    info = {
        "name": spec.name,
        "task": spec.task,
        "version": "null model (benchmark only: no model runs, nothing is found)",
        "weights": None,
        "weights_sha256": None,
        "weights_bytes": 0,
        "format": NULL_FORMAT,
        "device": device,
        "classes": 0,
    }
    return LoadedModel(spec, NullModel(), device, {**info, "names": {}})


LOADERS.update(detect=load_yolo, segment=load_yolo, faces=load_mtcnn, sam=load_sam)
