"""The local endpoint's jobs: records, one FIFO queue, and the one worker that runs them.

One worker on purpose: the executor runs one prompt at a time anyway, and a job that
waits *here* rather than inside the executor can still be cancelled, purged or expire
without touching ComfyUI. Every job runs through :meth:`Pipeline.run`, nothing else.

Lifetimes follow the hosted API: ``policy.ttl`` (default 24 h) counts from submission over
the job's whole life — a job still queued or running when it passes is dropped (a running
one is interrupted) and its status becomes 404; a finished job is kept for the retention
window (or until its ttl, whichever comes first) and then forgotten, local files included.
Everything here runs on the server's event loop except :meth:`Job.record_progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...nodes.runpod_api import FINAL
from ..delivery import local_folder, payload_limit_for
from ..pipeline import Pipeline

log = logging.getLogger("comfyui_runpod.endpoint")

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMED_OUT = "TIMED_OUT"
RETRYABLE = frozenset({FAILED, TIMED_OUT})
#: Progress events kept for ``/stream`` between two polls (older ones are dropped).
STREAM_CHUNKS = 100
#: Marks the place of the final output in a job's stream (rendered when it is read).
FINAL_CHUNK: dict[str, Any] = {}


class NotRetryable(Exception):
    """``/retry`` on a job that is not FAILED or TIMED_OUT."""


@dataclass(eq=False)
class Job:
    id: str
    #: The request body (``input``, ``policy``, ``s3Config`` ...), kept while a retry may
    #: still need it; it may hold bucket secrets, so it is never logged.
    request: dict[str, Any] | None
    ttl_s: float
    submitted: float
    webhook: str | None = None
    status: str = IN_QUEUE
    started: float | None = None
    finished: float | None = None
    #: When the record goes away: ``submitted + ttl`` until it finishes.
    expires: float = 0.0
    output: dict[str, Any] | None = None
    error: str | None = None
    #: The latest progress event (shown as ``output`` while IN_PROGRESS).
    progress: dict[str, Any] | None = None
    #: The latest live preview (``input.previews``), shown with every later progress event
    #: so that a client polling ``status`` sees it whichever step it lands on.
    preview: str | None = None
    #: Local output files: their index in ``output["files"]`` → name under the job's folder.
    local_files: dict[int, str] = field(default_factory=dict)
    stream: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=STREAM_CHUNKS))
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.expires = self.submitted + self.ttl_s

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def delay_ms(self) -> int | None:
        """Time in the queue, as the hosted ``delayTime``."""
        return None if self.started is None else _ms(self.started - self.submitted)

    @property
    def execution_ms(self) -> int | None:
        if self.started is None:
            return None
        return _ms((self.finished or time.monotonic()) - self.started)

    def record_progress(self, event: dict[str, Any]) -> None:
        """Progress callback; runs on the executor's thread (plain assignment and a
        deque append are atomic, so no lock is needed)."""
        self.stream.append(event)  # each preview once
        if "preview" in event:
            self.preview = event["preview"]
        elif self.preview is not None:
            event = {**event, "preview": self.preview}
        self.progress = event


class JobQueue:
    """Jobs by id, the FIFO queue, and the worker task feeding the pipeline."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        retention_s: float,
        sweep_interval_s: float = 1.0,
        on_final: Callable[[Job], None] | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._retention_s = retention_s
        self._sweep_interval_s = sweep_interval_s
        self._on_final = on_final
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._wake = asyncio.Event()
        self._running: tuple[Job, asyncio.Task[dict[str, Any]]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.counts: Counter[str] = Counter()
        #: The pipeline asked for a fresh worker (e.g. a CUDA error broke the device).
        self.unhealthy = False

    def folder(self, job_id: str) -> Path:
        """The job's local output folder (delivery's, so the two always agree)."""
        return local_folder(self._pipeline.settings.delivery, job_id)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name="endpoint-worker"),
            asyncio.create_task(self._sweep(), name="endpoint-sweeper"),
        ]

    async def close(self) -> None:
        """Interrupt the running job, drop the queue, wake every waiter, delete files."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._queue.clear()
        for job in list(self._jobs.values()):
            job.done.set()
            self._remove_files(job)
        self._jobs.clear()

    # -- requests --------------------------------------------------------------------------

    def submit(
        self, request: dict[str, Any], *, sync: bool, ttl_s: float, webhook: str | None
    ) -> Job:
        job_id = f"{'sync-' if sync else ''}{uuid.uuid4()}"
        job = Job(job_id, request, ttl_s, time.monotonic(), webhook)
        self._jobs[job.id] = job
        self._enqueue(job)
        return job

    def get(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is not None and time.monotonic() >= job.expires:
            self._drop(job)
            return None
        return job

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is None or job.final:
            return job
        if job.status == IN_QUEUE:
            self._queue.remove(job)
        elif self._running is not None and self._running[0] is job:
            self._running[1].cancel()  # Pipeline/Executor turn this into ComfyUI's interrupt
        job.status = CANCELLED
        self._finalize(job)
        return job

    def retry(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is None:
            return None
        if job.status not in RETRYABLE or job.request is None:
            raise NotRetryable(
                f"job {job_id} is {job.status}; only FAILED or TIMED_OUT jobs can be retried"
            )
        job.status, job.submitted = IN_QUEUE, time.monotonic()
        job.expires = job.submitted + job.ttl_s
        job.started = job.finished = job.output = job.error = job.progress = None
        job.preview = None
        job.local_files = {}
        job.stream.clear()
        job.done = asyncio.Event()
        self.counts["retried"] += 1
        self._enqueue(job)
        return job

    def purge(self) -> int:
        """Cancel every queued job (the running one is left alone, as hosted)."""
        purged = list(self._queue)
        self._queue.clear()
        for job in purged:
            job.status = CANCELLED
            self._finalize(job)
        return len(purged)

    async def wait(self, job: Job, timeout_s: float) -> None:
        """Wait until ``job`` is final (or dropped), at most ``timeout_s``."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(job.done.wait(), max(timeout_s, 0.0))

    def health(self) -> dict[str, Any]:
        running = int(self._running is not None and not self._running[0].final)
        return {
            "jobs": {
                "completed": self.counts[COMPLETED],
                "failed": self.counts[FAILED] + self.counts[TIMED_OUT],
                "inProgress": running,
                "inQueue": len(self._queue),
                "retried": self.counts["retried"],
            },
            "workers": {"idle": 1 - running, "running": running, "unhealthy": int(self.unhealthy)},
        }

    # -- the worker ------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job = await self._next()
            await self._execute(job)

    async def _next(self) -> Job:
        while True:
            self._expire_due()
            if self._queue:
                return self._queue.popleft()
            self._wake.clear()
            await self._wake.wait()

    async def _execute(self, job: Job) -> None:
        assert job.request is not None
        job.status, job.started = IN_PROGRESS, time.monotonic()
        task = asyncio.create_task(
            self._pipeline.run(
                {**job.request, "id": job.id},
                on_progress=job.record_progress,
                payload_limit=payload_limit_for(job.id),
            )
        )
        self._running = (job, task)
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:  # the server stops: interrupt the job, then stop
            task.cancel()
            await asyncio.wait({task})
            raise
        finally:
            self._running = None
            self._settle(job, task)

    def _settle(self, job: Job, task: asyncio.Task[dict[str, Any]]) -> None:
        """Turn the pipeline task's outcome into the job's final state."""
        outcome = task.exception() if task.done() and not task.cancelled() else None
        if self._jobs.get(job.id) is not job or job.final:
            # Cancelled, purged or expired while running: whatever it produced is unwanted.
            self._remove_files(job)
            return
        if not task.done() or task.cancelled():
            job.status = CANCELLED
        elif outcome is not None:
            log.error("job %s: the pipeline raised", job.id, exc_info=outcome)
            job.status, job.error = FAILED, f"internal_error: {type(outcome).__name__}: {outcome}"
            job.output = {"error_code": "internal_error"}
        else:
            self._apply(job, task.result())
        self._finalize(job)

    def _apply(self, job: Job, result: dict[str, Any]) -> None:
        """Split a pipeline result like the runpod SDK does: ``error`` and
        ``refresh_worker`` come out, the rest (codes, details, timings) is ``output``."""
        output = dict(result)
        error = output.pop("error", None)
        if output.pop("refresh_worker", False):
            self.unhealthy = True
            log.warning("job %s left the device unusable: restart comfyui-runpod serve", job.id)
        if error is None:
            job.status = COMPLETED
            job.local_files = _local_files(output.get("file_info"))
        else:
            code = output.get("error_code")
            job.status = {"timeout": TIMED_OUT, "cancelled": CANCELLED}.get(code, FAILED)
            job.error = str(error)
        job.output = output or None

    def _finalize(self, job: Job) -> None:
        job.finished = time.monotonic()
        job.expires = min(job.expires, job.finished + self._retention_s)
        if job.status not in RETRYABLE:
            job.request = None  # nothing can need it again; it may be megabytes
        if job.status == COMPLETED and job.output is not None:
            job.stream.append(FINAL_CHUNK)
        self.counts[job.status] += 1
        job.done.set()
        extra = f" error={(job.output or {}).get('error_code', '?')}" if job.error else ""
        log.info(
            "job %s %s delay=%sms execution=%sms%s",
            job.id,
            job.status,
            job.delay_ms if job.delay_ms is not None else "-",
            job.execution_ms if job.execution_ms is not None else "-",
            extra,
        )
        if self._on_final is not None:
            try:
                self._on_final(job)
            except Exception:  # a webhook problem must never stop the worker
                log.exception("job %s: the final-state hook failed", job.id)

    # -- expiry ----------------------------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            self._expire_due()

    def _expire_due(self) -> None:
        now = time.monotonic()
        for job in [j for j in self._jobs.values() if now >= j.expires]:
            self._drop(job)

    def _drop(self, job: Job) -> None:
        """Forget ``job``: out of the queue, interrupted if running, files deleted."""
        self._jobs.pop(job.id, None)
        if not job.final:
            log.info("job %s EXPIRED while %s (ttl %.0fms)", job.id, job.status, job.ttl_s * 1e3)
            if job.status == IN_QUEUE:
                with contextlib.suppress(ValueError):
                    self._queue.remove(job)
            elif self._running is not None and self._running[0] is job:
                self._running[1].cancel()
        job.done.set()
        self._remove_files(job)

    def _enqueue(self, job: Job) -> None:
        self._queue.append(job)
        self._wake.set()

    def _remove_files(self, job: Job) -> None:
        shutil.rmtree(self.folder(job.id), ignore_errors=True)


def _local_files(file_info: Any) -> dict[int, str]:
    """Files delivery left in the job's local folder (its ``file_info`` says which), by
    their index in ``files``: the server serves exactly these, as URLs."""
    if not isinstance(file_info, list):
        return {}
    return {
        index: info["name"]
        for index, info in enumerate(file_info)
        if isinstance(info, dict) and info.get("delivered") == "local"
    }


def _ms(seconds: float) -> int:
    return max(round(seconds * 1000), 0)
