"""Desktop "Queue on RunPod", end to end with real parts only: Debian's chromium (driven by
playwright) → desktop ComfyUI 0.3.75 with this pack in custom_nodes/ → real HTTP → a real
``comfyui-runpod serve`` standing in for the RunPod endpoint → results in the desktop's
``output/runpod/<job id>/``. One desktop, one endpoint and one browser per module.

By hand, against another frontend than the venv's (``comfyui-frontend-package``): unzip its
wheel and point ``COMFYUI_RUNPOD_FRONTEND_ROOT`` at the ``static`` folder that holds
``index.html``; the desktop is started with ``--front-end-root`` on it::

    pip download --no-deps -d /tmp/fe comfyui-frontend-package==1.58.1
    cd /tmp/fe && python -m zipfile -e comfyui_frontend_package-1.58.1-*.whl 1.58.1
    COMFYUI_RUNPOD_FRONTEND_ROOT=/tmp/fe/1.58.1/comfyui_frontend_package/static \
        python -m pytest tests/test_desktop.py
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sys
import time
import types
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import workflows
from comfyui_runpod.executor import find_comfyui
from comfyui_runpod.executor.boot import HeadlessServer
from comfyui_runpod.nodes import desktop as desktop_module
from comfyui_runpod.nodes.pngtext import read_text, with_text
from desktopkit import (
    READY,
    REPO,
    Desktop,
    Process,
    launch_chromium,
    open_frontend,
    require_chromium,
    start_desktop,
    start_serve,
)
from httpkit import QuietHandler, http, start_http, stop_http
from PIL import Image
from tinymodel import CACHE_FILE, cache_folder

API_KEY = "rp-desktop-key-8472915"
WRONG_KEY = "rp-wrong-key-5550123"
COLOUR = 0x123456  # inverted: (0xED, 0xCB, 0xA9)


def invert_graph(prefix: str, colour: int = COLOUR) -> dict:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": colour},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


# -- without a browser ----------------------------------------------------------------------


def test_routes_only_on_the_desktop_server(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not desktop_module.is_desktop_server(HeadlessServer())
    assert not desktop_module.is_desktop_server(None)
    fake_server = types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=None))
    monkeypatch.setitem(sys.modules, "server", fake_server)
    assert desktop_module.install() is False  # no PromptServer yet (a bare node import)
    fake_server.PromptServer.instance = HeadlessServer()
    assert desktop_module.install() is False  # the worker's, run's and serve's stand-in
    assert not list(fake_server.PromptServer.instance.routes)

    class PromptServer:  # what ComfyUI's main.py builds, as far as the check looks
        def __init__(self) -> None:
            from aiohttp import web

            self.routes, self.app = web.RouteTableDef(), web.Application()
            self.prompt_queue, self.loop = object(), object()

    fake_server.PromptServer.instance = PromptServer()
    assert desktop_module.install() is True
    paths = {route.path for route in fake_server.PromptServer.instance.routes}
    assert {"/runpod/queue", "/runpod/jobs", "/runpod/settings"} <= paths


def test_inputs_come_only_from_the_input_folder(tmp_path: Path) -> None:
    inputs = tmp_path / "input"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "a.png").write_bytes(b"A")
    (inputs / "sub" / "my pic.png").write_bytes(b"B")
    (tmp_path / "secret.png").write_bytes(b"SECRET")
    (inputs / "link.png").symlink_to(tmp_path / "secret.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "sub/my pic.png [input]"}},
        "3": {"class_type": "LoadImageMask", "inputs": {"image": "a.png", "channel": "alpha"}},
        "4": {
            "class_type": "X",
            "inputs": {"a": "../secret.png", "b": str(tmp_path / "secret.png")},
        },
        "5": {"class_type": "X", "inputs": {"a": "link.png", "b": "a.png [output]", "c": 3}},
    }
    remote, images = desktop_module.collect_inputs(prompt, inputs)
    assert [(i["name"], base64.b64decode(i["image"])) for i in images] == [
        ("a.png", b"A"),
        ("sub_my pic.png", b"B"),
    ]
    assert remote["2"]["inputs"]["image"] == "sub_my pic.png"
    assert remote["3"]["inputs"]["image"] == "a.png"
    assert remote["4"] == prompt["4"] and remote["5"] == prompt["5"]
    assert prompt["2"]["inputs"]["image"] == "sub/my pic.png [input]"  # the caller's is kept


def test_png_text_keeps_pixels() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (1, 2, 3)).save(buffer, "PNG")
    original = buffer.getvalue()
    tagged = with_text(
        with_text(original, {"prompt": "{}"}), {"prompt": '{"a": 1}', "workflow": "{}"}
    )
    assert read_text(tagged) == {"prompt": '{"a": 1}', "workflow": "{}"}
    with Image.open(io.BytesIO(tagged)) as image:
        assert image.getpixel((2, 1)) == (1, 2, 3)
        assert image.text == {"prompt": '{"a": 1}', "workflow": "{}"}


# -- over HTTP, without a browser: a desktop whose base URL comes from its settings ---------


class FakeEndpoint:
    """A loopback host answering as RunPod does (``/run`` an id, ``/status`` COMPLETED;
    401 without a key); it records each request's path, ``Authorization`` header and body."""

    def __init__(self) -> None:
        seen = self.requests = []
        endpoint = self
        self.id_suffix = ""  # a hostile endpoint's ids end in "\n"

        class Handler(QuietHandler):
            def answer(self, body: dict) -> None:
                if self.headers.get("Authorization") is None:  # as a serve with a key
                    body, status = {"error": "missing or wrong API key"}, 401
                else:
                    status = 200
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen.append((self.path, self.headers.get("Authorization"), json.loads(body)))
                self.answer({"id": f"job-{len(seen)}{endpoint.id_suffix}", "status": "IN_QUEUE"})

            def do_GET(self) -> None:
                seen.append((self.path, self.headers.get("Authorization"), None))
                self.answer({"id": self.path.rsplit("/", 1)[-1], "status": "COMPLETED"})

        self.server = start_http(Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"

    def runs(self) -> list[tuple[str, str | None, dict]]:
        return [r for r in self.requests if r[2] is not None]

    def stop(self) -> None:
        stop_http(self.server)


@pytest.fixture(scope="module")
def bare_desktop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desktop]:
    """A desktop ComfyUI with only the endpoint id in env: base URL and key from its
    settings routes, as a person sets them in the dialog."""
    folder = tmp_path_factory.mktemp("bare-desktop")
    desktop = start_desktop(find_comfyui().path, folder, {"COMFYUI_RUNPOD_ENDPOINT_ID": "local"})
    try:
        desktop.wait_ready(
            urllib.request.Request(f"{desktop.url}/runpod/settings"), time.monotonic() + 150
        )
        yield desktop
    finally:
        desktop.stop()


