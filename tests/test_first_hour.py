"""What a newcomer's first mistakes answer (#28): a wrong URL on ``serve``, the Remote
Submit example without a running endpoint, an empty desktop graph. Each answer says what
to do instead."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from aiohttp import web
from comfyui_runpod.executor import Executor
from comfyui_runpod.nodes import desktop as desktop_module
from comfyui_runpod.nodes import runpod_api
from comfyui_runpod.nodes.runpod_api import RunPodClient, RunPodError
from httpkit import http
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
INVERT = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
}


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("path", ["/", "/v2/other/health", "/v2/local/nope"])
def test_an_unknown_route_on_serve_points_to_the_endpoint(serve, path: str) -> None:
    running = serve()
    status, body = http("GET", f"{running.url}{path}")
    assert status == 404
    assert body["error"].startswith(f"no route GET {path}: this server's endpoint is /v2/local/")
    assert "/v2/local/runsync" in body["error"] and "/v2/local/health" in body["error"]


def test_an_unknown_route_names_a_custom_endpoint_id(serve) -> None:
    running = serve(endpoint_id="mine")
    status, body = http("GET", f"{running.url}/v2/local/health")
    assert status == 404 and "this server's endpoint is /v2/mine/" in body["error"]


def status_error(base_url: str | None = None) -> str:
    async def call() -> None:
        async with RunPodClient("local", base_url=base_url) as client:
            await client.status("job-1")

    with pytest.raises(RunPodError) as caught:
        asyncio.run(call())
    return str(caught.value)


def test_an_unreachable_base_url_from_env_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    base = f"http://127.0.0.1:{closed_port()}/v2"
    monkeypatch.setenv("RUNPOD_ENDPOINT_BASE_URL", base)
    error = status_error()
    assert f"cannot connect to {base}/local/status/job-1" in error
    assert f"RUNPOD_ENDPOINT_BASE_URL={base}" in error and "comfyui-runpod serve" in error


def test_the_default_base_url_says_how_to_use_a_local_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RunPod's own API cannot be reached from here; a closed port stands in for it."""
    monkeypatch.delenv("RUNPOD_ENDPOINT_BASE_URL", raising=False)
    monkeypatch.setattr(runpod_api, "DEFAULT_BASE_URL", f"http://127.0.0.1:{closed_port()}/v2")
    error = status_error()
    assert "RUNPOD_ENDPOINT_BASE_URL is unset" in error
    assert "set RUNPOD_ENDPOINT_BASE_URL=http://127.0.0.1:8000/v2" in error


def test_a_given_base_url_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPOD_ENDPOINT_BASE_URL", "http://elsewhere.invalid/v2")
    base = f"http://127.0.0.1:{closed_port()}/v2"
    error = status_error(base)
    assert f"cannot connect to {base}/local/status/job-1" in error
    assert "RUNPOD_ENDPOINT_BASE_URL" not in error and "is the endpoint running" in error


def test_the_remote_submit_example_without_serve_says_what_to_set(
    executor: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = f"http://127.0.0.1:{closed_port()}/v2"
    monkeypatch.setenv("RUNPOD_ENDPOINT_BASE_URL", base)
    example = json.loads((REPO / "examples" / "remote_submit.json").read_text())
    result = executor.run(example, executor.workspace("example-no-serve"))
    assert result.error is not None
    assert f"RUNPOD_ENDPOINT_BASE_URL={base}" in result.error.message


def test_an_empty_desktop_graph_says_it_is_empty(executor: Executor) -> None:
    """The desktop's queue route on a real loopback server (ComfyUI's PromptServer is not
    needed for a refusal)."""

    async def scenario() -> tuple[int, dict]:
        app = web.Application()
        for method, path, handler in desktop_module.Desktop(None).routes():
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            url = f"http://127.0.0.1:{port}/runpod/queue"
            return await asyncio.to_thread(http, "POST", url, {"prompt": {}, "count": 1})
        finally:
            await runner.cleanup()

    status, body = asyncio.run(scenario())
    assert status == 400
    assert body == {"error": "the graph is empty: add nodes, then queue", "code": "invalid"}


def test_a_near_miss_model_folder_names_the_closest(make_pipeline) -> None:
    """``lora`` for ``loras``: the answer names the folder meant, before any download."""
    pipeline = make_pipeline()
    model = {"url": "https://example.invalid/x.safetensors", "folder": "lora"}
    result = pipeline.run_sync({"id": "j", "input": {"workflow": INVERT, "models": [model]}})
    assert result["error_code"] == "invalid_input"
    assert result["error"].endswith(
        "folder 'lora' is not a ComfyUI model folder; did you mean 'loras'?"
    )


def test_a_far_miss_model_folder_lists_the_folders(make_pipeline) -> None:
    pipeline = make_pipeline()
    model = {"url": "https://example.invalid/x.safetensors", "folder": "zzzz"}
    result = pipeline.run_sync({"id": "j", "input": {"workflow": INVERT, "models": [model]}})
    assert "'zzzz' is not a ComfyUI model folder (e.g. checkpoints, loras" in result["error"]
    assert "upscale_models" in result["error"] and "custom_nodes" not in result["error"]


def test_a_missing_load_image_file_says_how_to_send_it(make_pipeline) -> None:
    pipeline = make_pipeline()
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    result = pipeline.run_sync({"id": "j", "input": {"workflow": workflow}})
    assert result["error_code"] == "validation_failed", result
    assert "photo.png" in result["error"]
    assert "input.images" in result["error"] and "--image photo.png=PATH" in result["error"]


def test_run_outputs_keep_the_users_filename_prefix_in_their_metadata(make_pipeline) -> None:
    """The run's folder is prefixed inside the worker so files land in its workspace; the
    PNG's ``prompt`` chunk, which reloads the graph, says what the user wrote."""
    pipeline = make_pipeline()
    workflow = json.loads(json.dumps(INVERT))
    workflow["3"]["inputs"]["filename_prefix"] = "mine/inverted"
    result = pipeline.run_sync({"id": "prefix-job", "input": {"workflow": workflow}})
    assert "error" not in result, result
    [path] = result["files"]
    with Image.open(path) as image:
        prompt = json.loads(image.text["prompt"])
        assert image.size == (8, 8)
    assert prompt["3"]["inputs"]["filename_prefix"] == "mine/inverted"
    assert Path(path).name == "inverted_00001_.png"
