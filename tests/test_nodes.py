"""The node pack: S3 Upload and Capture Data, inside jobs and on the desktop."""

from __future__ import annotations

import io
import json
import urllib.request
import wave
from pathlib import Path

import pytest
import torch
import workflows
from comfyui_runpod import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_runpod.nodes.capture import to_json_safe
from comfyui_runpod.nodes.s3_upload import S3Upload
from PIL import Image
from s3server import TEST_ACCESS_ID, TEST_ACCESS_SECRET, S3Server, bucket_contract


def fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url) as response:
        return response.read(), response.headers["Content-Type"]


def upload_workflow(fmt: str = "png", color: int = 0x336699) -> dict:
    prompt = workflows.invert(color)
    prompt["5"] = {
        "class_type": "RunPodS3Upload",
        "inputs": {"images": ["1", 0], "name_prefix": "up", "format": fmt, "quality": 90},
    }
    return prompt


@pytest.fixture
def desktop_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    bucket = s3_server.make_bucket("desktop")
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", TEST_ACCESS_ID)
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", TEST_ACCESS_SECRET)
    monkeypatch.setenv("BUCKET_NAME", bucket)
    return bucket


def test_every_node_follows_comfyui_conventions(executor) -> None:  # Image lists the inputs
    inputs = {f"RunPodInput{kind}" for kind in ("String", "Int", "Float", "Boolean", "Choice")}
    inputs.add("RunPodInputImage")
    outputs = {"RunPodS3Upload", "RunPodCaptureData", "RunPodRemoteSubmit"}
    assert set(NODE_CLASS_MAPPINGS) == outputs | inputs
    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert (
            cls.CATEGORY == "RunPod/inputs"
            if name in inputs
            else cls.CATEGORY.startswith("RunPod/")
        )
        assert "RunPod" in NODE_DISPLAY_NAME_MAPPINGS[name]
        assert cls.DESCRIPTION and bool(getattr(cls, "OUTPUT_NODE", False)) == (name in outputs)
        assert len(cls.OUTPUT_TOOLTIPS) in (1, len(cls.RETURN_TYPES))
        for group in cls.INPUT_TYPES().values():
            for input_name, spec in group.items():
                assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
                assert "secret" not in input_name and "key_id" not in input_name