@pytest.fixture
def endpoints() -> Iterator[tuple[FakeEndpoint, FakeEndpoint]]:
    """(home, foreign): where the key was entered for, and another host (another port)."""
    home, foreign = FakeEndpoint(), FakeEndpoint()
    yield home, foreign
    home.stop()
    foreign.stop()


def settings(desktop: Desktop, **body: str) -> dict:
    status, answer = http("POST", f"{desktop.url}/runpod/settings", body)
    assert status == 200, answer
    return answer


def queue_http(desktop: Desktop, prompt: dict) -> tuple[int, dict]:
    return http("POST", f"{desktop.url}/runpod/queue", {"prompt": prompt, "count": 1})


def load_image_graph(name: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }


def test_a_base_url_on_another_origin_needs_the_key_again(bare_desktop, endpoints) -> None:
    """The key is bound to the origin it was entered for: a path change keeps it, another
    host drops it (the answer says so), and the other host never sees the key or the
    input files."""
    desktop, (home, foreign) = bare_desktop, endpoints
    Image.new("RGB", (4, 4), (9, 9, 9)).save(desktop.input / "mine.png")
    graph = load_image_graph("mine.png")
    assert settings(desktop, baseUrl=f"{home.origin}/v2", apiKey=API_KEY)["apiKeySet"]
    assert queue_http(desktop, graph)[0] == 200
    [(path, auth, body)] = home.runs()
    assert (path, auth) == ("/v2/local/run", f"Bearer {API_KEY}")
    assert body["input"]["images"][0]["name"] == "mine.png"

    moved = settings(desktop, baseUrl=f"{home.origin}/other/v2")  # same origin: kept
    assert moved["apiKeySet"] is True and "notice" not in moved
    assert queue_http(desktop, graph)[0] == 200
    assert home.runs()[-1][:2] == ("/other/v2/local/run", f"Bearer {API_KEY}")

    away = settings(desktop, baseUrl=f"{foreign.origin}/v2")
    status, refused = queue_http(desktop, graph)
    # A loopback host may be a key-less serve: asked (health, no key), never given files.
    assert foreign.runs() == [] and [r[1] for r in foreign.requests] == [None]
    assert (status, refused["code"]) == (400, "no_api_key")
    assert refused["error"].startswith("No RunPod API key: set it in Settings (gear) → RunPod")
    assert away["apiKeySet"] is False and away["apiKeyFor"] == foreign.origin
    assert away["notice"] == (
        f"The saved API key was for {home.origin} and is removed: enter the API key for "
        f"{foreign.origin} in Settings (gear) → RunPod → API key."
    )
    stored = json.loads((desktop.user / "comfyui-runpod.json").read_text())
    assert "runpod_api_key" not in stored and API_KEY not in json.dumps(stored)

    entered = settings(desktop, apiKey=WRONG_KEY)  # the key for the new host, entered
    assert entered["apiKeySet"] is True and entered["apiKeyFor"] == foreign.origin
    assert queue_http(desktop, graph)[0] == 200
    assert foreign.runs()[-1][:2] == ("/v2/local/run", f"Bearer {WRONG_KEY}")


