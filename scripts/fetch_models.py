"""`make models`: download the official Ultralytics weights the shipped config names.

    .venv/bin/python scripts/fetch_models.py [--dest models] [NAME ...]

Needs the internet (the Ultralytics release assets). On an offline host it
fails with a message saying what to copy where; it never writes a partial file.
Set CV_WEIGHTS_BASE_URL to use a mirror inside your network; files go to
CV_MODELS_DIR (``models/``) unless ``--dest`` says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from common.settings import Settings

DEFAULT = ("yolov8n.pt", "yolo11n-seg.pt", "mobile_sam.pt", "sam2_t.pt")
# `make models-sam`: every SAM-family file config/models.yaml names.
SAM_ALL = (
    "mobile_sam.pt",
    "sam_b.pt",
    "sam_l.pt",
    "sam_h.pt",
    "sam2_t.pt",
    "sam2_s.pt",
    "sam2_b.pt",
    "sam2_l.pt",
)
# Files the Ultralytics release assets do not hold: SAM h is Meta's own checkpoint, which
# Ultralytics' builder loads under the name sam_h.pt. A mirror (CV_WEIGHTS_BASE_URL) is
# asked for every file by its name.
ELSEWHERE = {"sam_h.pt": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"}


def fetch(name: str, dest: Path, base_url: str, timeout: float = 30) -> Path:
    target = dest / name
    if target.is_file():
        print(f"{target}: already there ({target.stat().st_size} bytes)")
        return target
    url = f"{base_url.rstrip('/')}/{name}"
    if base_url == Settings.weights_base_url and name in ELSEWHERE:
        url = ELSEWHERE[name]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest, prefix=f".{name}.", delete=False) as out:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as exc:
            Path(out.name).unlink(missing_ok=True)
            raise SystemExit(
                f"cannot download {url}: {exc}\n"
                f"This host cannot reach the Ultralytics release assets (offline?). Copy "
                f"{name} from a machine that has it into {dest}/ (or set CV_WEIGHTS_BASE_URL "
                "to a mirror), then restart the inference worker: make reload"
            ) from None
    os.replace(out.name, target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    print(f"{target}: {target.stat().st_size} bytes, sha256 {digest}")
    return target


def main() -> None:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=settings.resolve(settings.models_dir))
    parser.add_argument("--sam-all", action="store_true", help="every SAM-family file")
    parser.add_argument("names", nargs="*", default=list(DEFAULT))
    args = parser.parse_args()
    for name in SAM_ALL if args.sam_all else args.names:
        fetch(name, args.dest, settings.weights_base_url)


if __name__ == "__main__":
    main()
