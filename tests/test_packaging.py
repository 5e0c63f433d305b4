"""The pack loads both ways: cloned into ComfyUI/custom_nodes/, and pip-installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from comfyui_runpod.executor import find_comfyui

REPO = Path(__file__).resolve().parent.parent


def test_importing_the_package_does_not_import_comfyui() -> None:
    code = "import sys, comfyui_runpod, comfyui_runpod.executor.cli; print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout.replace("'", '"')))
    assert "comfyui_runpod" in loaded
    assert not loaded & {"comfy", "nodes", "execution", "folder_paths", "torch", "runpod"}


def test_console_script_help() -> None:
    for command in (["--help"], ["run", "--help"], ["worker", "--help"], ["comfyui", "--help"]):
        done = subprocess.run(
            [sys.executable, "-m", "comfyui_runpod", *command], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert "usage: comfyui-runpod" in done.stdout


@pytest.mark.slow
def test_pack_loads_from_custom_nodes_and_finds_its_comfyui(tmp_path: Path) -> None:
    real = find_comfyui().path
    comfyui = tmp_path / "ComfyUI"
    comfyui.mkdir()
    for entry in real.iterdir():
        if entry.name != "custom_nodes":
            (comfyui / entry.name).symlink_to(entry)
    pack = comfyui / "custom_nodes" / "comfyui-runpod"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        if (REPO / name).is_file():
            (pack / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, pack / name)

    # What ComfyUI's main.py does at start, minus the server: no comfyui_runpod import.
    script = textwrap.dedent(
        f"""
        import asyncio, importlib, json, sys
        sys.path.insert(0, {str(comfyui)!r})
        from comfy.cli_args import args
        args.cpu = True
        import utils.extra_config
        import folder_paths
        folder_paths.add_model_folder_path("custom_nodes", {str(comfyui / "custom_nodes")!r})
        import nodes
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        pack = next(m for n, m in sys.modules.items() if n.endswith("comfyui-runpod"))
        locate = importlib.import_module(pack.__name__ + ".executor.locate")
        where = locate.find_comfyui({{}})
        print(json.dumps({{
            "nodes": sorted(n for n in nodes.NODE_CLASS_MAPPINGS if n.startswith("RunPod")),
            "title": nodes.NODE_DISPLAY_NAME_MAPPINGS.get("RunPodS3Upload"),
            "installed_copy_imported": "comfyui_runpod" in sys.modules,
            "source": where.source, "path": str(where.path),
        }}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    from comfyui_runpod.nodes import NODE_CLASS_MAPPINGS

    assert report["nodes"] == sorted(NODE_CLASS_MAPPINGS)  # every node of the pack
    assert {"RunPodCaptureData", "RunPodRemoteSubmit", "RunPodS3Upload"} <= set(report["nodes"])
    assert report["title"] == "S3 Upload (RunPod)"
    assert report["installed_copy_imported"] is False
    assert report["source"] == "custom_nodes parent"
    assert report["path"] == str(comfyui)
