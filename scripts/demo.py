"""The demo client of `make demo`: sends the sample photos through the running stack.

    .venv/bin/python scripts/demo.py [--api URL] [--out DIR] [PHOTO ...]

Without photos it uses the two that ship inside the ultralytics wheel (zidane.jpg,
bus.jpg), plus a sample video it makes (a real face from zidane.jpg sliding across
the frame, 6 s at 15 fps; `--no-video` skips it). Every file goes to `blur-faces`,
and to `detect` when the workers have YOLO weights. Progress comes from the event stream
(``GET /v1/events?job=``, no polling), printed as each job moves through its steps (with
their seconds; for the video: frames done, percent, fps, ETA); results and
artifacts land in `<out>/<job id>-<pipeline>-<file>/`. The HTTP client is the stdlib;
the sample video is made with ``celery_worker.samples`` (PyAV, OpenCV). The API's
address comes from ``CV_API_BIND`` (``common.settings``), the output folder is under
the repository whatever the current directory.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery_worker.samples import face_crop, sliding_face, ultralytics_assets
from common.settings import REPO_ROOT, Settings

TERMINAL_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")
# The demo tenant's key, made once and kept here (only its hash is in Redis).
KEY_FILE = REPO_ROOT / "var" / "demo-key"
KEY: dict[str, str] = {}  # the header every call sends


def call(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers={**KEY, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except urllib.error.URLError as error:
        raise SystemExit(
            f"{method} {url}: {error.reason} (is the stack running? `make start`)"
        ) from None


def get_json(url: str) -> Any:
    status, body = call("GET", url)
    if status != 200:
        raise SystemExit(f"GET {url} answered {status}: {body.decode(errors='replace')}")
    return json.loads(body)


def submit(api: str, photo: Path, pipeline: str) -> dict[str, Any]:
    boundary = uuid.uuid4().hex
    content_type = mimetypes.guess_type(photo.name)[0] or "application/octet-stream"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="pipeline"\r\n\r\n'
            f"{pipeline}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{photo.name}"\r\nContent-Type: {content_type}\r\n\r\n'
        ).encode()
        + photo.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, answer = call(
        "POST",
        f"{api}/v1/jobs",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    if status != 202:
        raise SystemExit(
            f"POST /v1/jobs ({pipeline}, {photo.name}) answered {status}: "
            f"{answer.decode(errors='replace')}"
        )
    job: dict[str, Any] = json.loads(answer)
    return job


def events(api: str, job_id: str, timeout: float) -> Iterator[dict[str, Any]]:
    """The job's events from ``GET /v1/events?job=``, as they happen (Server-Sent Events).

    ``Last-Event-ID: 0-0`` replays those that came before the stream opened (the job
    may already be running by then).
    """
    url = f"{api}/v1/events?job={job_id}"
    headers = {**KEY, "Accept": "text/event-stream", "Last-Event-ID": "0-0"}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as stream:
        data: list[str] = []
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                data.append(line[6:])
            elif not line and data:  # a blank line ends a message; ": ..." is a heartbeat
                yield json.loads("\n".join(data))
                data = []


def follow(api: str, job: dict[str, Any], label: str, timeout: float = 120) -> dict[str, Any]:
    """Print the job's events as they arrive (steps with their seconds, video progress)
    until it ends; then read the job once."""
    started = time.monotonic()
    try:
        for event in events(api, job["id"], timeout):
            print(f"  {label}: {describe_event(event)}  +{time.monotonic() - started:.2f} s")
            if event["type"] in TERMINAL_EVENTS:
                break
    except TimeoutError:
        raise SystemExit(f"{label}: no event for {timeout} s; see var/log/") from None
    final: dict[str, Any] = get_json(f"{api}/v1/jobs/{job['id']}")
    return final


def describe_event(event: dict[str, Any]) -> str:
    data = event["data"]
    kind: str = event["type"]
    if kind.startswith("step."):
        seconds = data.get("seconds")
        return f"{kind} {data['step']}" + (f" ({seconds:.2f} s)" if seconds is not None else "")
    if kind == "job.progress":
        eta = data.get("eta_seconds")
        return (
            f"{data['frames_done']}/{data['frames_total']} frames {data['percent']}%"
            + (f", {data['frames_per_second']} fps" if data.get("frames_per_second") else "")
            + (f", ETA {eta:.0f} s" if eta is not None else "")
        )
    if kind == "job.failed":
        return f"{kind} ({data.get('kind')}: {data.get('detail')})"
    return kind


def save(api: str, job: dict[str, Any], folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = get_json(f"{api}/v1/jobs/{job['id']}/result")
    (folder / "result.json").write_text(json.dumps(result, indent=2))
    for artifact in job["links"]["artifacts"]:
        status, data = call("GET", api + artifact["href"])
        if status == 200:
            (folder / artifact["name"]).write_bytes(data)
        else:
            print(f"  warning: GET {artifact['href']} answered {status}; not saved")
    return result


def sample_photos() -> list[Path]:
    assets = ultralytics_assets()
    return [assets / "zidane.jpg", assets / "bus.jpg"]


def sample_video(folder: Path) -> Path:
    """A real face sliding across the frame (made here: no video ships with the repo)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sample-face.mp4"
    sliding_face(path, face_crop(ultralytics_assets()), seconds=6, fps=15, size=(640, 360))
    return path


