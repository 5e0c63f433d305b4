"""The pure parts of `make image` / `make image-test` (image/build.py, image/check.py).

Building and running the image itself is `make image-test` (CI runs it after the suite);
these tests cover what those scripts decide from text: the one-line failure summary of a
build log, the base's registry name, the PNG and worker-output readers, and the local
ComfyUI repository the build clones from when GitHub cannot be reached.
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest
import workflows

REPO = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"image_{name}", REPO / "image" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load("build")
check = _load("check")

# Excerpts of real logs: buildah 1.28 (Debian bookworm) and BuildKit (--progress=plain).
BUILDAH_LOG = """\
[1/3] STEP 8/18: ENV PATH=/opt/venv/bin:$PATH     PIP_DISABLE_PIP_VERSION_CHECK=1
--> b7c2d48d834
[1/3] STEP 9/18: RUN apt-get update     && apt-get install -y --no-install-recommends \
        build-essential ca-certificates git python3
Setting up ca-certificates (20250419+deb13u1) ...
mv: cannot move '/etc/ssl/certs/ca-certificates.crt.new' to 'ca-certificates.crt': busy
E: Sub-process /usr/bin/dpkg returned an error code (1)
Error: building at STEP "RUN apt-get update     && apt-get install -y --no-install-recommends \
        build-essential ca-certificates git python3": while running runtime: exit status 100
"""
BUILDKIT_LOG = """\
#8 [builder 3/9] RUN apt-get update && apt-get install -y git
#8 DONE 20.1s

