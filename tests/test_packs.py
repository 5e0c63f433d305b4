"""Custom node packs from git onto a folder (a network volume's ``custom_nodes``):
``comfyui-runpod nodes install`` against a real ``git daemon`` on loopback, the pack's
requirement a wheel built here (served to pip with --find-links, no network), then the
pack's node run by a real ``serve --custom-nodes DIR`` process."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpkit import http
from PIL import Image
from test_cli import cli, one_line_refusal

#: The pack's requirement: not in the venv (checked), installed from a wheel built here.
DEP = "tinydep"
#: The grey the pack's node paints, from its requirement: v1.0 and the tip differ.
LEVEL_V1, LEVEL_TIP = 77, 99

PACK_V1 = f"""
import torch
import {DEP}


class TinyDepGrey:
    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{}}}}

    def run(self):
        return (torch.full((1, 8, 8, 3), {DEP}.level() / 255.0),)


NODE_CLASS_MAPPINGS = {{"TinyDepGrey": TinyDepGrey}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_wheel(folder: Path, name: str, version: str, source: str) -> Path:
    """A pure-Python wheel, written as the wheel format says (no build backend needed)."""
    files = {
        f"{name}/__init__.py": source.encode(),
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ).encode(),
        f"{name}-{version}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = f"{name}-{version}.dist-info/RECORD"
    lines = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{path},sha256={digest},{len(data)}")
    files[record] = ("\n".join([*lines, f"{record},,"]) + "\n").encode()
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def git(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
    }
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def commit_all(work: Path, files: dict[str, str], message: str) -> str:
    for path, text in files.items():
        (work / path).write_text(text)
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", message, cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert importlib.util.find_spec(DEP) is None, f"{DEP} must not be in the venv"
    folder = tmp_path_factory.mktemp("wheelhouse")
    build_wheel(folder, DEP, "0.1", f"def level():\n    return {LEVEL_V1}\n")
    return folder


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``tinypack.git`` in a bare repository: tag v1.0 (node + requirement), tag
    ``badreq`` (a requirement no index has), and a tip that paints another grey."""
    root = tmp_path_factory.mktemp("git")
    work = root / "work"
    work.mkdir()
    git("init", "--quiet", "-b", "main", cwd=work)
    commits = {}
    commits["v1.0"] = commit_all(
        work, {"__init__.py": PACK_V1, "requirements.txt": f"{DEP}==0.1\n"}, "v1"
    )
    git("tag", "v1.0", cwd=work)
    commit_all(work, {"requirements.txt": f"{DEP}==0.1\nno-such-dist-xyz==1.0\n"}, "bad")
    git("tag", "badreq", cwd=work)
    tip = PACK_V1.replace(f"{DEP}.level() / 255.0", f"{LEVEL_TIP} / 255.0")
    commits["main"] = commit_all(
        work, {"__init__.py": tip, "requirements.txt": f"{DEP}==0.1\n"}, "tip"
    )
    git("clone", "--quiet", "--bare", str(work), str(root / "tinypack.git"), cwd=root)
    return {"root": str(root), **commits}


@pytest.fixture(scope="module")
def daemon(repos: dict[str, str]) -> Iterator[str]:
    """``git daemon`` on loopback serving the bare repositories: its ``git://`` base."""
    port = free_port()
    command = ["git", "daemon", "--reuseaddr", "--export-all", "--informative-errors"]
    command += [f"--base-path={repos['root']}", "--listen=127.0.0.1", f"--port={port}"]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "no git daemon"
            time.sleep(0.05)
    yield f"git://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


@pytest.fixture
def pip_env(wheelhouse: Path) -> dict[str, str]:
    """pip reads its index settings from the environment: the wheel built here only."""
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse)}


def snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_install_at_a_tag_puts_the_requirement_beside_the_pack(
    daemon: str, repos: dict[str, str], pip_env: dict[str, str], tmp_path: Path
) -> None:
    into = tmp_path / "custom_nodes"
    done = cli(
        "nodes",
        "install",
        f"{daemon}/tinypack.git@v1.0",
        "--into",
        str(into),
        cwd=tmp_path,
        env=pip_env,
    )
    assert done.returncode == 0, done.stderr
    pack = into / "tinypack"
    assert done.stdout.strip() == str(pack)
    assert (pack / "__init__.py").read_text() == PACK_V1  # the tag, not the tip
    assert not (pack / ".git").exists()
    site = pack / ".comfyui-runpod" / "site-packages"
    assert (site / DEP / "__init__.py").is_file()
    assert importlib.util.find_spec(DEP) is None  # never into the venv
    # Only what the venv lacks: nothing it has (numpy, torch …) copied beside the pack.
    assert {p.name for p in site.iterdir()} == {DEP, f"{DEP}-0.1.dist-info"}
    meta = json.loads((pack / ".comfyui-runpod" / "pack.json").read_text())
    assert meta == {
        "source": f"{daemon}/tinypack.git",
        "ref": "v1.0",
        "commit": repos["v1.0"],
        "requirements": [f"{DEP}==0.1"],
    }
    (into / "by-hand").mkdir()
    listed = cli("nodes", "list", str(into), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "by-hand  (not installed by comfyui-runpod)",
        f"tinypack  v1.0 {repos['v1.0'][:12]}  {daemon}/tinypack.git  ({DEP}==0.1)",
        f"# 2 packs in {into}",
    ]
    # Again without --force: refused, nothing touched; with it: the tip replaces v1.0.
    before = snapshot(into)
    line = one_line_refusal(
        cli(
            "nodes",
            "install",
            f"{daemon}/tinypack.git",
            "--into",
            str(into),
            cwd=tmp_path,
            env=pip_env,
        )
    )
    assert line == f"comfyui-runpod nodes: {pack} already exists: give --force to replace it"
    assert snapshot(into) == before
    done = cli(
        "nodes",
        "install",
        f"{daemon}/tinypack.git",
        "--into",
        str(into),
        "--force",
        cwd=tmp_path,
        env=pip_env,
    )
    assert done.returncode == 0, done.stderr
    meta = json.loads((pack / ".comfyui-runpod" / "pack.json").read_text())
    assert (meta["ref"], meta["commit"]) == (None, repos["main"])
    assert sorted(p.name for p in into.iterdir()) == ["by-hand", "tinypack"]  # no leftovers


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("ftp://example.com/pack.git", "ftp://example.com/pack.git: not a git URL or path"),
        ("{daemon}/tinypack.git@v9", "no ref 'v9' in {daemon}/tinypack.git"),
        ("{daemon}/nosuch.git", "cannot read the git repository {daemon}/nosuch.git:"),
        ("{daemon}/tinypack.git@badreq", "cannot install tinypack's requirements: "),
        ("{tmp}/not-a-repo", "cannot read the git repository {tmp}/not-a-repo:"),
    ],
)
def test_a_failed_install_names_the_culprit_and_leaves_dir_as_it_was(
    source: str, expected: str, daemon: str, pip_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "not-a-repo").mkdir()
    into = tmp_path / "custom_nodes"
    (into / "other-pack").mkdir(parents=True)
    (into / "other-pack" / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    before = snapshot(into)
    source = source.format(daemon=daemon, tmp=tmp_path)
    line = one_line_refusal(
        cli("nodes", "install", source, "--into", str(into), cwd=tmp_path, env=pip_env)
    )
    assert line.startswith(f"comfyui-runpod nodes: {expected.format(daemon=daemon, tmp=tmp_path)}")
    if "badreq" in source:  # pip's own words, naming the requirement
        assert "no-such-dist-xyz" in line
    assert snapshot(into) == before
    # A folder the install created is gone again too.
    fresh = tmp_path / "fresh"
    one_line_refusal(
        cli("nodes", "install", source, "--into", str(fresh), cwd=tmp_path, env=pip_env)
    )
    assert not fresh.exists()


@pytest.fixture(scope="module")
def serve_with_packs(
    daemon: str, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``serve --custom-nodes DIR`` with tinypack installed and a pack copied by hand
    whose requirement is missing."""
    folder = tmp_path_factory.mktemp("serve-packs")
    into = folder / "custom_nodes"
    pip_env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse)}
    done = cli(
        "nodes",
        "install",
        f"{daemon}/tinypack.git@v1.0",
        "--into",
        str(into),
        cwd=folder,
        env=pip_env,
    )
    assert done.returncode == 0, done.stderr
    (into / "handcopied").mkdir()
    (into / "handcopied" / "__init__.py").write_text("import tinydep_missing\n")
    port = free_port()
    command = [sys.executable, "-m", "comfyui_runpod", "serve", "--cpu", "--port", str(port)]
    command += ["--custom-nodes", str(into), "--out", str(folder / "out")]
    log = (folder / "serve.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v2/local"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                break
        except OSError:
            assert process.poll() is None, (folder / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.25)
    yield base
    process.terminate()
    process.wait(30)


def test_serve_runs_the_installed_packs_node_with_its_requirement(
    serve_with_packs: str,
) -> None:
    workflow = {
        "1": {"class_type": "TinyDepGrey", "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
    }
    code, body = http(
        "POST", f"{serve_with_packs}/runsync", {"input": {"workflow": workflow, "tobase64": True}}
    )
    assert code == 200, body
    assert body["status"] == "COMPLETED", body
    [image] = body["output"]["files"]
    with Image.open(io.BytesIO(base64.b64decode(image))) as png:
        assert png.getpixel((0, 0))[:3] == (LEVEL_V1,) * 3  # tinydep 0.1's grey, from v1.0


def test_a_pack_whose_import_fails_is_in_the_node_import_report(serve_with_packs: str) -> None:
    code, health = http("GET", f"{serve_with_packs}/health")
    assert code == 200, health
    failed = health["comfyui"]["failed"]
    [entry] = [f for f in failed if f["module"].endswith("handcopied")]
    assert entry["error"] == "ModuleNotFoundError: No module named 'tinydep_missing'"
    assert not entry["core"]
    assert not [f for f in failed if "tinypack" in f["module"]]
