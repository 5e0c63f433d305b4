"""RunPod Remote Submit: desktop ComfyUI (the in-process executor) → real HTTP → a real
``comfyui-runpod serve`` process on loopback standing in for a RunPod endpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import workflows
from comfyui_runpod.executor import Executor
from PIL import Image
from tinymodel import cache_folder

TESTS = Path(__file__).resolve().parent
API_KEY = "rp-test-key-31337"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def serve_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """A separate ComfyUI behind ``serve`` (the desktop one cannot run its own remote jobs)."""
    port = free_port()
    folder = tmp_path_factory.mktemp("serve")
    command = [sys.executable, "-m", "comfyui_runpod", "serve", "--cpu", "--port", str(port)]
    command += ["--custom-nodes", str(TESTS / "custom_nodes"), "--out", str(folder / "out")]
    command += ["--apps", str(TESTS / "apps")]
    models = folder / "extra_model_paths.yaml"  # the tiny checkpoint, once a test built it
    models.write_text(json.dumps({"tests": {"checkpoints": str(cache_folder())}}))
    command += ["--extra-model-paths", str(models)]
    env = {**os.environ, "COMFYUI_RUNPOD_API_KEY": API_KEY}
    log = (folder / "serve.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}/v2"
    health = urllib.request.Request(
        f"{base}/local/health", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(health, timeout=2):
                break
        except OSError:
            assert process.poll() is None, (folder / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.25)
    yield base, process
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def endpoint(serve_process: tuple[str, subprocess.Popen]) -> str:
    return serve_process[0]


@pytest.fixture
def remote_env(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RUNPOD_ENDPOINT_BASE_URL", endpoint)
    monkeypatch.setenv("RUNPOD_API_KEY", API_KEY)
    return endpoint


def health(base: str) -> dict:
    request = urllib.request.Request(
        f"{base}/local/health", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def remote_node(remote_workflow: dict, **inputs: object) -> dict:
    return {
        "class_type": "RunPodRemoteSubmit",
        "inputs": {
            "endpoint_id": "local",
            "workflow": json.dumps(remote_workflow),
            "count": 1,
            "timeout_s": 120,
            **inputs,
        },
    }


def desktop(remote: dict) -> dict:
    """Remote Submit → SaveImage, and its datas and job ids captured."""
    return {
        "1": remote,
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "r"}},
        "3": {"class_type": "RunPodCaptureData", "inputs": {"value": ["1", 1], "key": "datas"}},
        "4": {"class_type": "RunPodCaptureData", "inputs": {"value": ["1", 2], "key": "ids"}},
    }


def levels(result) -> list[int]:
    found = []
    for output in result.files:
        with Image.open(output.path) as image:
            found.append(image.getpixel((0, 0))[0])
    return found


def seed_workflow(seed: int) -> dict:
    return {
        "1": {"class_type": "TestSeedImage", "inputs": {"seed": seed}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "s"}},
        "3": {"class_type": "RunPodCaptureData", "inputs": {"value": "hi", "key": "note"}},
    }


def test_fan_out_runs_one_job_per_seed_and_batches_the_images(
    executor: Executor, remote_env: str
) -> None:
    events: list[dict] = []
    result = executor.run(
        desktop(remote_node(seed_workflow(10), count=3)),
        executor.workspace("fan-out"),
        on_progress=events.append,
    )
    assert result.error is None, result.error
    bar = [(e["step"], e["max"]) for e in events if e["event"] == "step" and e["node"] == "1"]
    assert bar and bar[-1] == (300, 300)  # the remote jobs' percentages, summed
    assert sorted(levels(result)) == [10, 11, 12]
    assert levels(result) == [10, 11, 12]  # job order is kept
    ids = result.datas["4"]["ids"][0].split("\n")
    assert len(ids) == 3 and len(set(ids)) == 3
    assert json.loads(result.datas["3"]["datas"][0]) == {i: {"3": {"note": ["hi"]}} for i in ids}


def test_input_images_and_overrides_reach_the_remote_workflow(
    executor: Executor, remote_env: str
) -> None:
    remote = workflows.load_and_save("input_0.png")
    prompt = desktop(remote_node(remote))
    prompt["5"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x2A2A2A},
    }
    prompt["1"]["inputs"]["images"] = ["5", 0]
    result = executor.run(prompt, executor.workspace("remote-input"))
    assert result.error is None, result.error
    assert levels(result) == [0x2A]

    overridden = desktop(remote_node(seed_workflow(1), overrides='{"1.seed": 77}'))
    result = executor.run(overridden, executor.workspace("remote-override"))
    assert levels(result) == [77]


def test_app_mode_sends_app_and_params_instead_of_a_workflow(
    executor: Executor, remote_env: str
) -> None:
    remote = remote_node({}, workflow="", app="color", params='{"color": 2105376, "size": 4}')
    result = executor.run(
        desktop({**remote, "inputs": {**remote["inputs"], "count": 2}}),
        executor.workspace("remote-app"),
    )
    assert result.error is None, result.error
    assert levels(result) == [255 - 0x20, 255 - 0x20]  # the app inverts its colour
    bad = remote_node({}, workflow="", app="color", params='{"colour": 1}')
    result = executor.run(desktop(bad), executor.workspace("remote-app-bad"))
    assert result.error is not None and "colour: no such parameter" in result.error.message


def test_remote_error_becomes_a_node_error(executor: Executor, remote_env: str) -> None:
    broken = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    result = executor.run(desktop(remote_node(broken)), executor.workspace("remote-error"))
    assert result.error is not None and result.error.code == "execution_failed"
    assert "node 1 (RunPodRemoteSubmit)" in result.error.message
    assert "FAILED: validation_failed: unknown node type" in result.error.message


def test_wrong_api_key_is_reported(
    executor: Executor, remote_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "wrong")
    result = executor.run(desktop(remote_node(seed_workflow(1))), executor.workspace("auth"))
    assert result.error is not None and "401 unauthorized" in result.error.message
    assert "wrong" not in result.error.message


def test_cancel_on_the_desktop_cancels_the_remote_jobs(executor: Executor, remote_env: str):
    submitted = threading.Event()

    def on_progress(event: dict) -> None:
        if event["event"] == "step":
            submitted.set()

    handle = executor.submit(
        desktop(remote_node(workflows.slow(steps=400, delay=0.05), count=2)),
        executor.workspace("remote-cancel"),
        on_progress=on_progress,
    )
    assert submitted.wait(60)
    handle.cancel()
    result = handle.future.result(timeout=30)
    assert result.error is not None and result.error.code == "cancelled"
    deadline = time.monotonic() + 10
    while health(remote_env)["jobs"]["inProgress"] or health(remote_env)["jobs"]["inQueue"]:
        assert time.monotonic() < deadline, health(remote_env)
        time.sleep(0.2)


def test_remote_previews_show_on_the_nodes_progress(
    executor: Executor, remote_env: str, tiny_checkpoint: str
) -> None:
    """Remote Submit asks for live previews and hands each new one to ComfyUI's progress bar
    (what the desktop draws on the node); the progress hook here sees it."""
    from comfyui_runpod.nodes.imaging import preview_image

    events: list[dict] = []
    result = executor.run(
        # Enough steps that the node's polls find the remote job sampling.
        desktop(remote_node(workflows.tiny_sd(tiny_checkpoint, steps=60))),
        executor.workspace("remote-previews"),
        on_progress=events.append,
        previews=True,
    )
    assert result.error is None, result.error
    shown = [
        e["preview"] for e in events if e.get("class") == "RunPodRemoteSubmit" and "preview" in e
    ]
    assert shown, [e for e in events if e["event"] == "step"]
    assert preview_image(shown[0]).size == (8, 8)


def test_remote_submit_example_runs(executor: Executor, remote_env: str) -> None:
    example = TESTS.parent / "examples" / "remote_submit.json"
    result = executor.run(json.loads(example.read_text()), executor.workspace("example"))
    assert result.error is None, result.error
    assert levels(result) == [0xFF - 0x12, 0xFF - 0x12]  # invert of colour 0x123456, twice
    datas = json.loads(result.datas["3"]["remote_datas"][0])
    assert list(datas.values()) == [{"4": {"note": ["model-free example"]}}] * 2


def test_a_saved_workflow_is_sent_as_it_is_and_converted_remotely(
    executor: Executor, remote_env: str
) -> None:
    oracle = Path(__file__).parent / "oracle" / "cases" / "invert_plain.json"
    saved = json.loads(oracle.read_text())["workflow"]
    node = remote_node(saved, overrides='{"1.color": 2763306}')  # 0x2A2A2A, then inverted
    result = executor.run(desktop(node), executor.workspace("remote-saved"))
    assert result.error is None, result.error
    assert levels(result) == [255 - 0x2A]


def test_a_remote_output_that_did_not_run_is_logged(
    executor: Executor, remote_env: str, caplog: pytest.LogCaptureFixture
) -> None:
    partial = {
        **workflows.invert(0x123456),
        "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "lost"}},
    }
    result = executor.run(desktop(remote_node(partial)), executor.workspace("remote-partial"))
    assert result.error is None, result.error
    assert levels(result) == [0xFF - 0x12]
    assert "not run: output 4 (SaveImage)" in caplog.text


def test_sigterm_during_a_job_stops_serve_cleanly(serve_process) -> None:
    """Runs last in this module: it stops the shared server."""
    base, process = serve_process
    job = json.dumps({"input": {"workflow": workflows.slow(steps=400, delay=0.05)}}).encode()
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    request = urllib.request.Request(f"{base}/local/run", data=job, headers=headers)
    with urllib.request.urlopen(request) as response:
        assert json.load(response)["status"] == "IN_QUEUE"
    deadline = time.monotonic() + 10
    while not health(base)["jobs"]["inProgress"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    began = time.perf_counter()
    process.terminate()
    assert process.wait(timeout=15) == 0
    assert time.perf_counter() - began < 10  # not the job's remaining ~20 s
