"""The README's desktop step against a local ``comfyui-runpod serve`` started without
``--api-key`` (#28 item 3): base URL and endpoint id entered in the settings dialog, the
API key left empty, and *Queue on RunPod* lands the result. Real parts only: Debian's
chromium → desktop ComfyUI with this pack → a real key-less ``serve`` on loopback."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from comfyui_runpod.executor import find_comfyui
from desktopkit import (
    Desktop,
    Process,
    launch_chromium,
    open_frontend,
    require_chromium,
    start_desktop,
    start_serve,
)
from PIL import Image

GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x123456},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "nokey"}},
}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Desktop, Process]]:
    """A key-less serve and a desktop with nothing configured (no RunPod env at all)."""
    require_chromium()
    folder = tmp_path_factory.mktemp("desktop-local")
    serve = start_serve(folder / "serve", api_key="")  # empty: serve runs without a key
    desktop = start_desktop(find_comfyui().path, folder / "desktop", {})
    try:
        deadline = time.monotonic() + 150
        serve.wait_ready(urllib.request.Request(f"{serve.url}/local/health"), deadline)
        desktop.wait_ready(urllib.request.Request(f"{desktop.url}/runpod/settings"), deadline)
        yield desktop, serve
    finally:
        desktop.stop()
        serve.stop()


def test_a_keyless_local_serve_takes_the_desktop_graph(local) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    desktop, serve = local
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = open_frontend(browser, desktop.url)
        # The README's step 2: base URL and endpoint id in the dialog, no key.
        page.evaluate("() => app.extensionManager.command.execute('Comfy.ShowSettingsDialog')")
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("option", name="RunPod", exact=True).or_(
            dialog.get_by_role("button", name="RunPod", exact=True)
        ).first.click()
        for field, value in (("baseUrl", serve.url), ("endpointId", "local")):
            box = page.locator(f"input.runpod-setting[data-field={field}]")
            saved = lambda r: r.url.endswith("/runpod/settings") and r.request.method == "POST"  # noqa: E731
            with page.expect_response(saved):
                box.fill(value)
                box.press("Enter")
                box.blur()
        key = page.locator("input.runpod-setting[data-field=apiKey]")
        page.wait_for_function(
            "(f) => f.title.includes('started without --api-key')", arg=key.element_handle()
        )
        assert key.input_value() == ""
        page.keyboard.press("Escape")

        page.evaluate("async (g) => { await app.loadApiJson(g, 'no key') }", GRAPH)
        page.evaluate("async () => await app.extensionManager.command.execute('RunPod.Queue')")
        deadline = time.monotonic() + 60
        while not (found := sorted((desktop.output / "runpod").glob("*/nokey_*.png"))):
            assert time.monotonic() < deadline, desktop.log_text()[-3000:]
            time.sleep(0.05)
        browser.close()
    with Image.open(found[0]) as image:
        assert image.getpixel((3, 3)) == (0xED, 0xCB, 0xA9)
        assert json.loads(image.text["prompt"])["3"]["inputs"]["filename_prefix"] == "nokey"
    stored = json.loads((desktop.user / "comfyui-runpod.json").read_text())
    assert "runpod_api_key" not in stored and stored["runpod_base_url"] == serve.url
    assert "API key" not in desktop.log_text()


def test_a_serve_with_a_key_is_asked_before_any_file_goes(local, tmp_path: Path) -> None:
    """The same desktop pointed at a loopback serve that has a key: the answer says to
    enter it, and no job reached that serve."""
    desktop, _ = local
    guarded = start_serve(tmp_path / "guarded", api_key="rp-local-key-1234")
    try:
        probe = urllib.request.Request(
            f"{guarded.url}/local/health", headers={"Authorization": "Bearer rp-local-key-1234"}
        )
        guarded.wait_ready(probe, time.monotonic() + 150)
        request = urllib.request.Request(
            f"{desktop.url}/runpod/settings",
            data=json.dumps({"baseUrl": guarded.url}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()
        queued = urllib.request.Request(
            f"{desktop.url}/runpod/queue",
            data=json.dumps({"prompt": GRAPH, "count": 1}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(queued, timeout=10)
        body = json.loads(refused.value.read())
    finally:
        guarded.stop()
    assert refused.value.code == 400 and body["code"] == "no_api_key"
    assert body["error"].startswith("No RunPod API key: set it in Settings (gear) → RunPod")
    assert f"{guarded.url}/local asks for one" in body["error"]
    assert "--api-key" in body["error"]
    assert "/run" not in guarded.log_text()
