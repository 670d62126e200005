"""Interactive segmentation: the first prompt on a new image against the later ones,
through the service and in a direct Ultralytics loop, printed and saved as JSON.

    make bench-sam   (.venv/bin/python benchmarks/sam.py [--images 20] [--later 3] ...)

It needs RabbitMQ and Redis as `make test` starts them (`make services`), and starts its
own workers and a gunicorn of ``--api-workers`` (2) API processes on a vhost and a Redis
prefix of its own. Weights: ``models/mobile_sam.pt`` when `make models` fetched it (or
``--weights``), else MobileSAM with random weights built here (Ultralytics' own builder:
the same network and the same cost, but meaningless masks; the output says which).

Through the service, for each of ``--images`` new pictures (zidane.jpg with a random
patch, so none is cached): the first prompt is ``POST /v1/images`` then ``POST
/v1/images/{id}/segment`` (202: the embedding is only queued) followed to its result
(polled every 10 ms), i.e. what a user waits from dropping a picture to seeing the first
mask; each of ``--later`` prompts after it is one ``POST .../segment`` answered
synchronously (200). Directly: ``SAM(weights)``'s predictor, ``set_image`` plus a prompt
(first) and a prompt on the features it keeps (later), as Ultralytics documents it.
Figures: medians (and p90) in ms, the ratio first / later (target: at least 10x through
the service), and the embedding's size in the cache.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.events import own_stack, p
from benchmarks.tenants import call
from common.settings import REPO_ROOT

RESULTS = REPO_ROOT / "benchmarks" / "results" / "sam.json"
VHOST = "cvjobs-bench-sam"
# Prompts on zidane.jpg (1280 x 720): a box per player, then points.
FIRST = {"prompts": [{"box": [100, 50, 600, 700]}]}
LATER = [
    {"prompts": [{"box": [700, 40, 1200, 700]}]},
    {"prompts": [{"points": [[900, 300]], "labels": [1]}]},
    {"prompts": [{"points": [[400, 300], [450, 600]], "labels": [1, 0]}]},
]


def pictures(count: int) -> list[tuple[bytes, np.ndarray]]:
    """New pictures (PNG: the service decodes the very pixels the direct loop gets)."""
    import cv2

    from celery_worker.samples import ultralytics_assets

    base = cv2.imread(str(ultralytics_assets() / "zidane.jpg"))
    rng = np.random.default_rng()
    out = []
    for _ in range(count):
        image = base.copy()
        image[:16, :16] = rng.integers(0, 255, (16, 16, 3))
        ok, data = cv2.imencode(".png", image)
        assert ok
        out.append((data.tobytes(), image))
    return out


def weights_file(given: Path | None, folder: Path) -> tuple[Path, str]:
    """The weights to measure with, and what they are."""
    real = given or REPO_ROOT / "models" / "mobile_sam.pt"
    if real.is_file():
        return real, f"MobileSAM weights {real}"
    from tests.support.sam import build_scoring_sam

    built = build_scoring_sam(folder / "mobile_sam.pt")
    return (
        built,
        "MobileSAM with RANDOM weights (no models/mobile_sam.pt): real cost, no real masks",
    )


def upload_form(data: bytes) -> tuple[bytes, str]:
    boundary = "benchsamboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def segment(api: str, key: str, image_id: str, body: dict[str, Any]) -> tuple[int, Any]:
    return call(
        "POST",
        f"{api}/v1/images/{image_id}/segment",
        key,
        json.dumps(body).encode(),
        "application/json",
    )


def prompt_kind(body: dict[str, Any]) -> str:
    prompt = body["prompts"][0]
    if "box" in prompt:
        return "box"
    return f"{len(prompt['points'])} point(s)"


def through_service(
    api: str, key: str, images: list[tuple[bytes, np.ndarray]], later: int
) -> dict[str, Any]:
    firsts, laters, sizes, sources, worker = [], [], [], [], []
    by_kind: dict[str, list[float]] = {}
    answer_bytes: dict[str, list[int]] = {}
    for data, _ in images:
        started = time.perf_counter()
        status, shown = call("POST", f"{api}/v1/images", key, *upload_form(data))
        assert status == 201, (status, shown)
        image_id = shown["id"]
        status, job = segment(api, key, image_id, FIRST)
        assert status == 202, (status, job)  # the embedding was only queued
        while True:
            status, record = call("GET", f"{api}/v1/jobs/{job['id']}", key)
            if record["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.01)
        assert record["state"] == "succeeded", record
        status, result = call("GET", f"{api}/v1/jobs/{job['id']}/result", key)
        firsts.append(time.perf_counter() - started)
        assert result["masks"], "the first prompt got no mask"
        for body in LATER[:later]:
            started = time.perf_counter()
            status, answer = segment(api, key, image_id, body)
            laters.append(time.perf_counter() - started)
            assert status == 200, (status, answer)
            kind = prompt_kind(body)
            by_kind.setdefault(kind, []).append(laters[-1])
            answer_bytes.setdefault(kind, []).append(len(json.dumps(answer)))
            sources.append(answer["model"]["embedding"]["source"])
            worker.append(answer["timings"]["embedding"] + answer["timings"]["decode"])
        status, shown = call("GET", f"{api}/v1/images/{image_id}", key)
        sizes.append(shown["embeddings"]["mobile-sam"]["bytes"])
    return {
        "first_ms": summary(firsts),
        "later_ms": summary(laters),
        # Of a later prompt, the worker's own time (embedding from memory, decoder, outlines,
        # the answer written); the rest is HTTP, the job's record, the queue and the wake-up.
        "later_worker_ms": summary(worker),
        # Per kind of prompt: its later prompts, their ratio to the first, and the size of
        # their answers (random weights answer noise: hundreds of outlines, not one).
        "later_by_kind": {
            kind: {
                **summary(values),
                "ratio": round(statistics.median(firsts) / statistics.median(values), 1),
                "answer_bytes_median": int(statistics.median(answer_bytes[kind])),
            }
            for kind, values in by_kind.items()
        },
        "ratio": statistics.median(firsts) / statistics.median(laters),
        "embedding_bytes": sorted(set(sizes)),
        "later_sources": {s: sources.count(s) for s in sorted(set(sources))},
    }


def direct(weights: Path, images: list[tuple[bytes, np.ndarray]], later: int) -> dict[str, Any]:
    """Ultralytics' SAM predictor on its own: set_image once, then prompts."""
    from ultralytics import SAM

    model = SAM(str(weights))
    model.predict(images[0][1], bboxes=FIRST["prompts"][0]["box"], verbose=False)  # load
    predictor = model.predictor
    firsts, laters = [], []
    for _, image in images:
        started = time.perf_counter()
        predictor.set_image(image)
        predictor(bboxes=FIRST["prompts"][0]["box"])
        firsts.append(time.perf_counter() - started)
        for body in LATER[:later]:
            prompt = body["prompts"][0]
            started = time.perf_counter()
            if "box" in prompt:
                predictor(bboxes=prompt["box"])
            else:
                predictor(points=[prompt["points"]], labels=[prompt["labels"]])
            laters.append(time.perf_counter() - started)
        predictor.reset_image()
    return {
        "first_ms": summary(firsts),
        "later_ms": summary(laters),
        "ratio": statistics.median(firsts) / statistics.median(laters),
    }


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "median": round(statistics.median(ms), 1),
        "p90": round(p(ms, 0.9), 1),
        "n": len(ms),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--later", type=int, default=3, choices=range(1, len(LATER) + 1))
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument(
        "--decoder-queue", default="inference", choices=("inference", "postprocess")
    )
    args = parser.parse_args()
    scratch = Path(__file__).resolve().parent / "results" / ".sam-weights"
    weights, described = weights_file(args.weights, scratch)
    print(f"weights: {described}")
    images = pictures(args.images)

    def setup(folder: Path, env: dict[str, str]) -> None:
        (folder / "models").mkdir(exist_ok=True)
        shutil.copy(weights, folder / "models" / "mobile_sam.pt")
        env["CV_SAM_DECODER_QUEUE"] = args.decoder_queue

    stack = own_stack(args.api_workers, vhost=VHOST, setup=setup)
    with stack as (api, _, _store, keys):
        service = through_service(api, keys["a"], images, args.later)
    loop = direct(weights, images, args.later)
    shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "weights": described,
        "images": args.images,
        "later_per_image": args.later,
        "decoder_queue": args.decoder_queue,
        "service": service,
        "direct": loop,
    }
    print(json.dumps(report, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    met = service["ratio"] >= 10
    verdict = "met" if met else "NOT met"
    print(
        f"first prompt {service['first_ms']['median']} ms, later {service['later_ms']['median']}"
        f" ms through the service: {service['ratio']:.1f}x (target 10x: {verdict});"
        f" directly {loop['first_ms']['median']} / {loop['later_ms']['median']} ms"
        f" ({loop['ratio']:.1f}x); embedding {service['embedding_bytes']} bytes"
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
