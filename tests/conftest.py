"""Shared fixtures: one real ComfyUI per test session (it is process-global state).

Which ComfyUI: the one ``find_comfyui`` picks, so ``COMFYUI_PATH`` chooses it; ``make test``
runs the whole suite once per version CI tests (0.3.75 and 0.33.0), each a lane with its
own ``COMFYUI_PATH``. The header of the pytest run names the tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from comfyui_runpod.executor import BootSettings, ComfyLocation, Executor, find_comfyui, nodeindex
from comfyui_runpod.executor.delivery import DeliverySettings
from comfyui_runpod.executor.inputs import MediaSettings
from comfyui_runpod.executor.models import ModelSettings
from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings

pytest_plugins = ["azurite", "s3server", "servekit"]

TESTS = Path(__file__).resolve().parent
#: ``gpu`` boots the session's ComfyUI on CUDA (``make gpu-check`` runs the executor,
#: pipeline and serve tests that way); anything else, or unset: the CPU.
DEVICE_ENV = "COMFYUI_RUNPOD_TEST_DEVICE"


def pytest_report_header(config: pytest.Config) -> str:
    try:
        return f"comfyui: {find_comfyui().describe()}"
    except Exception as exc:  # the executor fixture reports it properly
        return f"comfyui: none found ({exc})"


@pytest.fixture(scope="session")
def comfyui_under_test() -> ComfyLocation:
    """The ComfyUI tree this session boots, with the version its ``comfyui_version.py``
    states: what tests about the booted version compare with, instead of a literal."""
    location = find_comfyui()
    assert location.version, f"{location.path} states no version (comfyui_version.py)"
    return location


@pytest.fixture(scope="session")
def test_device() -> str:
    """``"gpu"`` or ``"cpu"``: where the session's ComfyUI runs (``DEVICE_ENV``)."""
    if os.environ.get(DEVICE_ENV, "").lower() != "gpu":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        pytest.exit(f"{DEVICE_ENV}=gpu but torch sees no CUDA device", returncode=4)
    return "gpu"


@pytest.fixture(scope="session")
def executor(tmp_path_factory: pytest.TempPathFactory, test_device: str) -> Iterator[Executor]:
    """The real ComfyUI under test (CPU unless ``test_device`` is gpu), with a test-only
    node pack (raising/slow nodes)."""
    _index_nodes_ahead()
    settings = BootSettings(
        work_dir=tmp_path_factory.mktemp("comfy-work"),
        cpu=test_device != "gpu",
        custom_node_dirs=(TESTS / "custom_nodes",),
    )
    ex = Executor(settings)
    ex.start()
    yield ex
    ex.close()


def _index_nodes_ahead() -> None:
    """Boot lazily, as users do after their first boot: build the node index (one eager
    boot in a subprocess, as ``comfyui index`` in the image) where this tree has none."""
    location = find_comfyui()
    if nodeindex.load(nodeindex.index_key(location.path, True), nodeindex.cache_dir()):
        return
    command = [sys.executable, "-m", "comfyui_runpod", "comfyui", "index", "--cpu"]
    subprocess.run([*command, "--comfyui", str(location.path)], check=True, timeout=600)


@pytest.fixture(scope="session")
def tiny_checkpoint(executor: Executor) -> str:
    """A tiny random-weight SD1.5 checkpoint (built once, cached outside the repo)."""
    from tinymodel import tiny_sd15_path

    path = tiny_sd15_path()
    executor.comfy.folder_paths.add_model_folder_path("checkpoints", str(path.parent))
    return path.name


@pytest.fixture
def make_pipeline(executor: Executor, tmp_path: Path):
    """Build a Pipeline on the shared executor; local outputs go to ``tmp_path/out``, the
    model cache to ``tmp_path/models`` unless ``models`` says otherwise."""

    def make(
        environ: dict[str, str] | None = None,
        models: ModelSettings | None = None,
        **media: object,
    ) -> Pipeline:
        settings = PipelineSettings(
            delivery=DeliverySettings(local_dir=tmp_path / "out"),
            media=MediaSettings(**{"allow_private_urls": True, **media}),
            environ=environ or {},
            models=models or ModelSettings(tmp_path / "models", allow_private_urls=True),
        )
        return Pipeline(executor, settings)

    return make
