"""Slow clients against a running stack (`make start`): does a normal POST still get in?

    .venv/bin/python benchmarks/slow_clients.py [--trickle 200] [--posts 20]

1. Baseline: ``--posts`` POST /v1/jobs of a photo (zidane.jpg, 50 KB), one after another, each job
   cancelled at once; median and max.
2. The same while ``--trickle`` connections trickle (half their request heads, half
   their bodies, behind a valid key and a Content-Length of 1 MB), one byte a second.
   Target: every normal POST answered within 1 s.
3. How the server got rid of the tricklers: seconds from connect to being cut off, and
   what they were answered (none for a head: the connection is closed; 408 for a body).

The stack's API is gunicorn with two `api.server.ApiWorker` processes (scripts/stack.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from typing import Any
from urllib.parse import urlsplit

# run.py beside this script (its folder is on sys.path): the bench key, requests, figures.
from run import KEY, multipart, request, save_report, summary, use_bench_key

from common.settings import Settings

BODY_BYTES = 1024 * 1024


def photo() -> bytes:
    from celery_worker.samples import ultralytics_assets

    return (ultralytics_assets() / "zidane.jpg").read_bytes()


def normal_posts(api: str, posts: int) -> list[float]:
    body, content_type = multipart({"pipeline": "blur-faces"}, "normal.jpg", photo())
    times = []
    for _ in range(posts):
        started = time.perf_counter()
        status, job = request("POST", f"{api}/v1/jobs", body, {"Content-Type": content_type})
        times.append(time.perf_counter() - started)
        if status != 202 or job is None:
            raise SystemExit(f"a normal POST was answered {status}: {job}")
        request("DELETE", f"{api}/v1/jobs/{job['id']}")
    return times


async def trickle(host: str, port: int, kind: str, lasting: float) -> dict[str, Any]:
    """One slow client; returns when the server cut it off (or ``lasting`` passed)."""
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    if kind == "head":
        pending = f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEY['X-API-Key']}\r\n"
    else:
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEY['X-API-Key']}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {BODY_BYTES}\r\n\r\n"
        )
        writer.write(head.encode())
        pending = "--x\r\n" + "a" * BODY_BYTES
    answer = ""
    try:
        for char in pending:
            if time.monotonic() - started > lasting:
                return {"kind": kind, "cut_after_s": None, "answer": "still open"}
            writer.write(char.encode())
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(4096), 1.0)
            except TimeoutError:
                continue
            if not data:
                break  # closed by the server
            answer = data.split(b"\r\n", 1)[0].decode(errors="replace")
            break
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
    status = answer.split(" ")[1] if answer.startswith("HTTP/") else "closed"
    return {"kind": kind, "cut_after_s": round(time.monotonic() - started, 1), "answer": status}


def run_tricklers(api: str, count: int, lasting: float, out: list[dict[str, Any]]) -> None:
    parts = urlsplit(api)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    async def everyone() -> list[dict[str, Any]]:
        kinds = ["head" if i % 2 == 0 else "body" for i in range(count)]
        return await asyncio.gather(*(trickle(host, port, k, lasting) for k in kinds))

    out.extend(asyncio.run(everyone()))


def main() -> None:
    settings = Settings.from_env()
    bind = settings.api_bind.replace("0.0.0.0", "127.0.0.1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", default=f"http://{bind}")
    parser.add_argument("--trickle", type=int, default=200)
    parser.add_argument("--posts", type=int, default=20)
    args = parser.parse_args()
    use_bench_key()
    normal_posts(args.api, 3)  # warm-up
    baseline = normal_posts(args.api, args.posts)

    lasting = settings.header_timeout_seconds + settings.body_idle_seconds + 30
    tricklers: list[dict[str, Any]] = []
    thread = threading.Thread(
        target=run_tricklers, args=(args.api, args.trickle, lasting, tricklers), daemon=True
    )
    thread.start()
    time.sleep(3)  # every trickler connected and sending
    attacked = normal_posts(args.api, args.posts)
    thread.join(lasting + 30)

    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "trickling": args.trickle,
        "baseline": summary(baseline),
        "under_trickle": summary(attacked),
        "within_1s": max(attacked) < 1.0,
        "tricklers": {},
    }
    for kind in ("head", "body"):
        mine = [t for t in tricklers if t["kind"] == kind]
        cut = [t["cut_after_s"] for t in mine if t["cut_after_s"] is not None]
        answers: dict[str, int] = {}
        for t in mine:
            answers[t["answer"]] = answers.get(t["answer"], 0) + 1
        report["tricklers"][kind] = {
            "n": len(mine),
            "cut_median_s": statistics.median(cut) if cut else None,
            "cut_max_s": max(cut) if cut else None,
            "answers": answers,
        }
    b, a = report["baseline"], report["under_trickle"]
    print(f"POST /v1/jobs alone:            median {b['median_ms']} ms, max {b['max_ms']} ms")
    print(
        f"POST /v1/jobs, {args.trickle} trickling: median {a['median_ms']} ms, "
        f"max {a['max_ms']} ms -> {'within' if report['within_1s'] else 'NOT within'} 1 s"
    )
    for kind, t in report["tricklers"].items():
        print(
            f"tricklers of the {kind}: {t['n']}, cut after {t['cut_median_s']} s median "
            f"({t['cut_max_s']} s max), answers {t['answers']}"
        )
    save_report("slow-clients", report)


if __name__ == "__main__":
    main()
