"""A client generated from the served /openapi.json (openapi-python-client) works end to end."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.catalogue import SHIPPED_PIPELINES
from tests.support.keys import StackKeys

pytestmark = [pytest.mark.broker, pytest.mark.workers, pytest.mark.http]


@pytest.fixture(scope="module")
def generated(http_api: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    work = tmp_path_factory.mktemp("generated-client")
    spec = work / "openapi.json"
    spec.write_text(requests.get(f"{http_api}/openapi.json", timeout=10).text)
    generator = Path(sys.executable).parent / "openapi-python-client"
    subprocess.run(
        [
            str(generator),
            "generate",
            "--path",
            str(spec),
            "--output-path",
            str(work / "cvclient"),
            "--meta",
            "none",
            "--overwrite",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    sys.path.insert(0, str(work))
    try:
        yield importlib.import_module("cvclient")
    finally:
        sys.path.remove(str(work))


def test_generated_client_submits_polls_and_downloads(
    generated: Any, http_api: str, assets: Path, keys: StackKeys
) -> None:
    from cvclient.api.jobs import create_job, get_artifact, get_job, get_result
    from cvclient.api.pipelines import list_pipelines
    from cvclient.models import Job, JobState, JobSubmission, PipelineName, Problem, Result
    from cvclient.types import File

    # The key as a Bearer token, the way generated clients authenticate.
    anonymous = generated.Client(base_url=http_api)
    assert list_pipelines.sync_detailed(client=anonymous).status_code == 401
    client = generated.AuthenticatedClient(
        base_url=http_api, token=keys.acme, raise_on_unexpected_status=True
    )
    catalogue = list_pipelines.sync(client=client)
    assert {p.name for p in catalogue.pipelines} == SHIPPED_PIPELINES

    with (assets / "zidane.jpg").open("rb") as photo:
        body = JobSubmission(
            file=File(payload=photo, file_name="zidane.jpg", mime_type="image/jpeg"),
            pipeline=PipelineName("blur-faces"),  # the spec lists the configured pipelines
            blur_strength=70,
        )
        accepted = create_job.sync_detailed(client=client, body=body)
    assert accepted.status_code == 202, accepted.content
    assert isinstance(accepted.parsed, Job)
    job_id = accepted.parsed.id

    deadline = time.monotonic() + 60
    while (job := get_job.sync(job_id, client=client)).state not in (
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
    ):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job.state == JobState.SUCCEEDED

    result = get_result.sync(job_id, client=client)
    assert isinstance(result, Result)
    assert len(result.detections) == 2
    assert all(d.class_name == "face" for d in result.detections)
    artifact = get_artifact.sync_detailed(job_id, "blurred.jpg", client=client)
    assert artifact.status_code == 200 and artifact.content[:2] == b"\xff\xd8"

    with (assets / "zidane.jpg").open("rb") as photo:
        refused = create_job.sync(
            client=client,
            body=JobSubmission(
                file=File(payload=photo, file_name="zidane.jpg", mime_type="image/jpeg"),
                pipeline=PipelineName("detect"),
                blur_strength=70,
            ),
        )
    assert isinstance(refused, Problem) and refused.status == 400


def test_generated_client_segments_an_uploaded_image(
    generated: Any, http_api: str, assets: Path, keys: StackKeys
) -> None:
    from cvclient.api.images import delete_image, get_image, segment_image, upload_image
    from cvclient.models import Image, ImageUpload, Job, Result, SegmentPrompt, SegmentRequest
    from cvclient.types import File

    client = generated.AuthenticatedClient(
        base_url=http_api, token=keys.acme, raise_on_unexpected_status=True
    )
    with (assets / "bus.jpg").open("rb") as photo:
        body = ImageUpload(file=File(payload=photo, file_name="bus.jpg", mime_type="image/jpeg"))
        uploaded = upload_image.sync(client=client, body=body)
    assert isinstance(uploaded, Image) and (uploaded.width, uploaded.height) == (810, 1080)
    deadline = time.monotonic() + 60
    while (image := get_image.sync(uploaded.id, client=client)).embeddings[
        "mobile-sam"
    ].state.value != "ready":
        assert time.monotonic() < deadline, image
        time.sleep(0.2)
    request = SegmentRequest(prompts=[SegmentPrompt(box=[50, 400, 250, 900])], rle=True)
    answer = segment_image.sync(uploaded.id, client=client, body=request)
    assert isinstance(answer, Result), answer
    assert not isinstance(answer, Job)
    assert answer.image_id == uploaded.id and len(answer.masks) == 1
    assert answer.masks[0].prompt == 0 and answer.masks[0].area > 0
    assert delete_image.sync_detailed(uploaded.id, client=client).status_code == 204