def test_a_key_saved_for_another_origin_is_never_sent(bare_desktop, endpoints) -> None:
    """A config file whose base URL was changed by hand: the key stays bound to where it
    was entered, and queueing asks for the key of the new host instead of sending it."""
    desktop, (home, foreign) = bare_desktop, endpoints
    (desktop.user / "comfyui-runpod.json").write_text(
        json.dumps(
            {
                "runpod_base_url": f"{foreign.origin}/v2",
                "runpod_api_key": API_KEY,
                "runpod_api_key_origin": home.origin,
            }
        )
    )
    status, refused = queue_http(desktop, invert_graph("elsewhere"))
    assert foreign.requests == [] and home.requests == []
    problem = (
        f"The saved RunPod API key is for {home.origin}, not {foreign.origin}: enter the API "
        f"key for {foreign.origin} in Settings (gear) → RunPod → API key."
    )
    assert (status, refused) == (400, {"error": problem, "code": "no_api_key"})
    status, view = http("GET", f"{desktop.url}/runpod/settings")
    assert view["apiKeySet"] is False and view["apiKeyProblem"] == problem


def test_a_job_id_with_a_trailing_newline_is_refused(bare_desktop, endpoints) -> None:
    """Job ids name folders and URLs: an endpoint answering ``"job-1\n"`` gets a clear 502,
    and nothing is recorded under that id."""
    desktop, (home, _) = bare_desktop, endpoints
    settings(desktop, baseUrl=f"{home.origin}/v2", apiKey=API_KEY)
    _, before = http("GET", f"{desktop.url}/runpod/jobs")
    home.id_suffix = "\n"
    status, refused = queue_http(desktop, invert_graph("newline-id"))
    assert (status, refused["code"]) == (502, "remote"), refused
    assert "returned an odd job id 'job-1\\n'" in refused["error"]
    _, after = http("GET", f"{desktop.url}/runpod/jobs")
    assert [job["id"] for job in after["jobs"]] == [job["id"] for job in before["jobs"]]


def test_a_huge_input_file_is_refused_from_its_size(bare_desktop, endpoints) -> None:
    """A 2 GiB (sparse) file in the input folder: refused at once by its size, never read
    (the desktop's peak memory does not move), and the message names file and limit."""
    desktop, (home, _) = bare_desktop, endpoints
    settings(desktop, baseUrl=f"{home.origin}/v2", apiKey=API_KEY)
    with (desktop.input / "huge.png").open("wb") as handle:
        handle.truncate(2 * 1024**3)
    peak_before = _peak_rss(desktop)
    began = time.perf_counter()
    status, refused = queue_http(desktop, load_image_graph("huge.png"))
    assert time.perf_counter() - began < 5
    assert (status, refused["code"]) == (400, "too_large")
    assert refused["error"] == (
        "the input file huge.png is 2048.0 MiB; the graph's input files go to RunPod as "
        "base64 inside its 10 MiB request limit (7.5 MiB left for this one): use smaller inputs"
    )
    assert _peak_rss(desktop) - peak_before < 64 * 1024**2
    assert home.runs() == []


