"""Real parts for the desktop browser tests: desktop ComfyUI 0.3.75 (its own server and
frontend, this pack in ``custom_nodes/``), a ``comfyui-runpod serve`` process as the
RunPod endpoint, and Debian's ``chromium`` driven by playwright."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Another frontend for the desktop (a by-hand check against newer ones, not CI): the
# ``static`` folder of an unzipped ``comfyui-frontend-package`` wheel, passed to ComfyUI
# as ``--front-end-root``. Unset: the frontend installed in the venv.
FRONTEND_ROOT = os.environ.get("COMFYUI_RUNPOD_FRONTEND_ROOT", "")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    process: subprocess.Popen
    log: Path
    url: str

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, probe: urllib.request.Request, deadline: float) -> None:
        while True:
            try:
                with urllib.request.urlopen(probe, timeout=2):
                    return
            except OSError:
                assert self.process.poll() is None, self.log_text()[-3000:]
                assert time.monotonic() < deadline, f"not ready:\n{self.log_text()[-3000:]}"
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_serve(
    folder: Path,
    api_key: str,
    checkpoints: Path | None = None,
    port: int | None = None,
    flags: Sequence[str] = (),
) -> Process:
    """``comfyui-runpod serve`` on a free port with the tests' node pack (slow and failing
    nodes), ``checkpoints`` as a checkpoint folder and ``flags`` added; the key from env
    (flags show in ``ps``). Started again on the same ``folder`` and ``port``: the endpoint
    restarted."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "comfyui_runpod", "serve", "--cpu", "--port", str(port)]
    command += ["--out", str(folder / "out"), "--work-dir", str(folder / "work")]
    command += ["--custom-nodes", str(REPO / "tests" / "custom_nodes")]
    if checkpoints is not None:
        models = folder / "extra_model_paths.yaml"  # JSON is YAML
        models.write_text(json.dumps({"tests": {"checkpoints": str(checkpoints)}}))
        command += ["--extra-model-paths", str(models)]
    command += flags
    env = {**os.environ, "COMFYUI_RUNPOD_API_KEY": api_key}
    log = folder / "serve.log"
    with log.open("a") as handle:  # a restart's log follows the first run's
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    return Process(process, log, f"http://127.0.0.1:{port}/v2")


@dataclass
class Desktop(Process):
    root: Path = field(default=Path())

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def user(self) -> Path:
        return self.root / "user"


def start_desktop(
    comfyui: Path, folder: Path, env: dict[str, str], port: int | None = None
) -> Desktop:
    """Desktop ComfyUI as a person runs it (``main.py``), in a throwaway tree of symlinks
    with this worktree as ``custom_nodes/comfyui-runpod``. Started again on the same
    ``folder`` (and ``port``), it is the same desktop restarted: same user folder."""
    tree = folder / "ComfyUI"
    if not tree.exists():
        tree.mkdir(parents=True)
        own = {"custom_nodes", "user", "input", "output", "temp", "models"}
        for entry in comfyui.iterdir():
            if entry.name not in own and not entry.name.startswith("."):
                (tree / entry.name).symlink_to(entry)
        (tree / "custom_nodes").mkdir()
        (tree / "custom_nodes" / "comfyui-runpod").symlink_to(REPO)
        # The tests' slow node, so that graphs using it open on the canvas.
        (tree / "custom_nodes" / "test_nodes").symlink_to(REPO / "tests/custom_nodes/test_nodes")
    for name in ("user/default", "input", "output", "temp", "models"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    settings = folder / "user" / "default" / "comfy.settings.json"
    if not settings.exists():
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    port = port or free_port()
    command = [sys.executable, str(tree / "main.py"), "--cpu", "--listen", "127.0.0.1"]
    command += ["--port", str(port), "--disable-auto-launch", "--base-directory", str(tree)]
    command += ["--output-directory", str(folder / "output")]
    command += ["--input-directory", str(folder / "input")]
    command += ["--user-directory", str(folder / "user")]
    command += ["--temp-directory", str(folder / "temp")]
    command += ["--database-url", "sqlite:///:memory:"]
    if FRONTEND_ROOT:
        command += ["--front-end-root", str(Path(FRONTEND_ROOT).resolve())]
    log = folder / "desktop.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "COMFYUI_"))}
    with log.open("a") as handle:  # a restart's log follows the first run's
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**clean, "PYTHONUNBUFFERED": "1", **env},
            cwd=folder,
        )
    return Desktop(process, log, f"http://127.0.0.1:{port}", root=folder)


READY = """() => !!(window.app && app.graph && app.canvas && app.extensionManager?.command
  && window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length > 100)"""


def require_chromium() -> None:
    """Skip a browser test where Debian's chromium is missing; under CI (whose set-up
    installs it) fail instead, so a broken set-up cannot pass as skips."""
    import pytest

    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(
                f"{CHROMIUM} is missing: `make setup` installs it (apt-get install chromium)"
            )
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")


def launch_chromium(playwright: Any) -> Any:
    """Debian's chromium, headless (playwright cannot download its own browsers here)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def open_frontend(browser: Any, url: str, timeout_ms: int = 60_000, before_load: Any = None) -> Any:
    """A page of the desktop frontend at ``url`` as a person has it (the "Nodes 2.0"
    banner dismissed once), loaded until the app is ready. ``before_load(page)`` runs
    before it loads (listeners that must see every response)."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
    if before_load is not None:
        before_load(page)
    page.goto(url)
    page.wait_for_function(READY, timeout=timeout_ms)
    return page
