"""The RunPod serverless worker: ``comfyui-runpod worker`` (the image's entrypoint).

ComfyUI boots once at worker start, not per job. The handler is ``async`` on purpose:
runpod runs sync handlers on its own event-loop thread, where they block the loop and
cannot be cancelled (runpod 1.12, ``rp_job.py``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .delivery import payload_limit_for
from .pipeline import Pipeline
from .request import job_from_document

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ProgressThrottle:
    """Forward at most one progress event per ``interval_s``, plus the first and last.

    RunPod bills nothing for progress but each update is an HTTP call from the worker.
    A dropped event's ``preview`` rides on the next one sent (previews are rare: at most
    one a second), so the latest preview always reaches the status.
    """

    def __init__(self, send: Callable[[dict[str, Any]], None], interval_s: float = 0.5):
        self._send, self._interval, self._last = send, interval_s, 0.0
        self._preview: str | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        if event["event"] in ("started", "finished") or now - self._last >= self._interval:
            self._last = now
            if self._preview is not None and "preview" not in event:
                event = {**event, "preview": self._preview}
            self._preview = None
            self._send(event)
        elif "preview" in event:
            self._preview = event["preview"]


def make_handler(pipeline: Pipeline) -> Handler:
    import runpod

    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        job_id = str(job.get("id", ""))

        def send(event: dict[str, Any]) -> None:
            runpod.serverless.progress_update(job, event)

        return await pipeline.run(
            job, on_progress=ProgressThrottle(send), payload_limit=payload_limit_for(job_id)
        )

    return handler


def warm_up(pipeline: Pipeline, workflow_file: Path) -> None:
    """Run one workflow before taking jobs, so the first paid job finds models loaded."""
    job = job_from_document(json.loads(workflow_file.read_text(encoding="utf-8")))
    result = pipeline.run_sync({**job, "id": "warmup"})
    if "error" in result:
        raise RuntimeError(f"warmup workflow {workflow_file} failed: {result['error']}")
    log.info("warmup done in %.2fs", result["timings"]["total_s"])


def start(pipeline: Pipeline) -> None:
    """Hand the handler to the runpod SDK; returns only when the SDK exits."""
    import runpod

    runpod.serverless.start({"handler": make_handler(pipeline)})