def demo_key() -> str:
    """The demo tenant's member key: the saved one while it is valid, else a new one."""
    from api.keys import saved_key

    return saved_key(KEY_FILE, "demo", "make demo", "member", Settings.from_env())


def describe(result: dict[str, Any]) -> str:
    """What a result found, e.g. '4 (3x person, 1x tie)'; for a video, its tracks."""
    if result.get("kind") == "video":
        video, tracks = result["video"], result["summary"]["unique_tracks"]
        kinds = ", ".join(f"{n}x {k}" for k, n in sorted(tracks.items(), key=lambda kv: -kv[1]))
        return (
            f"{video['frames']} frames at {video['fps']:g} fps, {len(result['tracks'])} "
            f"tracks ({kinds or 'none'})"
        )
    kinds: dict[str, int] = {}
    for detection in result["detections"]:
        kinds[detection["class_name"]] = kinds.get(detection["class_name"], 0) + 1
    top = sorted(kinds.items(), key=lambda kv: -kv[1])[:5]
    found = f"{len(result['detections'])} ({', '.join(f'{n}x {k}' for k, n in top)})"
    if len(kinds) > len(top):
        found = found[:-1] + ", ...)"
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bind = Settings.from_env().api_bind.replace("0.0.0.0", "127.0.0.1")
    parser.add_argument("--api", default=f"http://{bind}")
    parser.add_argument("--out", default=REPO_ROOT / "demo-output", type=Path)
    parser.add_argument("--no-video", action="store_true", help="skip the sample video")
    parser.add_argument("photos", nargs="*", type=Path, help="images or videos")
    args = parser.parse_args()
    photos = args.photos or sample_photos()
    if not args.photos and not args.no_video:
        photos.append(sample_video(args.out))

    key = demo_key()
    KEY["X-API-Key"] = key
    print(f"Tenant demo, member key {key[:12]}... (all of it in {KEY_FILE}):")
    print(f"  curl -H 'X-API-Key: {key}' {args.api}/v1/usage")
    catalogue = get_json(f"{args.api}/v1/pipelines")["pipelines"]
    print("Pipelines:")
    runnable = []
    for pipeline in catalogue:
        state = "available" if pipeline["available"] else "UNAVAILABLE"
        print(f"  {pipeline['name']:<11} {state:<11} {pipeline['description']}")
        if pipeline["available"]:
            runnable.append(pipeline["name"])
        else:
            print(f"  {'':<11} why: {pipeline['unavailable_reason']}")
            if pipeline["name"] in ("detect", "segment"):
                print(
                    f"  {'':<11} to enable it: put the YOLO weights file there, then "
                    "`make stop && make demo`; see README, 'Adding a model'"
                )

    failures = 0
    for pipeline in ("blur-faces", "detect", "segment"):
        if pipeline not in runnable:
            continue
        for photo in photos:
            label = f"{pipeline} {photo.name}"
            started = time.monotonic()
            job = follow(args.api, submit(args.api, photo, pipeline), label, timeout=600)
            if job["state"] != "succeeded":
                failures += 1
                print(f"  {label}: {job['state']}: {job.get('error')}")
                continue
            folder = args.out / f"{job['id']}-{pipeline}-{photo.stem}"
            result = save(args.api, job, folder)
            found = describe(result)
            print(f"  {label}: found {found} in {time.monotonic() - started:.2f} s -> {folder}/")

    out = args.out.resolve()
    print(f"""
Where to look:
  Swagger UI (try the API):      {args.api}/  (Authorize: the key in {KEY_FILE})
  RabbitMQ management console:   http://127.0.0.1:15672/  (cvjobs, var/secrets/broker.password)
  Results and artifacts:         {out}
  Logs:                          var/log/
Stop everything with:            make stop""")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