def test_the_dialog_says_a_new_host_needs_the_key(bare_desktop, endpoints) -> None:
    """In the settings dialog: a Base URL on another host warns that the key was removed
    and the API key field asks for the new host's key."""
    require_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    desktop, (home, foreign) = bare_desktop, endpoints
    settings(desktop, baseUrl=f"{home.origin}/v2", apiKey=API_KEY)
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = open_frontend(browser, desktop.url)
        page.evaluate("() => app.extensionManager.command.execute('Comfy.ShowSettingsDialog')")
        dialog = page.get_by_role("dialog")
        category = dialog.get_by_role("option", name="RunPod", exact=True).or_(
            dialog.get_by_role("button", name="RunPod", exact=True)
        )
        category.first.click()
        key = page.locator("input.runpod-setting[data-field=apiKey]")
        page.wait_for_function(
            "(f) => f.placeholder.includes('set (file)')", arg=key.element_handle()
        )
        base = page.locator("input.runpod-setting[data-field=baseUrl]")
        base.fill(f"{foreign.origin}/v2")
        base.press("Enter")
        base.blur()
        notice = toast_text(page, "is removed")
        assert f"The saved API key was for {home.origin} and is removed" in notice
        page.wait_for_function(
            "([f, want]) => f.placeholder === want",
            arg=[key.element_handle(), f"not set for {foreign.origin}"],
        )
        browser.close()
    assert foreign.requests == []


def _peak_rss(process: Process) -> int:
    """The process's peak resident memory so far (``VmHWM``), in bytes."""
    status = Path(f"/proc/{process.process.pid}/status").read_text()
    [kib] = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(kib) * 1024


# -- in a real browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(request: pytest.FixtureRequest) -> str:
    """The tiny SD1.5 checkpoint's name, in ``cache_folder()`` (``serve``'s checkpoints)."""
    if not (cache_folder() / CACHE_FILE).is_file():
        request.getfixturevalue("tiny_checkpoint")  # builds it (boots ComfyUI here, once)
    return CACHE_FILE


DESKTOP_ENV = {"COMFYUI_RUNPOD_ENDPOINT_ID": "local"}


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, checkpoint: str
) -> Iterator[tuple[Desktop, Process]]:
    require_chromium()
    folder = tmp_path_factory.mktemp("desktop")
    # both boot at once: ~10 s, not ~20
    serve = start_serve(folder / "serve", API_KEY, checkpoints=cache_folder())
    DESKTOP_ENV["RUNPOD_ENDPOINT_BASE_URL"] = serve.url
    desktop = start_desktop(find_comfyui().path, folder / "desktop", DESKTOP_ENV)
    try:
        deadline = time.monotonic() + 150
        probe = urllib.request.Request(
            f"{serve.url}/local/health", headers={"Authorization": f"Bearer {API_KEY}"}
        )
        serve.wait_ready(probe, deadline)
        desktop.wait_ready(urllib.request.Request(f"{desktop.url}/runpod/settings"), deadline)
        yield desktop, serve
    finally:
        desktop.stop()
        serve.stop()


class Recorder:
    """Everything the browser received: HTTP bodies and websocket frames."""

    def __init__(self) -> None:
        self.responses: list = []
        self.frames: list[str] = []

    def on_websocket(self, socket) -> None:
        socket.on("framereceived", lambda payload: self.frames.append(_text(payload)))
        socket.on("framesent", lambda payload: self.frames.append(_text(payload)))

    def bodies(self) -> Iterator[tuple[str, str]]:
        for response in self.responses:
            try:
                yield response.url, response.body().decode("utf-8", "replace")
            except Exception:  # redirects and aborted loads have no body
                continue


def _text(payload: str | bytes) -> str:
    return payload if isinstance(payload, str) else payload.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def browser_page(servers: tuple[Desktop, Process]):
    sync_api = pytest.importorskip("playwright.sync_api")
    desktop, _ = servers
    recorder = Recorder()

    def record(page) -> None:
        page.on("response", lambda response: recorder.responses.append(response))
        page.on("websocket", recorder.on_websocket)

    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = open_frontend(browser, desktop.url, before_load=record)
        yield page, recorder
        browser.close()


