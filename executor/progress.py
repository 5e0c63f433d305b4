"""Turn ComfyUI's executor events into small, uniform progress events.

Events are plain dicts so they can go straight into ``progress_update`` or a status
response: ``{"event", "node", "class", "done", "total", "step", "max", "percent"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]


class ProgressTracker:
    """Per-job state: which node runs, how many are done, the sampler's step."""

    def __init__(self, prompt: Mapping[str, Mapping[str, Any]], callback: ProgressCallback | None):
        self._classes = {node_id: node.get("class_type", "?") for node_id, node in prompt.items()}
        self._callback = callback
        self.total = len(prompt)
        self.done = 0
        self.node: str | None = None
        self.cached: list[str] = []

    def on_event(self, event: str, data: Any) -> None:
        """Listener for ``HeadlessServer.send_sync``."""
        if event == "execution_start":
            self._emit({"event": "started"})
        elif event == "execution_cached":
            self.cached = [str(n) for n in data.get("nodes", [])]
            self.total = max(len(self._classes) - len(self.cached), 1)
            if self.cached:
                self._emit({"event": "cached", "nodes": len(self.cached)})
        elif event == "executing" and data.get("node") is not None:
            if self.node is not None:
                self.done = min(self.done + 1, self.total)
            self.node = str(data["node"])
            self._emit({"event": "node"})
        elif event == "execution_success":
            self.done, self.node = self.total, None
            self._emit({"event": "finished"})

    def on_step(self, value: float, maximum: float, node_id: str | None) -> None:
        """Called from ComfyUI's progress-bar hook (sampler steps and the like)."""
        if node_id is not None:
            self.node = str(node_id)
        self._emit({"event": "step", "step": int(value), "max": int(maximum)})

    def _emit(self, event: dict[str, Any]) -> None:
        if self._callback is None:
            return
        fraction = 0.0
        if event.get("max"):
            fraction = min(event["step"] / event["max"], 1.0)
        event.update(
            node=self.node,
            done=self.done,
            total=self.total,
            percent=round(100 * min((self.done + fraction) / self.total, 1.0), 1),
        )
        event["class"] = self._classes.get(self.node) if self.node else None
        try:
            self._callback(event)
        except Exception:  # a broken listener must never fail the job
            log.exception("progress callback failed")
