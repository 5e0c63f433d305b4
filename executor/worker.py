"""The RunPod serverless worker: ``comfyui-runpod worker`` (the image's entrypoint).

ComfyUI boots once at worker start, not per job. The handler is ``async`` on purpose:
runpod runs sync handlers on its own event-loop thread, where they block the loop and
cannot be cancelled (runpod 1.12, ``rp_job.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
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


def make_handler(pipeline: Pipeline, environ: Mapping[str, str] = os.environ) -> Handler:
    import runpod

    # The SDK posts progress to RUNPOD_WEBHOOK_POST_OUTPUT; off RunPod (its local test
    # mode) that is unset and every update would log "Failed to return job results".
    sends_progress = bool(environ.get(RESULT_URL_ENV))
    if not sends_progress:
        log.info("local test mode: progress updates are not sent (%s is unset)", RESULT_URL_ENV)

    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        job_id = str(job.get("id", ""))

        def send(event: dict[str, Any]) -> None:
            runpod.serverless.progress_update(job, event)

        return await pipeline.run(
            job,
            on_progress=ProgressThrottle(send) if sends_progress else None,
            payload_limit=payload_limit_for(job_id),
        )

    return handler


#: Set by RunPod on a serverless worker: where the SDK takes jobs from, and posts to.
JOB_URL_ENV = "RUNPOD_WEBHOOK_GET_JOB"
RESULT_URL_ENV = "RUNPOD_WEBHOOK_POST_OUTPUT"


def local_job_problem(argv: list[str], environ: Mapping[str, str] = os.environ) -> str | None:
    """Why the runpod SDK would exit right after the boot, found before it (one line).

    Off RunPod (``RUNPOD_WEBHOOK_GET_JOB`` unset) the SDK runs one job, from
    ``--test_input`` or ``./test_input.json``, and exits (runpod 1.12, ``rp_local.py``);
    ``--rp_serve_api`` and ``RUNPOD_REALTIME_PORT`` serve HTTP instead.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--test_input")
    parser.add_argument("--rp_serve_api", action="store_true")
    known, _ = parser.parse_known_args(argv)
    if known.test_input:
        try:
            json.loads(known.test_input)
        except ValueError as exc:
            return f"--test_input is not valid JSON: {exc}"
        return None
    if environ.get(JOB_URL_ENV) or known.rp_serve_api or environ.get("RUNPOD_REALTIME_PORT"):
        return None
    if Path("test_input.json").is_file():
        return None
    return (
        f"not on RunPod ({JOB_URL_ENV} is unset), so the runpod SDK runs one test job and "
        "exits: give --test_input '{\"input\": {...}}' or put a test_input.json here; "
        "for a local endpoint that takes jobs, run `comfyui-runpod serve`"
    )


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