def test_s3_upload_in_a_job_uses_the_jobs_bucket(make_pipeline, s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket("node-job")
    job = {
        "id": "node-1",
        "input": {"workflow": upload_workflow(), "tobucket": bucket_contract(s3_server, bucket)},
    }
    result = make_pipeline().run_sync(job)
    assert "error" not in result, result.get("error")
    saved_url, uploaded_url = result["files"]
    assert "/generations/node-1/inv_00001_.png" in saved_url
    assert "/generations/node-1/up_" in uploaded_url
    assert result["datas"]["5"] == {"urls": [uploaded_url]}
    data, content_type = fetch(uploaded_url)
    assert content_type == "image/png"
    with Image.open(io.BytesIO(data)) as image:
        assert image.getpixel((0, 0)) == (0x33, 0x66, 0x99)
    assert result["file_info"][1]["kind"] == "upload"


def test_s3_upload_webp_content_type(make_pipeline, s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket("node-webp")
    job = {
        "id": "node-2",
        "input": {
            "workflow": upload_workflow("webp"),
            "tobucket": bucket_contract(s3_server, bucket),
        },
    }
    url = make_pipeline().run_sync(job)["files"][1]
    data, content_type = fetch(url)
    assert content_type == "image/webp" and url.split("?")[0].endswith(".webp")
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "WEBP"


def test_s3_upload_without_a_bucket_says_how_to_configure_one(make_pipeline) -> None:
    result = make_pipeline().run_sync({"id": "nb", "input": {"workflow": upload_workflow()}})
    assert result["error"].startswith("execution_failed: node 5 (RunPodS3Upload) raised")
    assert "no bucket configured" in result["error"] and "input.tobucket" in result["error"]


def test_s3_upload_on_the_desktop_from_env(executor, desktop_bucket: str, s3_server) -> None:
    image = torch.zeros((2, 4, 4, 3))
    image[1] = 1.0
    (urls,) = S3Upload().upload("desk", "png", 95, images=image)["result"]
    first, second = urls.split("\n")
    assert "/comfyui/" in first
    with Image.open(io.BytesIO(fetch(second)[0])) as picture:
        assert picture.getpixel((1, 1)) == (255, 255, 255)


def test_s3_upload_audio_as_wav(executor, desktop_bucket: str) -> None:
    waveform = torch.linspace(-1, 1, 800).reshape(1, 2, 400)
    (url,) = S3Upload().upload("a", "png", 95, audio={"waveform": waveform, "sample_rate": 8000})[
        "result"
    ]
    data, content_type = fetch(url)
    assert content_type in ("audio/wav", "audio/x-wav")
    with wave.open(io.BytesIO(data)) as clip:
        assert (clip.getnchannels(), clip.getframerate(), clip.getnframes()) == (2, 8000, 400)


def test_s3_upload_file_path_only_from_the_output_folder(executor, desktop_bucket: str) -> None:
    output = executor.comfy.output_dir / "clip.mp4"
    output.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (url,) = S3Upload().upload("v", "png", 95, file_path="clip.mp4")["result"]
    data, content_type = fetch(url)
    assert data == output.read_bytes() and content_type == "video/mp4"
    for outside in ["/etc/hostname", "../job-inputs/x.png"]:
        with pytest.raises(ValueError, match="not a file in the output folder"):
            S3Upload().upload("v", "png", 95, file_path=outside)


def test_capture_data_values_land_in_datas(make_pipeline) -> None:
    prompt = workflows.invert(0)
    values = {"10": "a caption", "11": 42, "12": 0.5, "13": True, "14": {"a": {"b": [1, 2]}}}
    for node_id, value in values.items():
        prompt[node_id] = {
            "class_type": "RunPodCaptureData",
            "inputs": {"value": value, "key": f"k{node_id}"},
        }
    prompt["15"] = {"class_type": "RunPodCaptureData", "inputs": {"value": ["2", 0], "key": "img"}}
    result = make_pipeline().run_sync({"id": "cap", "input": {"workflow": prompt}})
    assert "error" not in result, result.get("error")
    for node_id, value in values.items():
        assert result["datas"][node_id] == {f"k{node_id}": [value]}
    assert result["datas"]["15"] == {
        "img": [{"type": "Tensor", "shape": [1, 8, 8, 3], "dtype": "torch.float32"}]
    }


def test_capture_data_keeps_json_small_and_safe() -> None:
    latent = {"samples": torch.zeros((1, 4, 8, 8))}
    assert to_json_safe(latent) == {
        "samples": {"type": "Tensor", "shape": [1, 4, 8, 8], "dtype": "torch.float32"}
    }
    assert len(to_json_safe(list(range(10_000)))) == 1000
    assert to_json_safe(float("nan")) == "nan"
    assert to_json_safe(object()).startswith("<object object")


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_example_workflows_run(make_pipeline, s3_server: S3Server) -> None:
    """Every example that needs no remote endpoint runs as documented (remote: test_remote)."""
    job = json.loads((EXAMPLES / "test_input.json").read_text())
    result = make_pipeline().run_sync(job)
    assert result["datas"] == {"4": {"note": ["model-free example"]}}
    assert len(result["files"]) == 1 and not result["files"][0].startswith("http")

    bucket = s3_server.make_bucket("examples")
    workflow = json.loads((EXAMPLES / "s3_upload.json").read_text())
    job = {
        "id": "ex",
        "input": {"workflow": workflow, "tobucket": bucket_contract(s3_server, bucket)},
    }
    result = make_pipeline().run_sync(job)
    assert "error" not in result, result.get("error")
    assert len(result["files"]) == 2 and result["datas"]["2"]["urls"] == result["files"]
    assert result["datas"]["3"]["uploaded"] == ["\n".join(result["files"])]
