"""What ``make gpu-check`` needs on a GPU machine that cannot reach any network.

The device machine this project is sometimes lent (see docs/performance.md, *GPU check*)
has its own ``python3`` with torch, CUDA, numpy, aiohttp, pytest and most of ComfyUI's
needs, but no ComfyUI, no PyPI and no ``.venv`` (the venv here is ~5.5 GB; at most 64 MiB
travels). So a *bundle* is made here and carried along:

- ``comfyui.tar.gz``: the ComfyUI tree our executor boots (``comfyui-runpod comfyui
  where``), without its tests (~6.5 MB);
- ``wheels/``: the wheels of what that image lacks or has in a version ComfyUI 0.3.75 and
  this project do not take (``WHEELS``), at the versions installed in this ``.venv``, for
  CPython 3.12 on x86-64 Linux (~50 MB, most of it ``av``);
- ``bundle.json``: what is in it.

``make gpu-bundle`` (here, with PyPI reachable) writes ``.gpu-check/`` (gitignored);
``bench/gpu_check.py`` calls :func:`activate` before it imports anything else: it installs
only the wheels whose version the running interpreter lacks into a private folder put
first on ``sys.path`` and ``PYTHONPATH`` (children inherit it), unpacks ComfyUI when none is
found, and makes ``comfyui_runpod`` importable from this checkout. Without a bundle,
:func:`activate` only does the last. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / ".gpu-check"
#: Distributions carried as wheels: ComfyUI 0.3.75 imports ``av`` (``comfy_api``) and
#: ``torchsde`` (samplers) at boot, and the device image has neither; it has transformers
#: 5.x, which this project's requirements exclude (``<5``), and that needs the
#: huggingface_hub (< 1.0) and tokenizers (<= 0.23.0) it was released with.
WHEELS = ("av", "torchsde", "trampoline", "transformers", "huggingface_hub", "tokenizers")
#: The device machine's interpreter (docs: CPython 3.12.3, x86-64, glibc manylinux).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: What may travel in all (the working tree counts too): warn beyond this.
TRAVEL_LIMIT_MIB = 64
SCRATCH = Path(tempfile.gettempdir()) / "comfyui-runpod-gpu-check"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(name)
    return None


# -- here: make the bundle ---------------------------------------------------------------------


def make(out: Path = BUNDLE, python_version: str = "3.12") -> dict[str, Any]:
    """Download the wheels and pack ComfyUI into ``out``; returns ``bundle.json``'s content."""
    ensure_package()
    from comfyui_runpod.executor import find_comfyui

    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = {}
    for name in WHEELS:
        version = installed_version(name)
        if version is None:
            raise SystemExit(f"{name} is not installed here: run `make setup` first")
        pins[name] = version
    for stale in wheels.glob("*.whl"):
        name, version = stale.name.split("-")[:2]
        if pins.get(_wheel_key(name)) != version:
            stale.unlink()
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    command += ["--only-binary=:all:", "--python-version", python_version]
    command += ["--implementation", "cp", "--dest", str(wheels)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    command += [f"{name}=={version}" for name, version in pins.items()]
    subprocess.run(command, check=True)

    location = find_comfyui()
    archive = out / "comfyui.tar.gz"
    skip = {"tests", "tests-unit", ".git", "__pycache__", "output", "temp", "user"}

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        return None if skip.intersection(parts[1:]) else info

    folder = f"ComfyUI-{location.version or 'unknown'}"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(location.path, arcname=folder, filter=keep)

    files = sorted(wheels.glob("*.whl"))
    manifest = {
        "comfyui": {"file": archive.name, "folder": folder, "version": location.version},
        "wheels": {_wheel_key(f.name.split("-")[0]): f.name for f in files},
        "python_version": python_version,
    }
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
    size = sum(f.stat().st_size for f in [archive, *files]) / 2**20
    manifest["size_mib"] = round(size, 1)
    return manifest


def _wheel_key(name: str) -> str:
    """A wheel file's distribution name as ``WHEELS`` spells it."""
    return next((w for w in WHEELS if _canonical(w) == _canonical(name)), name)


# -- there: use it -----------------------------------------------------------------------------


def plan(manifest: dict[str, Any], version_of=installed_version) -> list[str]:
    """The bundle's wheel files whose exact version the running interpreter does not have."""
    wanted = []
    for name, file in sorted(manifest.get("wheels", {}).items()):
        if version_of(name) != file.split("-")[1]:
            wanted.append(file)
    return wanted


def ensure_package() -> str:
    """Make ``import comfyui_runpod`` load this checkout (a symlink in a private folder when
    it is not installed, or installed from another checkout); returns how."""
    spec = importlib.util.find_spec("comfyui_runpod")
    if spec is not None and spec.origin and Path(spec.origin).resolve().parent == ROOT:
        return "installed"
    link_dir = SCRATCH / "pkg"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "comfyui_runpod"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(ROOT, target_is_directory=True)
    _prepend(str(link_dir))
    for name in [m for m in sys.modules if m.split(".")[0] == "comfyui_runpod"]:
        del sys.modules[name]
    importlib.invalidate_caches()
    return f"linked from {link}"


def activate(bundle: Path = BUNDLE) -> dict[str, Any]:
    """Prepare this interpreter (and its children) to run the GPU check; returns what it did."""
    done: dict[str, Any] = {"package": ensure_package(), "bundle": None}
    manifest_path = bundle / "bundle.json"
    if not manifest_path.is_file():
        return done
    manifest = json.loads(manifest_path.read_text())
    done["bundle"] = str(bundle)
    wanted = plan(manifest)
    if wanted:
        site = SCRATCH / f"site-{sys.version_info.major}{sys.version_info.minor}"
        stamp = site / ".installed.json"
        if not stamp.is_file() or json.loads(stamp.read_text()) != wanted:
            command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index"]
            command += ["--no-deps", "--no-compile", "--no-cache-dir", "--upgrade"]
            command += ["--target", str(site)]
            command += [str(bundle / "wheels" / file) for file in wanted]
            subprocess.run(command, check=True)
            stamp.write_text(json.dumps(wanted))
        _prepend(str(site))
        importlib.invalidate_caches()
    done["installed_wheels"] = wanted

    from comfyui_runpod.executor import ComfyUINotFound, find_comfyui

    try:
        done["comfyui"] = str(find_comfyui().path)
    except ComfyUINotFound:
        info = manifest["comfyui"]
        target = SCRATCH / info["folder"]
        if not (target / "nodes.py").is_file():
            with tarfile.open(bundle / info["file"]) as tar:
                tar.extractall(SCRATCH, filter="data")
        os.environ["COMFYUI_PATH"] = str(target)
        done["comfyui"] = f"{target} (unpacked from the bundle)"
    return done


def _prepend(path: str) -> None:
    if path not in sys.path:
        sys.path.insert(0, path)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if path not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([path, *parts])


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(description="Make the bundle that `make gpu-check` carries.")
    cli.add_argument("--out", type=Path, default=BUNDLE)
    cli.add_argument("--python-version", default="3.12", help="the device's CPython")
    args = cli.parse_args(argv)
    manifest = make(args.out, args.python_version)
    tree = sum(
        (ROOT / line).stat().st_size
        for line in subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        if (ROOT / line).is_file()
    )
    total = manifest["size_mib"] + tree / 2**20
    print(f"{args.out}: {manifest['size_mib']} MiB ({', '.join(manifest['wheels'].values())})")
    print(f"with the tracked tree: {total:.1f} MiB of the {TRAVEL_LIMIT_MIB} MiB that may travel")
    if total > TRAVEL_LIMIT_MIB - 2:
        print("warning: too close to the limit; untracked files travel too", file=sys.stderr)


if __name__ == "__main__":
    main()
