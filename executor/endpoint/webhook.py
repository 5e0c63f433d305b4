"""Webhooks: POST a job's final status object to the caller's URL, as the hosted API does.

Each delivery is its own task, so a slow or dead receiver never holds up the queue; a
try fails on a connection error, a timeout or a non-2xx answer, and is repeated after a
pause (hosted: 2 more tries, 10 s apart). Logs name only the receiver's host: webhook
URLs often carry a token in their query.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp

log = logging.getLogger("comfyui_runpod.endpoint")


class WebhookSender:
    def __init__(self, *, attempts: int = 3, retry_delay_s: float = 10.0, timeout_s: float = 10.0):
        self._attempts = attempts
        self._retry_delay_s = retry_delay_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[bool]] = set()

    def send(self, url: str, job_id: str, payload: dict[str, Any]) -> None:
        """Deliver in the background; the payload is serialized now (a snapshot)."""
        body = json.dumps(payload, default=str).encode("utf-8")
        task = asyncio.create_task(self._deliver(url, job_id, body), name=f"webhook-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop pending deliveries (their retries would outlive the server)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _deliver(self, url: str, job_id: str, body: bytes) -> bool:
        host = urlsplit(url).netloc.rsplit("@", 1)[-1]
        reason = ""
        for attempt in range(1, self._attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self._retry_delay_s)
            try:
                session = self._client()
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        log.info("job %s webhook delivered to %s (try %d)", job_id, host, attempt)
                        return True
                    reason = f"HTTP {response.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                reason = type(exc).__name__
            log.warning(
                "job %s webhook to %s failed (try %d of %d): %s",
                job_id,
                host,
                attempt,
                self._attempts,
                reason,
            )
        return False

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session
