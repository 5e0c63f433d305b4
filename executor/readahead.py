"""Read the warmup's model files while ComfyUI imports, so the warmup finds them in memory.

On RunPod a model usually sits on a network volume: the first read of a multi-GB checkpoint
takes seconds, and a worker's warmup would pay them after the seconds of its boot. The boot
is CPU-bound Python and a file read releases the GIL, so the two overlap: a thread reads
each file through once (into the page cache) while the imports run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

#: Model files by extension, as ComfyUI lists them (``folder_paths.supported_pt_extensions``)
#: plus GGUF (custom loaders).
EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl", ".sft", ".gguf")
_CHUNK = 16 * 1024 * 1024


def model_names(document: Any) -> list[str]:
    """Strings in a workflow (API format or saved) or job that name a model file: loader
    inputs in either format, without knowing the node types (ComfyUI is not loaded yet)."""
    found: dict[str, None] = {}
    for value in _strings(document):
        if value.lower().endswith(EXTENSIONS) and "://" not in value and len(value) < 512:
            found[value] = None
    return list(found)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def start(folder_paths: ModuleType, names: Iterable[str]) -> threading.Thread | None:
    """Find ``names`` in ComfyUI's model folders (now, on this thread) and read them on a
    daemon thread; None when none is found. The thread logs what it read."""
    paths: dict[Path, None] = {}
    for name in names:
        for folder in list(folder_paths.folder_names_and_paths):
            if folder == "custom_nodes":
                continue
            full = folder_paths.get_full_path(folder, name)
            if full:
                paths[Path(full)] = None
                break
    if not paths:
        return None
    thread = threading.Thread(
        target=_read, args=(list(paths),), name="model-read-ahead", daemon=True
    )
    thread.start()
    return thread


def _read(paths: list[Path]) -> int:
    began, total = time.perf_counter(), 0
    buffer = bytearray(_CHUNK)
    for path in paths:
        try:
            with path.open("rb", buffering=0) as file:
                while count := file.readinto(buffer):
                    total += count
        except OSError as exc:
            log.warning("model read-ahead skipped %s: %s", path.name, exc)
    log.info(
        "read %d model file(s) ahead, %.1f MiB in %.1fs, during the boot",
        len(paths),
        total / 2**20,
        time.perf_counter() - began,
    )
    return total
