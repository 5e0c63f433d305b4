"""ComfyUI's partner (API) nodes: loaded by default as ComfyUI's server loads them, and the
job's Comfy.org key reaching their HTTP call, and nothing else.

The Comfy API (api.comfy.org, which proxies OpenAI, Luma, Kling, …) is a cloud service that
cannot exist here: :class:`ComfyApi` stands in for it on 127.0.0.1 — the one mock in this
file. ComfyUI's real ``OpenAIDalle2`` node (``comfy_api_nodes/nodes_openai.py``) calls it
through ComfyUI's real API client, reached through ``args.comfy_api_base`` (ComfyUI's
``--comfy-api-base``, our ``--comfy-flag comfy_api_base=…``), which the client reads when it
sends a request.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from comfyui_runpod.executor import Executor
from comfyui_runpod.executor.cli import _parser, boot_settings
from httpkit import QuietHandler, start_http, stop_http
from PIL import Image

KEY = "comfyui-test-key-7f3a9c2e51"
ENV_KEY = "comfyui-env-key-0d4b8e61aa"
#: What the stand-in answers: one solid image, so the saved file shows it came back.
COLOR = (200, 30, 40)
GENERATIONS = "/proxy/openai/images/generations"


@dataclass
class ComfyApi:
    """A loopback stand-in for the Comfy API: answers DALL·E 2 generations as OpenAI does
    (``{"created", "data": [{"b64_json"}]}``) and, like the real service, ``401`` to a
    request without credentials."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ComfyApi:
        api = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                api.requests.append({"path": self.path, "headers": headers, "body": body})
                if "x-api-key" not in headers and "authorization" not in headers:
                    self._answer(401, {"message": "Unauthorized: Please login first."})
                elif self.path != GENERATIONS:
                    self._answer(404, {"message": f"no route {self.path}"})
                else:
                    self._answer(200, {"created": 1, "data": [{"b64_json": _png_b64()}]})

            def _answer(self, status: int, document: dict[str, Any]) -> None:
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = start_http(Handler)
        return self

    def stop(self) -> None:
        if self._server is not None:
            stop_http(self._server)


def _png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), COLOR).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def comfy_api(executor: Executor) -> Iterator[ComfyApi]:
    """The stand-in, with the session's ComfyUI pointed at it (what ``--comfy-flag
    comfy_api_base=URL`` sets at boot; ComfyUI's client reads it per request)."""
    from comfy.cli_args import args

    api = ComfyApi().start()
    before = args.comfy_api_base
    args.comfy_api_base = api.url
    try:
        yield api
    finally:
        args.comfy_api_base = before
        api.stop()


