"""Shared harness of the benchmarks: statistics, result files, and the competitor.

The competitor is what other RunPod ComfyUI workers do (runpod-workers/worker-comfyui's
``handler.py`` is the model): start ComfyUI's own ``main.py`` server, then per job open a
websocket ``/ws?clientId=<uuid>``, ``POST /prompt`` with that client id, read websocket
messages until ``executing`` with ``node: null`` for the prompt id, and ``GET
/history/<prompt_id>`` for the outputs. :class:`ComfyServer` does exactly that against the
same ComfyUI tree our executor boots, on loopback, and always stops the process it started.

Every bench script imports this module by its plain name (``python bench/<name>.py`` puts
``bench/`` first on ``sys.path``; the smoke test does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"


# -- workflows --------------------------------------------------------------------------------


def rss_mib(pid: int | str = "self") -> float:
    """A process's resident memory now (Linux ``/proc``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
        / 1024
    )


def invert_prompt(color: int, size: int = 64, prefix: str = "b") -> dict[str, Any]:
    """The model-free job: EmptyImage(color) → ImageInvert → SaveImage.

    A new ``color`` per job keeps ComfyUI's cache from serving any node: every job runs
    three nodes and writes one PNG, on every path alike.
    """
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": prefix},
        },
    }


# -- statistics and reports -------------------------------------------------------------------


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median and p90 (nearest rank) in ms: medians resist the noise of a shared machine,
    p90 shows the tail that a median hides."""
    ordered = sorted(seconds)
    if not ordered:
        raise ValueError("no samples")
    p90 = ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * 9 // 10) - 1))]
    return {
        "n": len(ordered),
        "median_ms": statistics.median(ordered) * 1000,
        "p90_ms": p90 * 1000,
        "min_ms": ordered[0] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


def machine() -> dict[str, Any]:
    """What the numbers ran on; the load average says how busy the machine already was."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    with contextlib.suppress(ImportError):
        import torch

        info["torch"] = torch.__version__
    return info