def set_key(page, value: str) -> dict:
    """What the settings dialog's API key field does (also driven through the dialog below)."""
    return page.evaluate(
        """async (key) => (await (await app.api.fetchApi('/runpod/settings',
        {method: 'POST', headers: {'Content-Type': 'application/json'},
         body: JSON.stringify({apiKey: key})})).json())""",
        value,
    )


JOB_IDS = "async () => (await (await app.api.fetchApi('/runpod/jobs')).json()).jobs.map(j => j.id)"


def queue(page, graph: dict, name: str) -> list[str]:
    """Open ``graph`` in a new tab and run the command as a person does; the new job ids."""
    page.evaluate("async ([graph, name]) => { await app.loadApiJson(graph, name) }", [graph, name])
    before = set(page.evaluate(JOB_IDS))
    page.evaluate("async () => await app.extensionManager.command.execute('RunPod.Queue')")
    return [i for i in page.evaluate(JOB_IDS) if i not in before]


def new_job(page, before: set[str], timeout: float = 30) -> str:
    """The one job the page's list holds beyond ``before``, waited for and returned by the
    same read. Polled from here: ``wait_for_function`` takes an async predicate's Promise
    as a truthy answer at once, so it never waited for the list to change."""
    deadline = time.monotonic() + timeout
    while not (fresh := [i for i in page.evaluate(JOB_IDS) if i not in before]):
        assert time.monotonic() < deadline, f"no new job after {sorted(before)}"
        time.sleep(0.1)
    [job_id] = fresh
    return job_id


def open_panel(page) -> None:
    """The RunPod sidebar tab, as a click on its icon opens it."""
    if not page.locator(".runpod-panel").count():
        page.evaluate("() => app.extensionManager.sidebarTab.toggleSidebarTab('runpod')")
    page.locator(".runpod-panel").wait_for()


# A notice: PrimeVue's toast (1.32) or the newer frontends' own (1.58: an li[role=alert]).
TOAST = ".p-toast-message, li[role=alert]"


def toast_text(page, needle: str) -> str:
    toast = page.locator(TOAST, has_text=needle).last
    toast.wait_for(timeout=10_000)
    return toast.inner_text()


def wait_file(folder: Path, pattern: str, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while not (found := sorted(folder.glob(pattern))):
        assert time.monotonic() < deadline, f"no {pattern} under {folder}"
        time.sleep(0.005)
    return found[-1]


def test_missing_key_shows_where_to_set_it(browser_page) -> None:
    page, _ = browser_page
    assert set_key(page, "")["apiKeySet"] is False
    queue(page, invert_graph("nokey"), "no key")
    text = toast_text(page, "No RunPod API key")
    assert "Settings" in text and "RunPod" in text


def test_wrong_key_says_the_endpoint_rejected_it(browser_page, servers) -> None:
    page, _ = browser_page
    _, serve = servers
    assert set_key(page, WRONG_KEY) == {**set_key(page, WRONG_KEY), "apiKeySet": True}
    queue(page, invert_graph("wrongkey"), "wrong key")
    assert f"API key rejected by {serve.url}/local" in toast_text(page, "API key rejected")


def test_queue_on_runpod_lands_a_png_and_the_panel_shows_it(
    browser_page, servers, tmp_path: Path
) -> None:
    page, _ = browser_page
    desktop, _ = servers
    # The key through the settings dialog's write-only field, as a person types it.
    page.evaluate("() => app.extensionManager.command.execute('Comfy.ShowSettingsDialog')")
    # The RunPod category: a listbox option (1.32), a button in the dialog's nav (1.58).
    dialog = page.get_by_role("dialog")
    category = dialog.get_by_role("option", name="RunPod", exact=True).or_(
        dialog.get_by_role("button", name="RunPod", exact=True)
    )
    category.first.click()
    field = page.locator("input.runpod-setting[data-field=apiKey]")
    field.fill(API_KEY)
    # The wrong key above left the placeholder at "set (file)" already: wait for the save.
    saved = lambda r: r.url.endswith("/runpod/settings") and r.request.method == "POST"  # noqa: E731
    with page.expect_response(saved):
        field.press("Enter")
        field.blur()
    page.wait_for_function(
        "(f) => f.value === '' && f.placeholder.includes('set (file)')",
        arg=field.element_handle(),
    )
    page.keyboard.press("Escape")

    started = time.perf_counter()
    ids = queue(page, invert_graph("desk"), "model-free")
    assert len(ids) == 1
    png = wait_file(desktop.output / "runpod" / ids[0], "*.png")
    click_to_file = time.perf_counter() - started
    assert png.name == "desk_00001_.png"  # the worker's name
    with Image.open(png) as image:
        assert image.size == (8, 8) and image.getpixel((3, 3)) == (0xED, 0xCB, 0xA9)
        workflow = json.loads(image.text["workflow"])  # dropping it on the canvas reloads it
        assert {n["type"] for n in workflow["nodes"]} == {"EmptyImage", "ImageInvert", "SaveImage"}
        assert json.loads(image.text["prompt"])["3"]["inputs"]["filename_prefix"] == "desk"

    open_panel(page)
    row = page.locator(f'.runpod-job[data-id="{ids[0]}"]')
    row.locator(".runpod-status", has_text="COMPLETED").wait_for(timeout=10_000)
    thumb = row.locator(".runpod-thumbs img")
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth === 8", arg=thumb.element_handle()
    )
    assert "delay" in row.inner_text()

    # The same graph queued locally in the same desktop, for the click-to-file ratio.
    started = time.perf_counter()
    page.evaluate(
        "async (g) => { await app.loadApiJson(g, 'local'); await app.queuePrompt(0) }",
        invert_graph("local"),
    )
    wait_file(desktop.output, "local_*.png")
    local = time.perf_counter() - started
    print(
        f"\nclick-to-file: RunPod (serve) {click_to_file:.2f} s, local {local:.2f} s, "
        f"ratio {click_to_file / local:.1f}x"
    )