def dalle2_prompt(prefix: str, text: str = "a red square") -> dict[str, Any]:
    """DALL·E 2 → SaveImage. ComfyUI caches a node's output by its inputs, not by the key
    (hidden): jobs that must each reach the API differ in ``text``."""
    return {
        "1": {
            "class_type": "OpenAIDalle2",
            "inputs": {"prompt": text, "seed": 0, "size": "256x256", "n": 1},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def dalle2_saved() -> dict[str, Any]:
    """The same graph as the desktop saves it (UI format): the converter must know the
    partner node's widgets (``control_after_generate`` follows the seed)."""
    return {
        "version": 0.4,
        "nodes": [
            {
                "id": 1,
                "type": "OpenAIDalle2",
                "mode": 0,
                "inputs": [
                    {"name": "image", "type": "IMAGE", "link": None},
                    {"name": "mask", "type": "MASK", "link": None},
                ],
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
                "widgets_values": ["a red circle", 0, "fixed", "256x256", 1],
            },
            {
                "id": 2,
                "type": "SaveImage",
                "mode": 0,
                "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
                "widgets_values": ["saved"],
            },
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
        "extra": {},
    }


def test_partner_nodes_load_by_default_and_all_import(executor: Executor) -> None:
    node_types = executor.comfy.nodes.NODE_CLASS_MAPPINGS
    assert {"OpenAIDalle2", "LumaImageNode", "KlingTextToVideoNode"} <= set(node_types)
    failed = [m.line for m in executor.comfy.failed_modules if m.core]
    assert failed == [], "the venv lacks what ComfyUI's own node modules import"


def test_no_api_nodes_flag_and_env_turn_them_off() -> None:
    parser = _parser()
    on = boot_settings(parser.parse_args(["run", "w.json", "--work-dir", "/tmp/x"]))
    off = boot_settings(parser.parse_args(["serve", "--no-api-nodes", "--work-dir", "/tmp/x"]))
    assert on.load_api_nodes is True and off.load_api_nodes is False
    env = dict(os.environ, COMFYUI_RUNPOD_API_NODES="0")
    done = subprocess.run(
        [sys.executable, "-c", _PRINT_SETTING],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "False"


_PRINT_SETTING = (
    "from comfyui_runpod.executor.cli import _parser, boot_settings;"
    "print(boot_settings(_parser().parse_args(['worker', '--work-dir', '/tmp/x'])).load_api_nodes)"
)


def test_the_jobs_key_reaches_the_comfy_api_and_nowhere_else(
    make_pipeline, comfy_api: ComfyApi, executor: Executor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    by_job = make_pipeline(environ={"COMFY_ORG_API_KEY": ENV_KEY}).run_sync(
        {"id": "p1", "input": {"workflow": dalle2_prompt("partner"), "api_key_comfy_org": KEY}}
    )
    by_env = make_pipeline(environ={"COMFY_ORG_API_KEY": ENV_KEY}).run_sync(
        {"id": "p2", "input": {"workflow": dalle2_saved()}}  # a saved workflow: converted
    )
    for result in (by_job, by_env):
        assert "error" not in result, result
        [path] = result["files"]
        with Image.open(path) as image:
            assert image.convert("RGB").getpixel((8, 8)) == COLOR
    first, second = comfy_api.requests
    assert first["path"] == second["path"] == GENERATIONS
    assert first["headers"]["x-api-key"] == KEY  # the job's key wins over the worker's
    assert second["headers"]["x-api-key"] == ENV_KEY
    assert json.loads(first["body"])["prompt"] == "a red square"
    assert json.loads(second["body"])["prompt"] == "a red circle"

    seen = caplog.text + json.dumps([by_job, by_env])
    for path in (*by_job["files"], *by_env["files"]):
        with Image.open(path) as image:
            seen += json.dumps(image.info, default=str)
    assert KEY not in seen and ENV_KEY not in seen
    # ComfyUI's API client writes each request to <temp>/api_logs (0.3.75 with its headers)
    work = executor.comfy.output_dir.parent
    for file in (f for f in work.rglob("*") if f.is_file()):
        text = file.read_bytes()
        assert KEY.encode() not in text and ENV_KEY.encode() not in text, file


def test_without_a_key_the_comfy_apis_refusal_names_the_node(
    make_pipeline, comfy_api: ComfyApi
) -> None:
    result = make_pipeline().run_sync(
        {"id": "p3", "input": {"workflow": dalle2_prompt("nokey", "a blue square")}}
    )
    assert result["error"].startswith("execution_failed: node 1 (OpenAIDalle2)"), result
    [request] = comfy_api.requests
    assert "x-api-key" not in request["headers"]


def test_cli_run_sends_the_env_key_to_the_comfy_flag_api_base(tmp_path: Path) -> None:
    """The whole command line: ``--comfy-flag comfy_api_base=…`` at boot, the worker's
    ``COMFY_ORG_API_KEY``, and neither the key on stdout nor stderr."""
    api = ComfyApi().start()
    try:
        job = tmp_path / "job.json"
        job.write_text(json.dumps({"input": {"workflow": dalle2_prompt("cli")}}))
        command = [sys.executable, "-m", "comfyui_runpod", "run", str(job), "--cpu"]
        command += ["--comfy-flag", f"comfy_api_base={api.url}", "--out", str(tmp_path / "out")]
        command += ["--work-dir", str(tmp_path / "work")]
        env = dict(os.environ, COMFY_ORG_API_KEY=ENV_KEY)
        env.pop("COMFYUI_RUNPOD_API_NODES", None)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    finally:
        api.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(json.loads(done.stdout)["files"]) == 1
    [request] = api.requests
    assert request["headers"]["x-api-key"] == ENV_KEY
    assert ENV_KEY not in done.stdout + done.stderr
