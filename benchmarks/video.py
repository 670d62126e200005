"""Video throughput: the service end to end vs a plain single-process loop, in one run.

    .venv/bin/python benchmarks/video.py [--api http://127.0.0.1:8000] [--seconds 30]
        [--size 1280x720] [--fps 30] [--pipeline blur-faces]

Start the stack first (`make start`: one worker per queue, so ONE inference worker).

1. Makes the test video: a real face (cut from ultralytics' zidane.jpg) sliding across
   a textured background (celery_worker/samples.py), H.264 MP4, 30 s of 720p at 30 fps
   by default (900 frames).
2. Service: POST /v1/jobs, poll every 0.2 s until it succeeded; end-to-end frames per
   second = frames / (succeeded - POST). Also the worker seconds per stage.
3. Baseline, in this process: the same work as one plain loop over the frames, built
   from the service's own parts so only the orchestration differs: decode (PyAV,
   sequential), the model (same weights and options) on each frame, draw/blur, encode
   (the same H.264 settings). No queues, no files between steps.
4. The ratio service / baseline. Everything is printed and saved in benchmarks/results.

The two runs share the machine one after the other; quote the ratio of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import urllib.request
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

# run.py beside this script (its folder is on sys.path): the bench key and results folder.
from run import KEY, save_report, use_bench_key

from common.settings import Settings


def request(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, data=body, method=method, headers={**KEY, **(headers or {})})
    with urllib.request.urlopen(req, timeout=600) as response:
        return json.loads(response.read() or b"null")


def post_video(api: str, path: Path, fields: dict[str, str]) -> dict[str, Any]:
    """POST a file as multipart without holding it twice (it is small enough to read)."""
    boundary = uuid.uuid4().hex
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"'
        "\r\nContent-Type: video/mp4\r\n\r\n"
    ).encode()
    body = head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    job: dict[str, Any] = request(
        "POST",
        f"{api}/v1/jobs",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    return job


def make_video(path: Path, seconds: float, fps: int, size: tuple[int, int]) -> None:
    from celery_worker.samples import face_crop, sliding_face, ultralytics_assets

    sliding_face(path, face_crop(ultralytics_assets()), seconds=seconds, fps=fps, size=size)


def service(api: str, path: Path, pipeline: str) -> dict[str, Any]:
    workers = request("GET", f"{api}/health/ready").get("workers") or []
    started = time.perf_counter()
    job = post_video(api, path, {"pipeline": pipeline})
    posted = time.perf_counter() - started
    last = None
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.2)
        job = request("GET", f"{api}/v1/jobs/{job['id']}")
        if job.get("progress") and job["progress"]["percent"] != last:
            last = job["progress"]["percent"]
            progress = job["progress"]
            print(
                f"  service: {progress['frames_done']}/{progress['frames_total']} frames "
                f"({last}%), ETA {progress['eta_seconds']} s",
                flush=True,
            )
    seconds = time.perf_counter() - started
    if job["state"] != "succeeded":
        raise SystemExit(f"the job {job['state']}: {job.get('error')}")
    result = request("GET", f"{api}/v1/jobs/{job['id']}/result")
    frames = result["video"]["frames"]
    request("DELETE", f"{api}/v1/jobs/{job['id']}")
    return {
        "frames": frames,
        "seconds": round(seconds, 2),
        "post_seconds": round(posted, 3),
        "fps": round(frames / seconds, 2),
        "chunks": result["video"]["chunks"],
        "worker_seconds": result["timings"],
        "tracks": len(result["tracks"]),
        "inference_processes": len(workers),
    }


def baseline(path: Path, pipeline: str) -> dict[str, Any]:
    """Decode -> model -> draw/blur -> encode, one frame at a time, one process."""
    import av

    from celery_worker.models import ModelRegistry, configure_ultralytics, specs_from
    from celery_worker.render import render_frame
    from celery_worker.video.encode import encode_segment
    from celery_worker.video.frames import detect_frames
    from common.catalogue import load_catalogue

    settings = Settings.from_env()
    configure_ultralytics(settings.resolve(settings.ultralytics_dir))
    catalogue = load_catalogue(settings)
    config = catalogue.pipelines[pipeline]
    options = config.defaults()
    registry = ModelRegistry(specs_from(catalogue.models), settings.device)
    loaded = registry.get(options["model"])
    render = config.steps[-1].name

    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate)

        def frames() -> Any:
            for frame in container.decode(stream):
                image = frame.to_ndarray(format="bgr24")
                detections = detect_frames(loaded, [image], options)[0]
                yield render_frame(render, image, detections, options)

        with tempfile.TemporaryDirectory() as tmp:
            count = encode_segment(Path(tmp) / "out.mp4", frames(), rate)
    seconds = time.perf_counter() - started
    return {"frames": count, "seconds": round(seconds, 2), "fps": round(count / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bind = Settings.from_env().api_bind.replace("0.0.0.0", "127.0.0.1")
    parser.add_argument("--api", default=f"http://{bind}")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--pipeline", default="blur-faces")
    args = parser.parse_args()
    use_bench_key()
    width, height = (int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "bench.mp4"
        print(f"making a {args.seconds:g} s {width}x{height} video at {args.fps} fps", flush=True)
        make_video(video, args.seconds, args.fps, (width, height))
        print(f"  {video.stat().st_size / 1e6:.1f} MB", flush=True)
        print(f"service ({args.api}, {args.pipeline}):", flush=True)
        served = service(args.api, video, args.pipeline)
        print(f"  {served}", flush=True)
        print("baseline (one process: decode, model, render, encode):", flush=True)
        plain = baseline(video, args.pipeline)
        print(f"  {plain}", flush=True)

    ratio = round(served["fps"] / plain["fps"], 3)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "video": {"seconds": args.seconds, "size": args.size, "fps": args.fps},
        "pipeline": args.pipeline,
        "service": served,
        "baseline": plain,
        "ratio_service_to_baseline": ratio,
    }
    print(
        f"\n{args.pipeline}, {served['frames']} frames of {args.size}: service "
        f"{served['fps']} fps end to end ({served['seconds']} s), baseline {plain['fps']} fps "
        f"({plain['seconds']} s), ratio {ratio}"
    )
    save_report("video", report)


if __name__ == "__main__":
    main()
