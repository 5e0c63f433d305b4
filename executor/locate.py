"""Find the ComfyUI tree to boot.

Order (first hit wins), so that a user always knows which ComfyUI ran:
1. ``COMFYUI_PATH`` — an explicit choice always wins, and a wrong one is an error
   rather than a silent fall-through to another copy;
2. the ComfyUI this pack is installed inside (``ComfyUI/custom_nodes/<pack>``);
3. the copy ``comfyui-runpod comfyui install`` provisioned: the default version's, else
   the newest one there (a copy of an older pin keeps working after an upgrade).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: The newest ComfyUI version CI tests: what ``comfyui install`` and the image provision by
#: default. CI also tests :data:`TESTED_VERSIONS`' others (``make test``: one lane each).
PINNED_VERSION = "0.33.0"
#: Every version CI tests, newest first.
TESTED_VERSIONS = (PINNED_VERSION, "0.3.75")

_PACK_DIR = Path(__file__).resolve().parent.parent


class ComfyUINotFound(RuntimeError):
    """No usable ComfyUI tree; the message says how to get one."""


@dataclass(frozen=True)
class ComfyLocation:
    path: Path
    source: str
    version: str | None

    def describe(self) -> str:
        return f"ComfyUI {self.version or '(unknown version)'} at {self.path} (from {self.source})"


def data_home(environ: Mapping[str, str] = os.environ) -> Path:
    """Where provisioned ComfyUI copies live (``COMFYUI_RUNPOD_HOME`` overrides)."""
    if environ.get("COMFYUI_RUNPOD_HOME"):
        return Path(environ["COMFYUI_RUNPOD_HOME"]).expanduser()
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "comfyui-runpod"


def provisioned_dir(version: str = PINNED_VERSION, environ: Mapping[str, str] = os.environ) -> Path:
    return data_home(environ) / f"ComfyUI-{version}"


def is_comfyui_tree(path: Path) -> bool:
    return (
        (path / "execution.py").is_file()
        and (path / "nodes.py").is_file()
        and (path / "comfy").is_dir()
    )


def read_version(path: Path) -> str | None:
    """Read ``comfyui_version.py`` without importing it (importing ComfyUI has side effects)."""
    try:
        text = (path / "comfyui_version.py").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text)
    return match.group(1) if match else None


def find_comfyui(environ: Mapping[str, str] = os.environ) -> ComfyLocation:
    explicit = environ.get("COMFYUI_PATH")
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not is_comfyui_tree(path):
            raise ComfyUINotFound(
                f"COMFYUI_PATH={explicit} is not a ComfyUI folder "
                "(expected execution.py, nodes.py and comfy/ inside it)"
            )
        return ComfyLocation(path, "COMFYUI_PATH", read_version(path))

    if _PACK_DIR.parent.name == "custom_nodes" and is_comfyui_tree(_PACK_DIR.parent.parent):
        path = _PACK_DIR.parent.parent
        return ComfyLocation(path, "custom_nodes parent", read_version(path))

    path = provisioned_dir(environ=environ)
    if is_comfyui_tree(path):
        return ComfyLocation(path, "provisioned copy", read_version(path))
    others = _provisioned_copies(data_home(environ))
    if others:
        return ComfyLocation(others[0], "provisioned copy", read_version(others[0]))

    raise ComfyUINotFound(
        "no ComfyUI found: set COMFYUI_PATH to a ComfyUI folder, install this pack into "
        f"ComfyUI/custom_nodes/, or run `comfyui-runpod comfyui install` (provisions {path})"
    )


def _provisioned_copies(home: Path) -> list[Path]:
    """``ComfyUI-<version>`` trees under ``home``, newest version first."""
    try:
        found = [p for p in home.glob("ComfyUI-*") if is_comfyui_tree(p)]
    except OSError:
        return []
    return sorted(found, key=lambda p: _version_key(p.name.removeprefix("ComfyUI-")), reverse=True)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in version.split("."))