def write_report(name: str, report: dict[str, Any], out: Path = RESULTS) -> Path:
    """``<out>/<name>.json``; every report carries the machine and the time it ran."""
    report = {"bench": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **report}
    report.setdefault("machine", machine())
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (floats with two decimals)."""

    def cell(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def count_files(*folders: Path) -> int:
    """Regular files below ``folders`` (missing folders count as empty)."""
    return sum(1 for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file())


# -- our side ----------------------------------------------------------------------------------


def boot_executor(
    work_dir: Path,
    extra_model_paths: Sequence[Path] = (),
    comfyui: Path | None = None,
    *,
    cpu: bool = True,
    custom_node_dirs: Sequence[Path] = (),
    api_nodes: bool = True,
    lazy: bool = True,
) -> Any:
    """Our in-process ComfyUI, on the CPU unless ``cpu=False`` (then CUDA), as
    ``comfyui-runpod run/worker/serve`` boot it (partner nodes unless ``api_nodes=False``;
    lazy unless ``lazy=False``, as ``--no-lazy``)."""
    from comfyui_runpod.executor import BootSettings, Executor

    executor = Executor(
        BootSettings(
            work_dir=work_dir,
            cpu=cpu,
            comfyui_path=comfyui,
            extra_model_paths=tuple(extra_model_paths),
            custom_node_dirs=tuple(custom_node_dirs),
            load_api_nodes=api_nodes,
            lazy=lazy,
        )
    )
    executor.start()
    return executor


def comfyui_tree() -> Path:
    """The ComfyUI our executor boots (``comfyui-runpod comfyui where``): the server path
    must run the very same files."""
    from comfyui_runpod.executor import find_comfyui

    return find_comfyui().path


def checkpoint_yaml(folder: Path, checkpoints: Path) -> Path:
    """An ``extra_model_paths.yaml`` that adds ``checkpoints`` (both paths read it)."""
    path = folder / "extra_model_paths.yaml"
    path.write_text(f"bench:\n  checkpoints: {json.dumps(str(checkpoints))}\n")
    return path


# -- the competitor: ComfyUI's own server, driven like worker-comfyui drives it ---------------


class ServerJobError(RuntimeError):
    """The server refused or failed a prompt (the bench treats it as fatal)."""


@dataclass
class ComfyServer:
    """ComfyUI's ``main.py`` as a child process on a loopback port.

    Flags: ``--cpu`` like our executor (``cpu=False``: ComfyUI's own device choice, CUDA
    on a GPU machine); ``--disable-api-nodes`` only with ``api_nodes=False`` (both sides
    load the partner nodes by default); ``--front-end-root`` pointing at an empty folder so that the
    server starts without the ``comfyui-frontend-package`` wheel (nothing here loads the UI;
    ComfyUI only logs that the templates package is missing); input/output/temp/user
    folders and an in-memory database in a private temporary folder, so the provisioned tree
    is not written to. Its log goes to a file (a pipe nobody reads would stall it).
    """

    comfyui: Path
    extra_model_paths: Sequence[Path] = ()
    port: int = 0
    cpu: bool = True
    api_nodes: bool = True
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-server-")))
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    #: Seconds from spawning the process to the first answer on ``/system_stats``.
    ready_s: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.folder / "output"

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    def command(self) -> list[str]:
        dirs = {name: self.folder / name for name in ("output", "temp", "input", "user", "web")}
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(self.comfyui / "main.py")]
        command += ["--cpu"] if self.cpu else []
        command += ["--listen", "127.0.0.1", "--port", str(self.port)]
        command += ["--disable-auto-launch"]
        command += [] if self.api_nodes else ["--disable-api-nodes"]
        command += ["--front-end-root", str(dirs["web"])]
        command += ["--output-directory", str(dirs["output"])]
        command += ["--temp-directory", str(dirs["temp"])]
        command += ["--input-directory", str(dirs["input"])]
        command += ["--user-directory", str(dirs["user"])]
        command += ["--database-url", "sqlite:///:memory:"]
        for path in self.extra_model_paths:
            command += ["--extra-model-paths-config", str(path)]
        return command

    def spawn(self) -> None:
        """Start the process; :meth:`wait_ready` (or a client's retries) finds it up."""
        if self.port == 0:
            self.port = free_port()
        command = self.command()
        self.started_at = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.comfyui, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout_s: float = 180.0, poll_s: float = 0.01) -> float:
        """Poll ``/system_stats`` until it answers; returns seconds since spawn."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"ComfyUI server exited with {self.process.returncode}; log:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/system_stats", timeout=5) as r:
                    if r.status == 200:
                        self.ready_s = time.perf_counter() - self.started_at
                        return self.ready_s
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"ComfyUI server not ready in {timeout_s}s:\n{self.log_tail()}")
            time.sleep(poll_s)

    def start(self) -> ComfyServer:
        self.spawn()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate (then kill) the process and delete its folder; safe to call twice."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)
        self.process = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def server_job(
    session: aiohttp.ClientSession,
    base_url: str,
    prompt: Mapping[str, Any],
    *,
    ws: aiohttp.ClientWebSocketResponse | None = None,
    client_id: str | None = None,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """One job the way worker-comfyui runs it; returns the prompt's ``/history`` outputs.

    Without ``ws``: a new websocket per job under a new client id (worker-comfyui's
    handler). With ``ws`` (and its ``client_id``): one socket kept open across jobs, the
    cheapest the server path can be.
    """
    if ws is None:
        client_id = uuid.uuid4().hex
        async with session.ws_connect(f"{base_url}/ws?clientId={client_id}") as own:
            prompt_id = await _queue(session, base_url, prompt, client_id)
            await asyncio.wait_for(_until_done(own, prompt_id), timeout_s)
    else:
        assert client_id is not None
        prompt_id = await _queue(session, base_url, prompt, client_id)
        await asyncio.wait_for(_until_done(ws, prompt_id), timeout_s)
    async with session.get(f"{base_url}/history/{prompt_id}") as response:
        history = await response.json()
    entry = history.get(prompt_id)
    if not entry or not entry.get("outputs"):
        raise ServerJobError(f"no outputs in /history for {prompt_id}: {history}")
    status = entry.get("status", {})
    if status.get("status_str") not in (None, "success"):
        raise ServerJobError(f"prompt {prompt_id} failed: {status}")
    return entry["outputs"]


async def _queue(
    session: aiohttp.ClientSession, base_url: str, prompt: Mapping[str, Any], client_id: str
) -> str:
    body = {"prompt": prompt, "client_id": client_id}
    async with session.post(f"{base_url}/prompt", json=body) as response:
        answer = await response.json()
        if response.status != 200:
            raise ServerJobError(f"POST /prompt: {response.status} {answer}")
    return answer["prompt_id"]


async def _until_done(ws: aiohttp.ClientWebSocketResponse, prompt_id: str) -> None:
    """Read messages until ``executing`` with ``node: null`` for ``prompt_id``."""
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            event = json.loads(message.data)
            data = event.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            if event.get("type") == "executing" and data.get("node") is None:
                return
            if event.get("type") == "execution_error":
                raise ServerJobError(f"execution_error: {data.get('exception_message')}")
        elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            break
    raise ServerJobError(f"websocket closed before prompt {prompt_id} finished")


def output_files(outputs: Mapping[str, Any], root: Path) -> list[Path]:
    """The saved files a ``/history`` or ``history_result`` outputs dict names."""
    found = []
    for ui in outputs.values():
        for item in (ui or {}).get("images", []):
            if item.get("type") == "output":
                found.append(root / item.get("subfolder", "") / item["filename"])
    return found


def remove_files(files: Sequence[Path]) -> None:
    for path in files:
        path.unlink(missing_ok=True)
