"""``--compat worker-comfyui``: a client written for RunPod's official ComfyUI worker (its
documented request and result shapes) works against ``serve`` unchanged, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
from dataclasses import replace
from typing import Any

import pytest
import workflows
from PIL import Image
from s3server import S3Server, bucket_contract
from servekit import ServeThread

COMFY_ORG_KEY = "comfyui-org-key-5f1e2d3c4b5a69788796a5b4c3d2e1f0"


class WorkerComfyUIClient:
    """What a worker-comfyui user's code does: POST /runsync with {"input": {"workflow",
    "images"?}}, then read output.images[i].data (base64 or an s3 URL) by type."""

    def __init__(self, serve: ServeThread) -> None:
        self.serve = serve

    def run(self, job_input: dict[str, Any]) -> dict[str, Any]:
        code, status = self.serve.call("POST", "runsync?wait=60000", {"input": job_input})
        assert code == 200, status
        return status

    @staticmethod
    def first_image(status: dict[str, Any]) -> bytes:
        image = status["output"]["images"][0]
        if image["type"] == "base64":
            return base64.b64decode(image["data"])
        import urllib.request

        with urllib.request.urlopen(image["data"]) as response:
            return response.read()


@pytest.fixture
def client(make_pipeline):
    pipeline = make_pipeline()
    pipeline.settings = replace(pipeline.settings, compat="worker-comfyui")
    serve = ServeThread(pipeline)
    yield WorkerComfyUIClient(serve)
    serve.stop()


def pixel(data: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").getpixel((0, 0))


def test_a_worker_comfyui_client_reads_its_image(client: WorkerComfyUIClient) -> None:
    source = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(source, "PNG")
    workflow = workflows.load_and_save("in.png")
    status = client.run(
        {
            "workflow": workflow,
            "images": [{"name": "in.png", "image": base64.b64encode(source.getvalue()).decode()}],
        }
    )
    assert status["status"] == "COMPLETED"
    [image] = status["output"]["images"]
    assert set(image) == {"filename", "type", "data"}
    assert image["type"] == "base64" and image["filename"] == "loaded_00001_.png"
    assert pixel(client.first_image(status)) == (10, 20, 30)
    assert "files" not in status["output"]  # that worker's shape only


def test_with_a_bucket_images_are_s3_urls(client: WorkerComfyUIClient, s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket("compat-bucket")
    client.serve.pipeline.settings = replace(
        client.serve.pipeline.settings,
        environ={
            "BUCKET_ENDPOINT_URL": s3_server.endpoint_url,
            "BUCKET_ACCESS_KEY_ID": bucket_contract(s3_server, bucket)["accessId"],
            "BUCKET_SECRET_ACCESS_KEY": bucket_contract(s3_server, bucket)["accessSecret"],
            "BUCKET_NAME": bucket,
        },
    )
    status = client.run({"workflow": workflows.invert(0x102030)})
    [image] = status["output"]["images"]
    assert image["type"] == "s3_url" and image["data"].startswith(s3_server.endpoint_url)
    assert pixel(client.first_image(status)) == (0xEF, 0xDF, 0xCF)


def test_no_image_and_failure_have_that_workers_shapes(client: WorkerComfyUIClient) -> None:
    datas_only = {"1": {"class_type": "RunPodCaptureData", "inputs": {"value": "x", "key": "k"}}}
    status = client.run({"workflow": datas_only})
    assert status["status"] == "COMPLETED"
    assert status["output"] == {"status": "success_no_images", "images": []}

    partial = {
        **workflows.invert(0),
        "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "lost"}},
    }
    status = client.run({"workflow": partial})
    assert status["status"] == "COMPLETED" and len(status["output"]["images"]) == 1
    assert status["output"]["errors"] == [
        "node 4 (SaveImage): Required input is missing: images; not run: output 4 (SaveImage)"
    ]

    broken = workflows.invert(0)
    broken["1"]["inputs"]["width"] = -5
    status = client.run({"workflow": broken})
    assert status["status"] == "FAILED"
    assert status["error"].startswith("validation_failed: node 1 (EmptyImage)")
    details = status["output"]["details"]
    assert isinstance(details, list) and details[0].startswith("Node 1 (EmptyImage): ")


def test_the_comfy_org_key_reaches_api_nodes_and_nothing_else(
    client: WorkerComfyUIClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    workflow = workflows.invert(0)
    workflow["9"] = {"class_type": "TestComfyOrgKey", "inputs": {}}
    plain = replace(client.serve.pipeline.settings, compat=None)
    client.serve.pipeline.settings = plain  # this project's shape, to read datas
    code, status = client.serve.call(
        "POST",
        "runsync?wait=60000",
        {"input": {"workflow": workflow, "api_key_comfy_org": COMFY_ORG_KEY}},
    )
    assert code == 200 and status["status"] == "COMPLETED", status
    expected = hashlib.sha256(COMFY_ORG_KEY.encode()).hexdigest()
    assert status["output"]["datas"]["9"]["key_sha256"] == [expected]
    assert COMFY_ORG_KEY not in json.dumps(status) and COMFY_ORG_KEY not in caplog.text
