"""Export a YOLO ``.pt`` model to ONNX and, if asked, make a pipeline use it.

    .venv/bin/python -m celery_worker.export models/yolov8n.pt [--imgsz 640] [--register detect]

Runs offline. ``--register detect`` (or ``segment``) points ``CV_DETECT_WEIGHTS``
(``CV_SEGMENT_WEIGHTS``) in ``.env`` at the new file; restart the inference worker
(``make stop && make start``) to load it. Queued jobs stay in RabbitMQ meanwhile.
The export has dynamic input sizes, so it letterboxes like the PyTorch model.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

from dotenv import set_key

from celery_worker.models import configure_ultralytics
from common.settings import REPO_ROOT, Settings


def export_onnx(
    weights: Path, imgsz: int = 640, out: Path | None = None, settings: Settings | None = None
) -> Path:
    """Write ``weights`` as ONNX (next to it unless ``out``); returns the new file."""
    settings = settings or Settings.from_env()
    configure_ultralytics(settings.resolve(settings.ultralytics_dir))
    from ultralytics import YOLO

    if not weights.is_file():
        raise SystemExit(f"no weights file at {weights}")
    # dynamic: the model takes the same rectangle PyTorch does (640x384 for a 16:9
    # photo), not a padded square: about 40% less work on wide images.
    exported = Path(
        YOLO(str(weights)).export(
            format="onnx", imgsz=imgsz, dynamic=True, simplify=True, verbose=False
        )
    )
    if out is not None and exported.resolve() != out.resolve():
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(exported, out)
        exported = out
    return exported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--register", choices=("detect", "segment"))
    parser.add_argument("--env-file", type=Path, default=REPO_ROOT / ".env")
    args = parser.parse_args()
    onnx = export_onnx(args.weights, args.imgsz, args.out)
    digest = hashlib.sha256(onnx.read_bytes()).hexdigest()
    print(f"exported {onnx} ({onnx.stat().st_size} bytes, sha256 {digest})")
    if args.register:
        key = f"CV_{args.register.upper()}_WEIGHTS"
        set_key(args.env_file, key, str(onnx), quote_mode="never")
        print(f"{args.env_file}: {key}={onnx}; restart the inference worker to use it")


if __name__ == "__main__":
    main()
