"""Delivery without keys: presigned PUT URLs (``input.toUrls``), re-encoded images
(``input.output_format``), one destination per job, and unknown ``input`` fields named.

Real parts throughout: a real ComfyUI makes the files, moto's S3 server signs and stores
the presigned PUTs, a loopback http.server stands for "any PUT endpoint", PIL decodes.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import workflows
from comfyui_runpod.executor.errors import JobError
from comfyui_runpod.executor.request import KNOWN_INPUT_FIELDS, parse_job
from httpkit import QuietHandler, start_http, stop_http
from PIL import Image
from s3server import S3Server, bucket_contract


def colors(data: bytes) -> set[tuple[int, int, int]]:
    with Image.open(io.BytesIO(data)) as image:
        return {color for _, color in image.convert("RGB").getcolors(maxcolors=1 << 24)}


def presigned_puts(s3: S3Server, bucket: str, keys: list[str], content_type: str) -> list[str]:
    # moto stores 0 bytes for a presigned PUT signed without its Content-Type.
    client = s3.client()
    return [
        client.generate_presigned_url(
            "put_object",
            Params={"Bucket": bucket, "Key": key, "ContentType": content_type},
            ExpiresIn=600,
        )
        for key in keys
    ]


class PutRecorder(QuietHandler):
    """Any PUT endpoint: records each PUT; ``/deny`` answers 403."""

    received: dict[str, tuple[str, bytes]]

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.startswith("/deny"):
            self.send_error(403, "signature expired")
            return
        self.received[self.path] = (self.headers["Content-Type"], body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def put_server() -> Iterator[tuple[str, dict[str, tuple[str, bytes]]]]:
    received: dict[str, tuple[str, bytes]] = {}
    handler = type("Handler", (PutRecorder,), {"received": received})
    server = start_http(handler)
    yield f"http://127.0.0.1:{server.server_port}", received
    stop_http(server)


# --- 1. input.toUrls ---------------------------------------------------------------------


def test_to_urls_presigned_s3_puts_each_file_in_order(make_pipeline, s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket("presigned")
    keys = ["out/a.png", "out/b.png", "out/spare.png"]
    urls = presigned_puts(s3_server, bucket, keys, "image/png")
    job = {"id": "urls", "input": {"workflow": workflows.invert(0, batch=2), "toUrls": urls}}
    result = make_pipeline().run_sync(job)
    assert "error" not in result, result
    assert result["files"] == [url.split("?", 1)[0] for url in urls[:2]]
    assert all("?" not in entry and "Signature" not in entry for entry in result["files"])
    assert [i["delivered"] for i in result["file_info"]] == ["urls", "urls"]
    assert [i["name"] for i in result["file_info"]] == ["inv_00001_.png", "inv_00002_.png"]
    assert any("toUrls[2:] not used" in w and "1 of 3" in w for w in result["warnings"])
    client = s3_server.client()
    for key in keys[:2]:
        stored = client.get_object(Bucket=bucket, Key=key)
        assert stored["ContentType"] == "image/png"
        assert colors(stored["Body"].read()) == {(255, 255, 255)}
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="out/spare")


def test_to_urls_any_put_endpoint_gets_bytes_and_content_type(make_pipeline, put_server) -> None:
    base, received = put_server
    job = {
        "id": "anyput",
        "input": {"workflow": workflows.invert(0x102030), "toUrls": [f"{base}/up/x?token=s3cr3t"]},
    }
    result = make_pipeline().run_sync(job)
    assert result["files"] == [f"{base}/up/x"]
    content_type, body = received["/up/x?token=s3cr3t"]
    assert content_type == "image/png"
    assert colors(body) == {(0xEF, 0xDF, 0xCF)}
    assert "warnings" not in result


def test_more_outputs_than_urls_fails_and_keeps_files(make_pipeline, put_server) -> None:
    base, received = put_server
    job = {
        "id": "short",
        "input": {"workflow": workflows.invert(0, batch=3), "toUrls": [f"{base}/1", f"{base}/2"]},
    }
    result = make_pipeline().run_sync(job)
    assert result["error_code"] == "upload_failed"
    assert "made 3 output files but input.toUrls has 2 URLs" in result["error"]
    assert result["details"]["files"] == 3 and result["details"]["urls"] == 2
    kept = result["details"]["kept_files"]
    assert len(kept) == 3 and all(Path(p).is_file() for p in kept)
    assert received == {}  # nothing half-delivered


def test_private_url_refused_without_flag_and_query_redacted(make_pipeline, put_server) -> None:
    base, received = put_server
    job = {
        "id": "private",
        "input": {
            "workflow": workflows.invert(0),
            "toUrls": [f"{base}/p?X-Amz-Signature=SECRETSIG"],
        },
    }
    result = make_pipeline(allow_private_urls=False).run_sync(job)
    assert result["error_code"] == "upload_failed"
    assert "private" in result["error"] and "--allow-private-urls" in result["error"]
    assert "SECRETSIG" not in json.dumps(result)
    assert Path(result["details"]["kept_files"][0]).is_file()
    assert received == {}


def test_put_rejected_reports_status_without_signature(make_pipeline, put_server) -> None:
    base, _ = put_server
    job = {
        "id": "denied",
        "input": {"workflow": workflows.invert(0), "toUrls": [f"{base}/deny?sig=SECRETSIG"]},
    }
    result = make_pipeline().run_sync(job)
    assert result["error"].startswith("upload_failed: could not PUT inv_00001_.png to ")
    assert "HTTP 403" in result["error"] and f"{base}/deny" in result["error"]
    assert "SECRETSIG" not in json.dumps(result)
    assert Path(result["details"]["kept_files"][0]).is_file()


# --- 4. one destination --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "other"),
    [({"tobase64": True}, "input.tobase64"), ({"tobucket": {"bucketName": "b"}}, "input.tobucket")],
)
def test_to_urls_with_another_destination_is_invalid(extra: dict, other: str) -> None:
    job = {"input": {"workflow": workflows.invert(0), "toUrls": ["https://x.example/a"], **extra}}
    with pytest.raises(JobError) as caught:
        parse_job(job, {})
    assert caught.value.code == "invalid_input"
    assert f"input.toUrls or {other}, not both" in caught.value.message


@pytest.mark.parametrize(
    "urls", [[], "https://x.example/a", ["ftp://x.example/a"], [3], ["https://u:p@x.example/a"]]
)
def test_to_urls_must_be_http_urls(urls: object) -> None:
    with pytest.raises(JobError) as caught:
        parse_job({"input": {"workflow": workflows.invert(0), "toUrls": urls}}, {})
    assert caught.value.code == "invalid_input" and "input.toUrls" in caught.value.message


def test_destination_is_decided_in_one_place(s3_server: S3Server) -> None:
    workflow = workflows.invert(0)
    env_bucket = {
        "BUCKET_ENDPOINT_URL": f"{s3_server.endpoint_url}/b",
        "BUCKET_ACCESS_KEY_ID": "k",
        "BUCKET_SECRET_ACCESS_KEY": "s",
    }
    urls = ["https://x.example/a"]
    assert parse_job({"input": {"workflow": workflow}}, {}).destination == "local"
    assert (
        parse_job({"input": {"workflow": workflow, "tobase64": True}}, {}).destination == "base64"
    )
    assert parse_job({"input": {"workflow": workflow}}, env_bucket).destination == "bucket"
    # The job's own URLs win over the operator's bucket (which still serves inputs).
    assert parse_job({"input": {"workflow": workflow, "toUrls": urls}}, env_bucket).destination == (
        "urls"
    )


# --- 2. input.output_format ----------------------------------------------------------------


def noise_job(job_id: str, output_format: dict | None, size: int = 64) -> dict:
    rng = random.Random(7)
    image = Image.new("RGB", (size, size))
    image.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(size * size)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    job_input: dict = {
        "workflow": workflows.load_and_save("noise.png"),
        "images": [{"name": "noise.png", "image": base64.b64encode(buffer.getvalue()).decode()}],
        "tobase64": True,
    }
    if output_format is not None:
        job_input["output_format"] = output_format
    return {"id": job_id, "input": job_input}


def decoded(result: dict) -> tuple[bytes, Image.Image]:
    assert "error" not in result, result
    [entry] = result["files"]
    data = base64.b64decode(entry)
    image = Image.open(io.BytesIO(data))
    image.load()
    return data, image


@pytest.mark.parametrize(
    ("fmt", "pil", "ext", "mime"),
    [("webp", "WEBP", ".webp", "image/webp"), ("jpeg", "JPEG", ".jpg", "image/jpeg")],
)
def test_output_format_lossy(make_pipeline, fmt: str, pil: str, ext: str, mime: str) -> None:
    pipeline = make_pipeline()
    high, image = decoded(pipeline.run_sync(noise_job("hi", {"format": fmt, "quality": 95})))
    assert (image.format, image.size, image.mode) == (pil, (64, 64), "RGB")
    # The prompt travels as ComfyUI's savers write it: EXIF 0x0110 "prompt:<json>".
    prompt = image.getexif()[0x0110]
    assert prompt.startswith("prompt:")
    assert json.loads(prompt.removeprefix("prompt:"))["2"]["class_type"] == "SaveImage"
    result = pipeline.run_sync(noise_job("lo", {"format": fmt, "quality": 10}))
    low, _ = decoded(result)
    assert len(low) < len(high) * 0.7
    [info] = result["file_info"]
    assert info["name"].endswith(ext) and info["content_type"] == mime
    assert info["size"] == len(low)


def test_output_format_png_keeps_text_chunks(make_pipeline) -> None:
    _, image = decoded(make_pipeline().run_sync(noise_job("png", {"format": "png"})))
    assert (image.format, image.size, image.mode) == ("PNG", (64, 64), "RGB")
    assert json.loads(image.text["prompt"])["1"]["class_type"] == "LoadImage"


def test_output_format_leaves_other_files_alone(make_pipeline, put_server) -> None:
    """Only still images change; the bytes reach a PUT URL under the new type."""
    base, received = put_server
    job = noise_job("put-webp", {"format": "webp", "quality": 50})
    del job["input"]["tobase64"]
    job["input"]["toUrls"] = [f"{base}/img"]
    job["input"]["workflow"]["3"] = {
        "class_type": "RunPodCaptureData",
        "inputs": {"value": "a caption", "key": "text"},
    }
    result = make_pipeline().run_sync(job)
    assert result["datas"] == {"3": {"text": ["a caption"]}}
    content_type, body = received["/img"]
    assert content_type == "image/webp" and Image.open(io.BytesIO(body)).format == "WEBP"


@pytest.mark.parametrize(
    "value",
    [
        {"format": "gif"},
        {"format": "webp", "quality": 0},
        {"format": "jpeg", "quality": 101},
        {"format": "jpeg", "quality": "high"},
        {"format": "png", "lossless": True},
        "webp",
    ],
)
def test_output_format_invalid(value: object) -> None:
    with pytest.raises(JobError) as caught:
        parse_job({"input": {"workflow": workflows.invert(0), "output_format": value}}, {})
    assert caught.value.code == "invalid_input" and "input.output_format" in caught.value.message


# --- 5. unknown input fields ----------------------------------------------------------------


def test_unknown_input_fields_are_logged_and_warned(make_pipeline, caplog) -> None:
    job = {"id": "typo", "input": {"workflow": workflows.invert(0), "toBase64": True}}
    with caplog.at_level(logging.WARNING):
        result = make_pipeline().run_sync(job)
    assert "error" not in result
    assert result["warnings"] == ["input fields ignored (unknown): toBase64"]
    assert any("toBase64" in r.getMessage() and "typo" in r.getMessage() for r in caplog.records)


def test_known_input_fields_are_not_flagged(s3_server: S3Server) -> None:
    job_input = {
        "workflow": workflows.invert(0),
        "overrides": {"1.color": 3},
        "tobase64": False,
        "tobucket": bucket_contract(s3_server, "b"),
        "images": [],
        "files": [],
        "models": [],
        "previews": False,
        "api_key_comfy_org": "k",
        "comfy_org_api_key": "k",
        "check": False,
        "fetch_models": False,
        "output_format": {"format": "png"},
    }
    assert parse_job({"input": job_input}, {}, allow_private_urls=True).warnings == []
    app_job = {"app": "x", "params": {}, "toUrls": ["https://x.example/a"]}
    assert parse_job({"input": app_job}, {}).warnings == []
    # toazure (one destination, so not with these): test_delivery_azure.py.
    assert set(job_input) | set(app_job) | {"toazure"} == KNOWN_INPUT_FIELDS


def test_worker_comfyui_compat_keeps_to_urls() -> None:
    """--compat worker-comfyui turns on base64 only when the job names no destination."""
    from comfyui_runpod.executor import compat

    job = compat.prepare_job(
        {"input": {"workflow": workflows.invert(0), "toUrls": ["https://x.example/a"]}}
    )
    assert parse_job(job, {}).destination == "urls"
    info = {"kind": "images", "name": "a.png", "delivered": "urls"}
    shaped = compat.shape_result({"files": ["https://x.example/a"], "file_info": [info]})
    assert shaped["images"][0]["type"] == "s3_url"
