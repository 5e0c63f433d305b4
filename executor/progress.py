"""Turn ComfyUI's executor events into small, uniform progress events.

Events are plain dicts so they can go straight into ``progress_update`` or a status
response: ``{"event", "node", "class", "done", "total", "step", "max", "percent"}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..nodes.imaging import preview_data_url

log = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]
#: At most one preview image per job per this many seconds (``input.previews``).
PREVIEW_INTERVAL_S = 1.0


class ProgressTracker:
    """Per-job state: which node runs, how many are done, the sampler's step."""

    def __init__(
        self,
        prompt: Mapping[str, Mapping[str, Any]],
        callback: ProgressCallback | None,
        previews: bool = False,
    ):
        #: Whether step events may carry a ``preview`` (a small JPEG ``data:`` URL).
        self.previews = previews and callback is not None
        self._last_preview = float("-inf")
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

    def on_step(
        self, value: float, maximum: float, node_id: str | None, preview: Any = None
    ) -> None:
        """Called from ComfyUI's progress-bar hook (sampler steps and the like); ``preview``
        is the hook's latent preview, encoded only when the job asked for previews."""
        if node_id is not None:
            self.node = str(node_id)
        event: dict[str, Any] = {"event": "step", "step": int(value), "max": int(maximum)}
        if self.previews and preview is not None:
            now = time.monotonic()
            if now - self._last_preview >= PREVIEW_INTERVAL_S:
                try:
                    url = preview_data_url(preview)
                except Exception:  # a preview must never fail the job
                    log.exception("could not encode a preview")
                    url = None
                if url is not None:
                    self._last_preview = now
                    event["preview"] = url
        self._emit(event)

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
