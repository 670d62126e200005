"""Batches through the real stack: files or a zip, bad members fail alone, one zip back."""

from __future__ import annotations

import io
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings
from tests.support.api import assert_problem
from tests.support.images import png_bytes
from tests.support.jobs import wait_until
from tests.support.keys import StackKeys, headers

pytestmark = [pytest.mark.broker, pytest.mark.workers]


def wait_completed(client: Any, batch_id: str) -> dict[str, Any]:
    return wait_until(
        lambda: (b := client.get(f"/v1/batches/{batch_id}").json())["state"] == "completed" and b,
        120,
        f"batch {batch_id} to complete",
    )


def test_batch_of_files_with_bad_members(api_client: Any, assets: Path) -> None:
    bus = (assets / "bus.jpg").read_bytes()
    files = [
        ("files", ("zidane.jpg", (assets / "zidane.jpg").read_bytes(), "image/jpeg")),
        ("files", ("notes.txt", b"not an image", "text/plain")),
        ("files", ("bus.jpg", bus, "image/jpeg")),
        ("files", ("broken.jpg", bus[: len(bus) // 2], "image/jpeg")),
    ]
    response = api_client.post(
        "/v1/batches", files=files, data={"pipeline": "blur-faces", "blur_method": "pixelate"}
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert response.headers["Location"] == f"/v1/batches/{batch['id']}"
    assert [i["filename"] for i in batch["items"]] == [
        "zidane.jpg",
        "notes.txt",
        "bus.jpg",
        "broken.jpg",
    ]
    rejected = batch["items"][1]
    assert rejected["state"] == "rejected" and rejected["job_id"] is None
    assert "not an image" in rejected["error"]
    assert batch["links"]["download"] is None or batch["state"] == "completed"

    done = wait_completed(api_client, batch["id"])
    assert done["counts"]["total"] == 4
    assert done["counts"]["done"] == 2 and done["counts"]["failed"] == 2
    assert [i["state"] for i in done["items"]] == ["succeeded", "rejected", "succeeded", "failed"]

    download = api_client.get(done["links"]["download"])
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/zip"
    bundle = zipfile.ZipFile(io.BytesIO(download.content))
    names = set(bundle.namelist())
    assert {
        "batch.json",
        "0000-zidane/result.json",
        "0000-zidane/blurred.jpg",
        "0001-notes/error.json",
        "0002-bus/result.json",
        "0003-broken/error.json",
    } <= names
    assert b"corrupt or truncated" in bundle.read("0003-broken/error.json")


def test_batch_from_a_zip(api_client: Any, assets: Path) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("photos/a/zidane.jpg", (assets / "zidane.jpg").read_bytes())
        bundle.writestr("photos/b/bus.jpg", (assets / "bus.jpg").read_bytes())
        bundle.writestr("__MACOSX/photos/._bus.jpg", b"resource fork")
        bundle.writestr("photos/readme.md", b"# not an image")
    response = api_client.post(
        "/v1/batches",
        files={"archive": ("photos.zip", archive.getvalue(), "application/zip")},
        data={"pipeline": "detect", "max_detections": "5"},
    )
    assert response.status_code == 202, response.text
    done = wait_completed(api_client, response.json()["id"])
    assert [(i["filename"], i["state"]) for i in done["items"]] == [
        ("zidane.jpg", "succeeded"),
        ("bus.jpg", "succeeded"),
        ("readme.md", "rejected"),
    ]
    assert done["options"]["max_detections"] == 5


@pytest.mark.parametrize(
    ("files", "status", "detail"),
    [
        ({"archive": ("x.zip", b"PK but not really", "application/zip")}, 415, "not a zip"),
        ({"pipeline": (None, "detect")}, 400, "as repeated 'files' fields or as one zip"),
    ],
)
def test_batch_level_errors(
    api_client: Any, files: dict[str, Any], status: int, detail: str
) -> None:
    data = {} if "pipeline" in files else {"pipeline": "detect"}
    response = api_client.post("/v1/batches", files=files, data=data)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]


def test_too_many_files(
    stack_settings: Settings, workers: Any, assets: Path, keys: StackKeys
) -> None:
    from api.app import create_app

    client = create_app(replace(stack_settings, max_batch_files=2)).test_client(
        base_url="http://localhost"
    )
    client.headers.update(headers(keys.acme))
    photo = (assets / "zidane.jpg").read_bytes()
    files = [("files", (f"{i}.jpg", photo, "image/jpeg")) for i in range(3)]
    response = client.post("/v1/batches", files=files, data={"pipeline": "detect"})
    assert response.status_code == 413
    assert "at most 2" in response.json()["detail"]


def test_unknown_batch(api_client: Any) -> None:
    assert api_client.get("/v1/batches/" + "f" * 32).status_code == 404
    assert api_client.get("/v1/batches/" + "f" * 32 + "/download").status_code == 404


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return out.getvalue()


def post_zip(client: Any, data: bytes) -> Any:
    return client.post(
        "/v1/batches",
        files={"archive": ("photos.zip", data, "application/zip")},
        data={"pipeline": "detect"},
    )


def jobs_total(client: Any) -> int:
    return int(client.get("/v1/jobs", params={"limit": 1}).json()["total"])


@pytest.mark.parametrize(
    ("hostile", "status", "detail"),
    [
        ("bomb", 422, "over 100:1 (CV_MAX_MEMBER_RATIO)"),
        ("polyglot", 422, "bytes before the zip"),
        ("dotdot", 422, "zip entry 2 (of 2, in directory order) is refused: its name climbs"),
        ("nul", 422, "its name holds a NUL byte"),
        ("4k-name", 422, "its name is 4096 bytes, over 255"),
    ],
)
def test_hostile_zips_are_refused_whole(
    api_client: Any, assets: Path, hostile: str, status: int, detail: str
) -> None:
    photo = (assets / "zidane.jpg").read_bytes()
    if hostile == "bomb":  # 4 MB of zeros deflate about 1000:1
        data = zip_of({"zidane.jpg": photo, "black.bmp": bytes(4 << 20)}, zipfile.ZIP_DEFLATED)
    elif hostile == "polyglot":
        data = png_bytes(8, 8) + zip_of({"zidane.jpg": photo})
    else:
        name = {"dotdot": b"../../evil.jpg", "nul": b"evil.jpg\0.exe", "4k-name": b"a" * 4096}
        stand_in = b"x" * len(name[hostile])
        data = zip_of({"zidane.jpg": photo, stand_in.decode(): photo}).replace(
            stand_in, name[hostile]
        )
    before = jobs_total(api_client)
    response = post_zip(api_client, data)
    assert_problem(response, status, detail)
    assert jobs_total(api_client) == before  # not even the good member was submitted


def test_a_zip_of_100000_entries_is_refused_at_once(api_client: Any) -> None:
    data = zip_of(dict.fromkeys((f"{i:05x}.jpg" for i in range(100_000)), b""))
    started = time.perf_counter()
    response = post_zip(api_client, data)
    seconds = time.perf_counter() - started
    assert_problem(response, 413, "the zip holds 100000 entries")
    assert seconds < 1, f"answered in {seconds:.2f} s"  # the 9 MB body included


def test_uploads_are_refused_while_the_volume_is_nearly_full(
    stack_settings: Settings, workers: Any, assets: Path, keys: StackKeys
) -> None:
    from api.app import create_app

    # A floor no disk clears: the real volume's free space is asked.
    settings = replace(stack_settings, storage_min_free_bytes=1 << 60)
    client = create_app(settings).test_client(base_url="http://localhost")
    client.headers.update(headers(keys.acme))
    photo = (assets / "zidane.jpg").read_bytes()
    before = jobs_total(client)
    single = client.post(
        "/v1/jobs", files={"file": ("z.jpg", photo, "image/jpeg")}, data={"pipeline": "detect"}
    )
    batch = post_zip(client, zip_of({"z.jpg": photo}))
    for response in (single, batch):
        assert_problem(response, 507, "CV_STORAGE_MIN_FREE_BYTES")
        assert response.json()["title"] == "Insufficient Storage"
    assert jobs_total(client) == before
