"""Node modules that failed to import at boot: collected, reported in one line each, and
named when a job asks for a node type one of them would have provided.

ComfyUI keeps going when a node module fails to import: it logs the whole traceback, and
the failure shows up much later as "unknown node type" in somebody's job. While ComfyUI
loads its nodes, :class:`ImportReport` catches those log records (ComfyUI writes them to
the root logger from ``nodes.load_custom_node``) and keeps one :class:`FailedModule` each.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: ComfyUI's own node folders (a failure there is the set-up's fault, not a custom pack's).
CORE_FOLDERS = ("comfy_extras", "comfy_api_nodes")
_CANNOT_IMPORT = re.compile(r"^Cannot import (.+?) module for custom nodes: (.*)$", re.S)
#: Source read per failed module to find the node types it declares.
_MAX_SOURCE_FILES, _MAX_SOURCE_BYTES = 200, 2_000_000


@dataclass(frozen=True)
class FailedModule:
    """A node module ComfyUI could not import."""

    #: As a person finds it: relative to the ComfyUI folder when inside it.
    name: str
    #: The exception in one line, e.g. ``ModuleNotFoundError: No module named 'x'``.
    error: str
    #: One of ComfyUI's own modules (``comfy_extras/...``), not a custom node pack.
    core: bool
    #: Node types its source declares (best effort: read, never imported).
    node_types: frozenset[str] = frozenset()

    @property
    def line(self) -> str:
        return f"{self.name}: {self.error}"


class ImportReport(logging.Filter):
    """Turns ComfyUI's traceback-then-summary pair per failed module into one record."""

    def __init__(self, comfyui_path: Path) -> None:
        super().__init__()
        self.comfyui_path = comfyui_path
        self.failed: list[FailedModule] = []
        self._last_error: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Traceback (most recent call last)"):
            lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
            self._last_error = lines[-1] if lines else None
            return False
        match = _CANNOT_IMPORT.match(message)
        if match is None:
            return True
        path = Path(match.group(1))
        error = self._last_error or match.group(2).strip()
        self._last_error = None
        name = _display_name(path, self.comfyui_path)
        core = name.split("/", 1)[0] in CORE_FOLDERS
        self.failed.append(FailedModule(name, error, core, _declared_node_types(path)))
        return False

    @contextmanager
    def capturing(self, report: bool = True) -> Iterator[ImportReport]:
        """Catch ComfyUI's import failures while the block runs; log one line each after
        (unless not ``report``: a first try that is retried)."""
        root = logging.getLogger()
        root.addFilter(self)
        try:
            yield self
        finally:
            root.removeFilter(self)
        for failed in self.failed if report else ():
            log.warning("node module failed to import: %s", failed.line)


def provider_of(node_type: str, failed: Sequence[FailedModule]) -> FailedModule | None:
    """The failed module that declares ``node_type``, if one does."""
    return next((module for module in failed if node_type in module.node_types), None)


def _display_name(path: Path, comfyui_path: Path) -> str:
    try:
        return path.resolve().relative_to(comfyui_path.resolve()).as_posix()
    except (OSError, ValueError):
        return str(path)


def _declared_node_types(path: Path) -> frozenset[str]:
    """Node ids a module's source declares: string keys of a ``NODE_CLASS_MAPPINGS`` dict
    (V1 nodes) and ``node_id="..."`` arguments (V3 ``io.Schema``)."""
    files = sorted(path.rglob("*.py"))[:_MAX_SOURCE_FILES] if path.is_dir() else [path]
    found: set[str] = set()
    budget = _MAX_SOURCE_BYTES
    for file in files:
        try:
            source = file.read_text(encoding="utf-8", errors="replace")[:budget]
            tree = ast.parse(source)
        except (OSError, SyntaxError, ValueError):
            continue
        budget -= len(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                if any(getattr(t, "id", None) == "NODE_CLASS_MAPPINGS" for t in node.targets):
                    found.update(_strings(node.value.keys))
            elif isinstance(node, ast.keyword) and node.arg == "node_id":
                found.update(_strings([node.value]))
        if budget <= 0:
            break
    return frozenset(found)


def _strings(values: list[ast.expr | None]) -> list[str]:
    return [v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)]


def summary(failed: list[FailedModule], node_types: Mapping[str, object]) -> dict[str, object]:
    """What ``/health`` and ``comfyui nodes --json`` say about the node set."""
    return {
        "nodeTypes": len(node_types),
        "failedModules": len(failed),
        "failed": [{"module": f.name, "error": f.error, "core": f.core} for f in failed],
    }
