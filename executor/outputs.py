"""Turn ComfyUI's per-node ``ui`` dicts into the contract's ``files`` and ``datas``.

A ``ui`` entry is a file list when its items carry ``filename``/``type`` (images, gifs,
audio, video, 3D, ...); anything else is data. Temp previews and echoes of input files
are not outputs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..nodes.pngtext import read_text, with_text

log = logging.getLogger(__name__)

#: ui keys that only describe the files beside them (e.g. SaveAnimatedWEBP's flag).
_FILE_FLAGS = frozenset({"animated"})
_NOT_OUTPUTS = frozenset({"temp", "input"})


@dataclass(frozen=True)
class OutputFile:
    """One file an output node wrote, with where it came from."""

    path: Path
    node_id: str
    kind: str  # the ui key: images, gifs, audio, video, 3d, ...
    filename: str
    subfolder: str


def _is_file_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and "filename" in item for item in value)
    )


def collect(
    ui_outputs: Mapping[str, Mapping[str, Any]],
    node_order: Iterable[str],
    roots: Mapping[str, Path],
) -> tuple[list[OutputFile], dict[str, dict[str, Any]]]:
    """Split ``ui_outputs`` into files (in the workflow's node order) and datas.

    ``roots``: the folder of each ui ``type`` that holds outputs (ComfyUI's ``output``),
    already resolved.
    """
    order = {node_id: index for index, node_id in enumerate(node_order)}
    root_of = roots.get

    files: list[OutputFile] = []
    datas: dict[str, dict[str, Any]] = {}
    for node_id in sorted(ui_outputs, key=lambda n: order.get(n, len(order))):
        for key, value in (ui_outputs[node_id] or {}).items():
            if _is_file_list(value):
                files.extend(_files_of(node_id, key, value, root_of))
            elif key not in _FILE_FLAGS:
                datas.setdefault(node_id, {})[key] = value
    return files, datas


def _files_of(
    node_id: str,
    kind: str,
    items: list[dict[str, Any]],
    root_of: Callable[[str], Path | None],
) -> Iterable[OutputFile]:
    for item in items:
        kind_of_dir = item.get("type", "output")
        if kind_of_dir in _NOT_OUTPUTS:
            continue
        root = root_of(kind_of_dir)
        if root is None:
            log.warning("node %s reported a file of unknown type %r", node_id, kind_of_dir)
            continue
        subfolder = item.get("subfolder") or ""
        # normpath, not resolve(): ``..`` cannot leave the root either way, and a realpath
        # walk per file costs more than the rest of collecting (symlinks are nodes' code).
        path = Path(os.path.normpath(os.path.join(root, subfolder, item["filename"])))
        if not path.is_relative_to(root) or not path.is_file():
            log.warning("node %s reported %s, which is not a file under %s", node_id, path, root)
            continue
        yield OutputFile(path, node_id, kind, item["filename"], subfolder)


def restore_prefixes(files: Iterable[OutputFile], prefixes: Mapping[str, tuple[str, Any]]) -> None:
    """Put the user's ``filename_prefix`` back into the ``prompt`` chunk of each PNG, in
    place: the run gave ComfyUI its own folder as the prefix (``run-…/name``), which would
    otherwise travel with the file and come back when it is dropped onto a canvas.
    ``prefixes``: node id → (the prefix ComfyUI got, the user's). Pixels are not touched."""
    if not prefixes:
        return
    for output in files:
        if output.path.suffix.lower() != ".png":
            continue
        try:
            data = output.path.read_bytes()
            prompt = json.loads(read_text(data).get("prompt") or "null")
        except (OSError, ValueError):  # not ComfyUI's PNG, or no prompt in it
            continue
        if not isinstance(prompt, dict):
            continue
        changed = False
        for node_id, (given, original) in prefixes.items():
            inputs = (prompt.get(node_id) or {}).get("inputs")
            if isinstance(inputs, dict) and inputs.get("filename_prefix") == given:
                inputs["filename_prefix"] = original
                changed = True
        if changed:
            output.path.write_bytes(with_text(data, {"prompt": json.dumps(prompt)}))
