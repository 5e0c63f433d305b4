"""The desktop panel says what the endpoint lacks and fixes what it can: a graph whose
checkpoint only the desktop has fails on a real ``serve`` (which lacks it), the row lists
it in words, and "Fetch models and run" queues it again with the model the saved workflow
names by URL (``properties.models``), fetched from a loopback HTTP server into the
endpoint's model cache. Desktop ComfyUI 0.3.75 with its frontend, driven in chromium."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import workflows
from comfyui_runpod.executor import find_comfyui
from comfyui_runpod.executor.checks import unknown_node_types
from comfyui_runpod.nodes.lacks import lacking
from desktopkit import (
    Desktop,
    Process,
    launch_chromium,
    open_frontend,
    require_chromium,
    start_desktop,
    start_serve,
)
from httpkit import QuietHandler, start_http, stop_http
from PIL import Image
from test_desktop import JOB_IDS, new_job, open_panel, wait_file
from tinymodel import CACHE_FILE, cache_folder

API_KEY = "rp-parity-key-5512"


class ModelHost:
    """The checkpoint over loopback HTTP, as a model host serves it; counts the GETs."""

    def __init__(self, path: Path) -> None:
        self.gets = 0
        host = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                host.gets += 1
                size = path.stat().st_size
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                with path.open("rb") as handle:
                    while chunk := handle.read(1 << 20):
                        self.wfile.write(chunk)

        self.server = start_http(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/models/{path.name}"

    def stop(self) -> None:
        stop_http(self.server)


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[Desktop, Process, ModelHost, Path]]:
    require_chromium()
    if not (cache_folder() / CACHE_FILE).is_file():
        request.getfixturevalue("tiny_checkpoint")  # builds it (boots ComfyUI here, once)
    folder = tmp_path_factory.mktemp("parity")
    host = ModelHost(cache_folder() / CACHE_FILE)
    cache = folder / "model-cache"
    # The endpoint has no checkpoint: only what a job fetches into its cache.
    flags = ["--allow-private-urls", "--model-cache", str(cache)]
    serve = start_serve(folder / "serve", API_KEY, flags=flags)
    env = {
        "COMFYUI_RUNPOD_ENDPOINT_ID": "local",
        "RUNPOD_ENDPOINT_BASE_URL": serve.url,
        "RUNPOD_API_KEY": API_KEY,
    }
    desktop = start_desktop(find_comfyui().path, folder / "desktop", env)
    # The desktop has the checkpoint (the artist's machine): its list offers it.
    checkpoints = folder / "desktop" / "ComfyUI" / "models" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / CACHE_FILE).symlink_to(cache_folder() / CACHE_FILE)
    try:
        deadline = time.monotonic() + 150
        probe = urllib.request.Request(
            f"{serve.url}/local/health", headers={"Authorization": f"Bearer {API_KEY}"}
        )
        serve.wait_ready(probe, deadline)
        desktop.wait_ready(urllib.request.Request(f"{desktop.url}/runpod/settings"), deadline)
        yield desktop, serve, host, cache
    finally:
        desktop.stop()
        serve.stop()
        host.stop()


def test_the_row_lists_the_missing_checkpoint_and_fetches_it_to_run(setup) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    desktop, _, host, cache = setup
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = open_frontend(browser, desktop.url)
        graph = workflows.tiny_sd(CACHE_FILE, steps=1, prefix="fetched")
        page.evaluate("async (g) => { await app.loadApiJson(g, 'needs a model') }", graph)
        # As ComfyUI's frontend saves a template's loader: where its model comes from.
        page.evaluate(
            """([url, name]) => { app.graph.getNodeById(4).properties.models =
                [{name, url, directory: "checkpoints"}] }""",
            [host.url, CACHE_FILE],
        )
        before = set(page.evaluate(JOB_IDS))
        page.evaluate("async () => await app.extensionManager.command.execute('RunPod.Queue')")
        failed = new_job(page, before)
        open_panel(page)
        row = page.locator(f'.runpod-job[data-id="{failed}"]')
        row.locator(".runpod-status", has_text="FAILED").wait_for(timeout=60_000)
        lacks = row.locator(".runpod-lacks li")
        lacks.first.wait_for()
        assert lacks.all_inner_texts() == [
            f"checkpoint {CACHE_FILE} (checkpoints) — can be fetched from 127.0.0.1"
        ]
        button = row.locator(".runpod-fetch")
        assert button.inner_text() == "Fetch models and run" and button.is_visible()
        assert host.gets == 0  # nothing fetched before the artist asks

        before = set(page.evaluate(JOB_IDS))
        button.click()
        again = new_job(page, before)
        page.locator(
            f'.runpod-job[data-id="{again}"] .runpod-status', has_text="COMPLETED"
        ).wait_for(timeout=180_000)
        with Image.open(wait_file(desktop.output / "runpod" / again, "fetched_*.png")) as image:
            assert image.size == (64, 64)
        assert host.gets == 1
        assert (cache / "checkpoints" / CACHE_FILE).stat().st_size == (
            cache_folder() / CACHE_FILE
        ).stat().st_size
        new_row = page.locator(f'.runpod-job[data-id="{again}"]')
        assert not new_row.locator(".runpod-lacks").is_visible()
        assert not new_row.locator(".runpod-fetch").is_visible()
        browser.close()


def test_unknown_node_types_are_named_by_the_pack_the_workflow_saved() -> None:
    """The endpoint's own refusal (executor/checks.py) read with the desktop's saved
    workflow: the pack and version ComfyUI's frontend saved with each node."""
    prompt = {
        "1": {"class_type": "ImpactWildcardProcessor", "inputs": {}},
        "2": {"class_type": "ImpactSwitch", "inputs": {}},
        "3": {"class_type": "MysteryNode", "inputs": {}},
        "4": {"class_type": "SaveImage", "inputs": {}},
    }
    error = unknown_node_types(prompt, {"SaveImage": object})
    output = error.to_result()
    impact = {"cnr_id": "comfyui-impact-pack", "ver": "8.1.0"}
    saved = {
        "nodes": [
            {"id": 1, "type": "ImpactWildcardProcessor", "properties": impact},
            {"id": 3, "type": "MysteryNode", "properties": {}},
        ],
        "definitions": {
            "subgraphs": [{"nodes": [{"id": 9, "type": "ImpactSwitch", "properties": impact}]}]
        },
    }
    lines, fetch = lacking(output, saved)
    assert lines == [
        "node type MysteryNode — not on the endpoint (no pack named)",
        "node pack comfyui-impact-pack 8.1.0 — not on the endpoint "
        "(ImpactWildcardProcessor, ImpactSwitch)",
    ]
    assert fetch == []
    assert lacking({"error": "boom", "error_code": "execution_failed"}, saved) == ([], [])


def test_a_model_without_a_url_is_named_and_not_fetched() -> None:
    output = {
        "error_code": "validation_failed",
        "details": {
            "node_errors": {
                "4": {
                    "class_type": "LoraLoader",
                    "errors": [
                        {
                            "type": "value_not_in_list",
                            "extra_info": {"input_name": "lora_name", "received_value": "a.pt"},
                        },
                        {
                            "type": "value_not_in_list",
                            "extra_info": {"input_name": "x", "received_value": "euler_x"},
                        },
                    ],
                }
            }
        },
    }
    saved = {"models": [{"name": "a.pt", "directory": "loras"}]}
    assert lacking(output, saved) == (
        ["LoRA a.pt (loras) — not on the endpoint, and the workflow names no URL for it"],
        [],
    )