#9 [builder 5/9] RUN git clone --quiet --depth 1 --branch "v9.9.9" "$COMFYUI_REPO" /comfyui
#9 0.412 Cloning into '/comfyui'...
#9 0.913 warning: Could not find remote branch v9.9.9 to clone.
#9 0.914 fatal: Remote branch v9.9.9 not found in upstream origin
#9 ERROR: process "/bin/bash -o pipefail -c git clone ..." did not complete successfully: \
exit code: 128
------
ERROR: failed to solve: process "/bin/bash -o pipefail -c git clone" did not complete
"""


def test_a_failed_buildah_step_is_one_line_naming_the_step_and_why() -> None:
    line = build.failure_line(BUILDAH_LOG)
    assert line.startswith("[1/3] STEP 9/18 (RUN apt-get update && apt-get install")
    assert "exit status 100: E: Sub-process /usr/bin/dpkg returned an error code (1)" in line
    assert "\n" not in line


def test_a_failed_buildkit_step_is_one_line_naming_the_step_and_why() -> None:
    line = build.failure_line(BUILDKIT_LOG)
    assert line.startswith('[builder 5/9] (RUN git clone --quiet --depth 1 --branch "v9.9.9"')
    assert line.endswith("fatal: Remote branch v9.9.9 not found in upstream origin")
    assert "exit code: 128" in line


def test_a_log_without_a_failed_step_has_no_failure_line() -> None:
    assert build.failure_line("[1/3] STEP 1/18: FROM x AS builder\n--> 8145cb308a6\n") is None


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        ("nvidia/cuda:13.0.2-base-ubuntu24.04", "docker.io/nvidia/cuda:13.0.2-base-ubuntu24.04"),
        ("ubuntu:24.04", "docker.io/library/ubuntu:24.04"),
        ("ghcr.io/org/img:1", "ghcr.io/org/img:1"),
        ("localhost/comfyui-runpod-standin:trixie", "localhost/comfyui-runpod-standin:trixie"),
        ("registry:5000/img", "registry:5000/img"),
    ],
)
def test_short_base_names_resolve_as_docker_resolves_them(ref: str, want: str) -> None:
    assert build.qualified(ref) == want


def test_the_build_reads_its_defaults_from_the_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert build.dockerfile_arg("BASE_IMAGE", text).startswith("nvidia/cuda:")
    assert build.dockerfile_arg("COMFYUI_REPO", text).startswith("https://github.com/")
    with pytest.raises(build.StepFailed, match="no default for ARG NOPE"):
        build.dockerfile_arg("NOPE", text)


def test_the_local_comfyui_repository_clones_like_the_release_tag(tmp_path: Path) -> None:
    tree = tmp_path / "ComfyUI"
    (tree / "comfy").mkdir(parents=True)
    (tree / "comfyui_version.py").write_text('__version__ = "1.2.3"\n')
    (tree / ".gitignore").write_text("/models/\n")
    (tree / "models").mkdir()
    (tree / "models" / "put_here").write_text("")  # ignored by .gitignore, still in the tree
    (tree / "comfy" / "sd.py").write_text("x = 1\n")

    repo = build.local_comfyui_repo(tree, "1.2.3", tmp_path / "cache")
    assert build.local_comfyui_repo(tree, "1.2.3", tmp_path / "cache") == repo  # made once
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "--quiet", "--depth", "1", "--branch", "v1.2.3", f"file://{repo}", clone],
        check=True,
    )
    files = sorted(str(p.relative_to(clone)) for p in clone.rglob("*") if ".git" not in p.parts)
    assert files == [
        ".gitignore",
        "comfy",
        "comfy/sd.py",
        "comfyui_version.py",
        "models",
        "models/put_here",
    ]
    with pytest.raises(build.StepFailed, match=r"is not ComfyUI 9\.9\.9"):
        build.local_comfyui_repo(tree, "9.9.9", tmp_path / "cache")
    with pytest.raises(build.StepFailed, match="no ComfyUI tree at"):
        build.local_comfyui_repo(tmp_path / "nowhere", "1.2.3", tmp_path / "cache")


@pytest.mark.parametrize("optimize", [False, True])
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_the_png_reader_reads_what_pillow_writes(mode: str, optimize: bool) -> None:
    from PIL import Image

    image = Image.new(mode, (7, 5))
    image.putdata(
        [(x * 30, y * 40, (x * y) % 256, 200)[: len(mode)] for y in range(5) for x in range(7)]
    )
    data = io.BytesIO()
    image.save(data, "PNG", optimize=optimize, compress_level=4)
    width, height, rows = check.png_pixels(data.getvalue())
    assert (width, height) == (7, 5)
    assert b"".join(rows) == image.tobytes()
    with pytest.raises(check.CheckFailed, match="not a PNG"):
        check.png_pixels(b"GIF89a")


WORKER_OUTPUT = """\
using ComfyUI 0.33.0 at /comfyui (from COMFYUI_PATH) on cpu
node module failed to import: comfy_extras.nodes_glsl: ModuleNotFoundError: No module named 'OpenGL'
ComfyUI 0.33.0 ready on cpu in 9.4s: 700 node types (600 of them imported on first use), \
1 node modules failed to import (above)
INFO   | test_input set, using test_input as job input.
INFO   | Job local_test completed successfully.
INFO   | Job result: {'files': [], 'datas': {'4': {}}, 'images': [{'data': 'iVBORw0KGgo'}]}
"""


def test_the_worker_output_gives_boot_time_failed_modules_and_result() -> None:
    run = check.read_run(WORKER_OUTPUT)
    assert run.boot_s == 9.4
    assert run.failed_modules == ["comfy_extras.nodes_glsl"]
    assert run.result == {
        "files": [],
        "datas": {"4": {}},
        "images": [{"data": "iVBORw0KGgo"}],
    }
    assert run.error is None and run.lazy
    assert check.PNG_B64 in repr(run.result)

    failed = check.read_run(
        "ComfyUI 0.33.0 ready on cpu in 3.0s: 9 node types\n"
        "ERROR  | Job local_test failed with error: validation_failed: node 1: unknown\n"
    )
    assert (failed.boot_s, failed.failed_modules, failed.result) == (3.0, [], None)
    assert not failed.lazy  # no "imported on first use": the boot found no node index
    assert failed.error == "validation_failed: node 1: unknown"


def test_the_tests_workflows_are_what_the_image_test_sends() -> None:
    # image/check.py sends the tests' own graphs: a rename there must break here first.
    assert workflows.invert(1, size=16, prefix="free")["1"]["inputs"]["width"] == 16
    assert workflows.tiny_sd("x.safetensors", prefix="sd15")["4"]["inputs"]["ckpt_name"]


@pytest.mark.parametrize("torch", ["2.11.0", "2.9.1+rocm6.4"])
def test_prune_image_removes_what_a_worker_never_uses_and_keeps_the_rest(
    tmp_path: Path, torch: str
) -> None:
    venv, comfyui = tmp_path / "venv", tmp_path / "comfyui"
    site = venv / "lib" / "python3.13" / "site-packages"
    (site / f"torch-{torch}.dist-info").mkdir(parents=True)
    (site / f"torch-{torch}.dist-info" / "METADATA").write_text(f"Name: torch\nVersion: {torch}\n")
    rocm = "rocm" in torch  # a ROCm torch keeps its AMD kernels
    files = {
        "numpy/_core/tests/test_x.py": False,
        "numpy/testing/__init__.py": True,
        "jinja2/tests.py": True,
        "triton/backends/nvidia/lib/cupti/libcupti_static.a": False,
        "triton/backends/nvidia/lib/cupti/libcupti.so": True,
        "triton/backends/amd/driver.py": rocm,
        "triton/backends/nvidia/driver.py": True,
        "torch/bin/protoc": False,
        "torch/bin/protoc-3.13.0.0": False,
        "torch/bin/torch_shm_manager": True,
        "torch/include/torch/script.h": True,
        "torch/__pycache__/__init__.cpython-313.pyc": True,
        "nvidia/cu13/lib/libnvrtc.alt.so.13": False,
        "nvidia/cu13/lib/libnvrtc-builtins.alt.so.13.0": False,
        "nvidia/cu13/lib/libnvrtc.so.13": True,
        "nvidia/cu13/lib/libnvrtc-builtins.so.13.0": True,
        "comfy_kitchen/backends/hip/_C.abi3.so": rocm,
        "comfy_kitchen/backends/cuda/_C.abi3.so": True,
    }
    for name in files:
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(b"x" * 10)
    for name in ("tests/test_a.py", "tests-unit/test_b.py", "comfy/sd.py", "nodes.py"):
        (comfyui / name).parent.mkdir(parents=True, exist_ok=True)
        (comfyui / name).write_text("")

    done = subprocess.run(
        ["bash", str(REPO / "docker" / "prune-image.sh"), str(venv), str(comfyui)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith(f"prune-image: {venv} and {comfyui}: "), done.stdout
    assert {name: (site / name).exists() for name in files} == files
    assert not (site / "numpy" / "_core" / "tests").exists()
    assert sorted(p.name for p in comfyui.iterdir()) == ["comfy", "nodes.py"]
