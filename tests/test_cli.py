"""The console script as a newcomer meets it: ordinary mistakes get one line on stderr and
exit code 2, checked before ComfyUI boots; the help says what the commands accept.

Every call goes through the installed ``comfyui-runpod`` script in a subprocess, as a user
runs it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import workflows
from comfyui_runpod.executor import find_comfyui

SCRIPT = Path(sys.executable).with_name("comfyui-runpod")
REPO = Path(__file__).resolve().parent.parent


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **(env or {})}
    environ.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environ,
        timeout=timeout,
    )


def one_line_refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refusal made before booting (a boot logs more)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    assert done.stdout == ""
    return lines[0]


@pytest.fixture
def invert_file(tmp_path: Path) -> Path:
    path = tmp_path / "invert.json"
    path.write_text(json.dumps(workflows.invert()))
    return path


def test_run_of_a_missing_file(tmp_path: Path) -> None:
    line = one_line_refusal(cli("run", "/nope.json", "--cpu", cwd=tmp_path))
    assert "/nope.json" in line and "No such file" in line


def test_run_of_a_file_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{bad")
    line = one_line_refusal(cli("run", "bad.json", "--cpu", cwd=tmp_path))
    assert "bad.json is not valid JSON: " in line and "line 1 column 2" in line


def test_run_with_a_missing_image(tmp_path: Path, invert_file: Path) -> None:
    args = ("run", str(invert_file), "--image", "in.png=/nope.png", "--cpu")
    line = one_line_refusal(cli(*args, cwd=tmp_path))
    assert "--image in.png=/nope.png" in line and "No such file" in line


def test_worker_warmup_file_is_checked_before_booting(tmp_path: Path) -> None:
    args = ("worker", "--warmup", "/missing.json", "--cpu", "--test_input", '{"input": {}}')
    line = one_line_refusal(cli(*args, cwd=tmp_path))
    assert "--warmup" in line and "/missing.json" in line and "No such file" in line


def test_serve_on_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_refusal(cli("serve", "--port", str(port), "--cpu", cwd=tmp_path))
    assert f"127.0.0.1:{port}" in line and "--port" in line


def test_gpu_on_a_machine_without_cuda(tmp_path: Path, invert_file: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = one_line_refusal(cli("run", str(invert_file), "--gpu", cwd=tmp_path))
    assert "--gpu" in line and "CUDA" in line and "--cpu" in line


def test_no_comfyui_found(tmp_path: Path, invert_file: Path) -> None:
    env = {"COMFYUI_PATH": "", "COMFYUI_RUNPOD_HOME": str(tmp_path / "empty")}
    line = one_line_refusal(cli("run", str(invert_file), "--cpu", cwd=tmp_path, env=env))
    assert "no ComfyUI found" in line and "comfyui-runpod comfyui install" in line


def test_a_wrong_comfyui_folder(tmp_path: Path, invert_file: Path) -> None:
    args = ("run", str(invert_file), "--cpu", "--comfyui", str(tmp_path))
    line = one_line_refusal(cli(*args, cwd=tmp_path))
    assert f"{tmp_path} is not a ComfyUI folder" in line


@pytest.mark.parametrize(
    ("env", "command"),
    [
        ("COMFYUI_RUNPOD_MAX_WORKFLOW_NODES", "run"),
        ("COMFYUI_RUNPOD_MODEL_CACHE_SIZE", "run"),
        ("COMFYUI_RUNPOD_MAX_MEDIA_PIXELS", "worker"),
        ("COMFYUI_RUNPOD_PORT", "serve"),
    ],
)
def test_a_bad_number_in_an_env_variable(
    tmp_path: Path, invert_file: Path, env: str, command: str
) -> None:
    args = (command, str(invert_file)) if command == "run" else (command,)
    line = one_line_refusal(cli(*args, "--cpu", cwd=tmp_path, env={env: "abc"}))
    assert f"{env}='abc'" in line and "number" in line


def test_a_bad_env_number_does_not_break_other_commands(tmp_path: Path) -> None:
    done = cli("comfyui", "where", cwd=tmp_path, env={"COMFYUI_RUNPOD_PORT": "abc"})
    assert done.returncode == 0, done.stderr


def test_worker_by_hand_points_to_serve_and_test_input(tmp_path: Path) -> None:
    line = one_line_refusal(cli("worker", "--cpu", cwd=tmp_path))
    assert "--test_input" in line and "test_input.json" in line
    assert "comfyui-runpod serve" in line and "RUNPOD_WEBHOOK_GET_JOB" in line


def test_worker_test_input_that_is_not_json(tmp_path: Path) -> None:
    line = one_line_refusal(cli("worker", "--cpu", "--test_input", "{nope", cwd=tmp_path))
    assert "--test_input is not valid JSON" in line


@pytest.mark.slow
def test_worker_local_test_mode_reports_no_failed_result_posts(tmp_path: Path) -> None:
    """In the SDK's local test mode there is no RunPod to send progress to: nothing in the
    log may look like a failure of a job that worked."""
    job = json.dumps({"input": {"workflow": workflows.invert()}})
    args = ("worker", "--cpu", "--work-dir", str(tmp_path / "work"), "--test_input", job)
    env = {"COMFYUI_RUNPOD_OUTPUT": str(tmp_path / "out")}
    done = cli(*args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "completed successfully" in log
    assert "Failed to return job results" not in log and "JOB_DONE_URL" not in log


def test_version_needs_no_boot(tmp_path: Path) -> None:
    done = cli("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"comfyui-runpod {version('comfyui-runpod')}")
    assert find_comfyui().describe() in done.stdout
    assert "booting" not in done.stderr


def test_comfyui_option_help_lists_the_search_order(tmp_path: Path) -> None:
    done = cli("run", "--help", cwd=tmp_path)
    text = " ".join(done.stdout.split())
    for part in ("COMFYUI_PATH", "custom_nodes", "comfyui install", "comfyui where"):
        assert part in text, part


def test_help_says_saved_workflows_work(tmp_path: Path) -> None:
    for command in ("run", "worker", "serve"):
        text = " ".join(cli(command, "--help", cwd=tmp_path).stdout.split())
        assert "API-format workflows served" not in text
        assert "API format or saved" in text, command
    text = " ".join(cli("run", "--help", cwd=tmp_path).stdout.split())
    assert "a saved (UI-format) workflow" in text


def test_convert_an_api_format_file_passes_it_through(tmp_path: Path, invert_file: Path) -> None:
    done = cli("convert", str(invert_file), "--cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == workflows.invert()
    assert "already in API format" in done.stderr
    copied = cli("convert", str(invert_file), "--cpu", "--out-dir", "out", cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "invert.api.json").read_text()) == workflows.invert()


def test_comfyuis_boot_noise_only_with_verbose(tmp_path: Path, invert_file: Path) -> None:
    """ComfyUI's own boot INFO lines (comfy_kitchen's probed backends on 0.33, "Total VRAM"
    on a CPU machine, database migrations) need ``-v``; the boot's own lines stay."""
    quiet = cli("run", str(invert_file), "--cpu", "--out", str(tmp_path / "q"), cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "ready on cpu" in quiet.stderr and "using ComfyUI" in quiet.stderr
    for noise in ("Total VRAM", "comfy_kitchen", "alembic", "Set vram state", " root: "):
        assert noise not in quiet.stderr, quiet.stderr[-3000:]
    loud = cli("-v", "run", str(invert_file), "--cpu", "--out", str(tmp_path / "l"), cwd=tmp_path)
    assert loud.returncode == 0 and "Total VRAM" in loud.stderr, loud.stderr[-3000:]