def test_load_image_graph_sends_the_desktop_input(browser_page, servers) -> None:
    page, _ = browser_page
    desktop, _ = servers
    (desktop.input / "sub").mkdir(exist_ok=True)
    Image.new("RGB", (4, 4), (0x40, 0x40, 0x40)).save(desktop.input / "sub" / "my pic.png")
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "sub/my pic.png [input]"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "li"}},
    }
    ids = queue(page, graph, "load image")
    png = wait_file(desktop.output / "runpod" / ids[0], "li_*.png")
    with Image.open(png) as image:
        assert image.size == (4, 4) and image.getpixel((0, 0)) == (0xBF, 0xBF, 0xBF)


def test_a_failed_job_shows_its_remote_error_in_its_row(browser_page) -> None:
    page, _ = browser_page
    graph = {  # a file that is not in the desktop's input folder: the remote refuses it
        "1": {"class_type": "LoadImage", "inputs": {"image": "not-there.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    ids = queue(page, graph, "missing input")
    open_panel(page)
    row = page.locator(f'.runpod-job[data-id="{ids[0]}"]')
    row.locator(".runpod-status", has_text="FAILED").wait_for(timeout=30_000)
    error = row.locator(".runpod-error").inner_text()
    assert "validation_failed" in error and "not-there.png" in error, error


def test_a_partly_valid_graph_lands_what_ran_and_names_what_did_not(browser_page, servers):
    page, _ = browser_page
    desktop, _ = servers
    graph = {
        **invert_graph("partial"),
        "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "lost"}},
    }
    [job_id] = queue(page, graph, "partly valid")
    row = row_of(page, job_id)
    row.locator(".runpod-status", has_text="COMPLETED").wait_for(timeout=30_000)
    assert wait_file(desktop.output / "runpod" / job_id, "partial_*.png").is_file()
    error = row.locator(".runpod-error").inner_text()
    assert error.startswith("not every output ran: node 4 (SaveImage)"), error
    assert "not run: output 4 (SaveImage)" in error


def row_of(page, job_id: str):
    open_panel(page)
    return page.locator(f'.runpod-job[data-id="{job_id}"]')


def remote_status(serve: Process, job_id: str) -> dict:
    request = urllib.request.Request(
        f"{serve.url}/local/status/{job_id}", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def clear_toasts(page) -> None:
    page.evaluate(
        "() => { const t = app.extensionManager.toast; (t.removeAll ?? t.dismissAll)?.call(t) }"
    )
    page.locator(TOAST).first.wait_for(state="detached", timeout=5_000)


def test_the_row_shows_the_samplers_live_preview(
    browser_page, servers, checkpoint, tmp_path: Path
) -> None:
    page, _ = browser_page
    desktop, _ = servers
    # Enough steps that the desktop's polls find the remote job sampling, on any version.
    ids = queue(page, workflows.tiny_sd(checkpoint, steps=60, prefix="sd"), "tiny sd")
    clear_toasts(page)  # the screenshot below shows the panel, not the notices
    row = row_of(page, ids[0])
    preview = row.locator("img.runpod-preview")
    preview.wait_for(state="visible", timeout=60_000)
    size = page.wait_for_function(
        """(img) => img.complete && img.naturalWidth > 0 && img.src.startsWith(
        'data:image/jpeg;base64,') && [img.naturalWidth, img.naturalHeight]""",
        arg=preview.element_handle(),
    ).json_value()
    assert max(size) <= 256 and size == [8, 8]  # a 64 px image's latent, as latent2rgb
    page.screenshot(path=str(tmp_path / "panel.png"))
    if os.environ.get("COMFYUI_RUNPOD_UPDATE_SCREENSHOT"):
        shutil.copy(tmp_path / "panel.png", REPO / "docs" / "desktop.png")
    row.locator(".runpod-status", has_text="COMPLETED").wait_for(timeout=90_000)
    assert not preview.is_visible()  # the results replace it
    with Image.open(wait_file(desktop.output / "runpod" / ids[0], "sd_*.png")) as image:
        assert image.size == (64, 64)


def test_a_remote_validation_error_marks_the_node(browser_page, tmp_path: Path) -> None:
    page, _ = browser_page
    graph = invert_graph("big")
    graph["1"]["inputs"]["width"] = 100_000  # over ComfyUI's MAX_RESOLUTION: remote refuses
    ids = queue(page, graph, "too wide")
    row_of(page, ids[0]).locator(".runpod-status", has_text="FAILED").wait_for(timeout=30_000)
    assert "failed validation" in toast_text(page, "failed validation")
    marks = page.wait_for_function(
        "() => app.lastNodeErrors && JSON.stringify(app.lastNodeErrors)"
    ).json_value()
    errors = json.loads(marks)
    assert list(errors) == ["1"] and errors["1"]["class_type"] == "EmptyImage"
    assert errors["1"]["errors"][0]["extra_info"] == {"input_name": "width"}
    # As for a local error: the node's width input slot is flagged for the canvas.
    page.wait_for_function(
        "() => app.graph.getNodeById(1).inputs.some(i => i.name === 'width' && i.hasErrors)"
    )
    page.evaluate("() => { app.canvas.ds.offset = [40, 120]; app.canvas.setDirty(true, true) }")
    page.screenshot(path=str(tmp_path / "node-error.png"))
    queue(page, invert_graph("ok"), "fixed")  # queueing again clears the marks
    assert page.evaluate("() => app.lastNodeErrors") is None


def test_cancel_a_slow_job_then_retry_it_and_reload_mid_job(browser_page, servers) -> None:
    page, _ = browser_page
    desktop, serve = servers
    ids = queue(page, workflows.slow(steps=120, delay=0.05), "slow")
    row = row_of(page, ids[0])
    row.locator(".runpod-status", has_text="IN_PROGRESS").wait_for(timeout=30_000)
    row.locator(".runpod-cancel").click()
    row.locator(".runpod-status", has_text="CANCELLED").wait_for(timeout=10_000)
    assert remote_status(serve, ids[0])["status"] == "CANCELLED"
    assert not row.locator(".runpod-cancel").is_visible()

    before = set(page.evaluate(JOB_IDS))
    row.locator(".runpod-retry").click()  # the same graph, as a new job
    retried = new_job(page, before)
    new_row = row_of(page, retried)
    new_row.locator(".runpod-status", has_text="IN_PROGRESS").wait_for(timeout=30_000)

    page.reload()  # mid-job: the row is rebuilt from the server's list and keeps updating
    page.wait_for_function(READY, timeout=60_000)
    new_row = row_of(page, retried)
    new_row.wait_for()
    new_row.locator(".runpod-status", has_text="COMPLETED").wait_for(timeout=60_000)
    new_row.locator(".runpod-thumbs img").wait_for()
    assert wait_file(desktop.output / "runpod" / retried, "slow_*.png")
    job = page.evaluate(
        f"async () => (await (await app.api.fetchApi('/runpod/jobs/{retried}')).json())"
    )
    assert job["retryOf"] == ids[0] and job["retryable"] is False


def test_a_restarted_desktop_resumes_the_job(browser_page, servers) -> None:
    page, _ = browser_page
    desktop, serve = servers
    ids = queue(page, workflows.slow(steps=200, delay=0.05), "slow restart")
    row_of(page, ids[0]).locator(".runpod-status", has_text="IN_PROGRESS").wait_for(timeout=30_000)
    desktop.stop()  # ComfyUI quits while the job runs remotely
    assert remote_status(serve, ids[0])["status"] == "IN_PROGRESS"
    port = int(desktop.url.rsplit(":", 1)[1])
    again = start_desktop(find_comfyui().path, desktop.root, DESKTOP_ENV, port=port)
    desktop.process = again.process  # the same desktop from here on (same user folder)
    png = wait_file(desktop.output / "runpod" / ids[0], "slow_*.png", timeout=90)
    with Image.open(png) as image:
        assert image.size == (8, 8) and "workflow" in image.text
    page.reload()
    page.wait_for_function(READY, timeout=60_000)
    row_of(page, ids[0]).locator(".runpod-status", has_text="COMPLETED").wait_for()


def test_a_job_the_restarted_endpoint_forgot_fails_and_retries(browser_page, servers) -> None:
    """The endpoint restarts mid-job (a local ``serve`` forgets its jobs; RunPod drops
    old ones): the row says so instead of retrying forever, and Retry runs it again."""
    page, _ = browser_page
    desktop, serve = servers
    # not the graph of the test before: ComfyUI would answer from its cache at once
    ids = queue(page, workflows.slow(steps=240, delay=0.05), "forgotten")
    row = row_of(page, ids[0])
    row.locator(".runpod-status", has_text="IN_PROGRESS").wait_for(timeout=30_000)
    serve.stop()
    port = urllib.parse.urlsplit(serve.url).port
    again = start_serve(serve.log.parent, API_KEY, checkpoints=cache_folder(), port=port)
    serve.process = again.process  # the fixture stops the one that runs
    probe = urllib.request.Request(
        f"{serve.url}/local/health", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    serve.wait_ready(probe, time.monotonic() + 120)
    row.locator(".runpod-status", has_text="FAILED").wait_for(timeout=60_000)
    error = row.locator(".runpod-error").inner_text()
    assert f"the endpoint no longer knows job {ids[0]}" in error and "Retry" in error

    before = set(page.evaluate(JOB_IDS))
    row.locator(".runpod-retry").click()
    retried = new_job(page, before)
    row_of(page, retried).locator(".runpod-status", has_text="COMPLETED").wait_for(timeout=90_000)
    assert wait_file(desktop.output / "runpod" / retried, "slow_*.png")


def test_the_api_key_never_reaches_the_page_or_the_logs(browser_page, servers) -> None:
    """Runs last: scans everything the other tests made the browser receive."""
    page, recorder = browser_page
    desktop, serve = servers
    assert set_key(page, API_KEY)["apiKeySet"] is True
    page.reload()
    page.wait_for_function(READY, timeout=60_000)
    open_panel(page)
    page.locator(".runpod-job").first.wait_for()  # rebuilt from the server's list
    places = {url: body for url, body in recorder.bodies()}
    places["websocket"] = "\n".join(recorder.frames)
    places["page"] = page.content() + page.evaluate("() => JSON.stringify(localStorage)")
    places["desktop log"] = desktop.log_text()
    places["serve log"] = serve.log_text()
    places["comfy.settings.json"] = (desktop.user / "default" / "comfy.settings.json").read_text()
    assert len(recorder.frames) > 5 and any("runpod.job" in f for f in recorder.frames)
    for secret in (API_KEY, WRONG_KEY):
        leaks = [where for where, text in places.items() if secret in text]
        assert not leaks, f"the API key shows in {leaks}"
    stored = json.loads((desktop.user / "comfyui-runpod.json").read_text())
    assert stored["runpod_api_key"] == API_KEY  # server-side only
