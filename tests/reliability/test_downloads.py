"""Downloads that never end: a server that trickles a byte now and then keeps every socket
timeout happy. Each download has a total deadline (its own cap, or the job's remaining
``executionTimeout`` when that is sooner) and gives its I/O thread back when it passes.

A real loopback server trickles the bytes; nothing is mocked."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from comfyui_runpod.executor import Executor
from comfyui_runpod.executor.delivery import DeliverySettings
from comfyui_runpod.executor.errors import JobError
from comfyui_runpod.executor.inputs import MediaSettings, materialize
from comfyui_runpod.executor.models import ModelCache, ModelSettings, ModelSpec
from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings
from comfyui_runpod.executor.request import InputMedia
from comfyui_runpod.nodes.storage import BucketConfig
from reliability_kit import Trickle


@pytest.fixture
def trickle() -> Iterator[Trickle]:
    server = Trickle()
    yield server
    server.stop()


@pytest.fixture
def pipeline(executor: Executor, tmp_path: Path) -> Callable[..., Pipeline]:
    def make(**models: Any) -> Pipeline:
        settings = PipelineSettings(
            delivery=DeliverySettings(local_dir=tmp_path / "out"),
            media=MediaSettings(allow_private_urls=True, url_timeout_s=5.0),
            environ={},
            models=ModelSettings(
                tmp_path / "models", allow_private_urls=True, read_timeout_s=5.0, **models
            ),
        )
        return Pipeline(executor, settings)

    return make


@pytest.mark.parametrize("path", ["/body.png", "/headers.png"])
def test_an_input_download_ends_at_its_deadline(
    tmp_path: Path, trickle: Trickle, path: str
) -> None:
    settings = MediaSettings(allow_private_urls=True, url_timeout_s=5.0, download_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(JobError) as caught:
        materialize([InputMedia("in.png", trickle.url + path)], tmp_path, settings)
    assert time.monotonic() - started < 2.5
    assert caught.value.code == "invalid_input"
    assert caught.value.message == (
        "input image in.png: the download from 127.0.0.1 did not finish within 1 s "
        "(--media-download-timeout)"
    )
    assert trickle.hung_up.wait(2), "the connection was left open"


@pytest.mark.parametrize("path", ["/body.safetensors", "/headers.safetensors"])
def test_a_model_download_ends_at_its_deadline(tmp_path: Path, trickle: Trickle, path: str) -> None:
    cache = ModelCache(
        ModelSettings(tmp_path, allow_private_urls=True, read_timeout_s=5.0, download_timeout_s=1.0)
    )
    spec = ModelSpec(trickle.url + path + "?sig=hidden", "loras", "slow.safetensors")
    started = time.monotonic()
    with pytest.raises(JobError) as caught:
        cache.ensure(spec)
    assert time.monotonic() - started < 2.5
    assert caught.value.code == "model_download_failed"
    assert caught.value.message == (
        f"model slow.safetensors from {trickle.url}{path}: the download did not finish "
        "within 1 s (--model-download-timeout)"
    )
    assert trickle.hung_up.wait(2), "the connection was left open"
    assert not cache.path_of(spec).exists()


def test_an_s3_model_download_ends_at_its_deadline(tmp_path: Path, trickle: Trickle) -> None:
    cache = ModelCache(ModelSettings(tmp_path, download_timeout_s=1.0))
    bucket = BucketConfig(trickle.url, "AKIDTRICKLE", "not-a-secret", "b")
    spec = ModelSpec("s3://b/body.safetensors", "loras", "slow.safetensors")
    started = time.monotonic()
    with pytest.raises(JobError) as caught:
        cache.ensure(spec, bucket=bucket)
    assert time.monotonic() - started < 2.5
    assert caught.value.message == (
        "model slow.safetensors from s3://b/body.safetensors: the download did not finish "
        "within 1 s (--model-download-timeout)"
    )
    assert trickle.hung_up.wait(2), "the connection was left open"


@pytest.mark.parametrize("kind", ["image", "model"])
def test_a_download_ends_with_the_jobs_execution_timeout(
    pipeline: Callable[..., Pipeline], trickle: Trickle, tiny_checkpoint: str, kind: str
) -> None:
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    job: dict[str, Any] = {"workflow": workflow}
    if kind == "image":
        job["images"] = [{"name": "in.png", "image": f"{trickle.url}/body.png"}]
    else:
        job["models"] = [{"url": f"{trickle.url}/body.safetensors", "folder": "loras"}]
    started = time.monotonic()
    result = pipeline().run_sync(
        {"id": f"slow-{kind}", "input": job, "policy": {"executionTimeout": 1500}}
    )
    assert time.monotonic() - started < 4
    pattern = r"did not finish within [\d.]+ s \(the job's policy\.executionTimeout\)$"
    assert re.search(pattern, result["error"]), result
    assert result["error_code"] == ("invalid_input" if kind == "image" else "model_download_failed")
    assert trickle.hung_up.wait(2), "the connection was left open"
