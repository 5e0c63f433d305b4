"""Webhooks: POST a job's final status object to the caller's URL, as the hosted API does.

Each delivery is its own task, so a slow or dead receiver never holds up the queue; a
try fails on a connection error, a timeout or a non-2xx answer, and is repeated after a
pause (hosted: 2 more tries, 10 s apart). Logs name only the receiver's host: webhook
URLs often carry a token in their query.

A webhook URL comes from the job, so, like the job's other URLs, it may reach public
addresses only (unless ``--allow-private-urls``): the resolver refuses a name with any
non-public address, and aiohttp connects to the addresses that resolver returned, so a
rebinding DNS answer cannot slip past. Redirects are not followed (a 3xx is a failed try).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

from ...nodes.netguard import ALLOW_FLAG, URLRefused, check_addresses

log = logging.getLogger("comfyui_runpod.endpoint")


class WebhookSender:
    def __init__(
        self,
        *,
        attempts: int = 3,
        retry_delay_s: float = 10.0,
        timeout_s: float = 10.0,
        allow_private: bool = False,
    ):
        self._attempts = attempts
        self._retry_delay_s = retry_delay_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[bool]] = set()

    async def check(self, url: str) -> None:
        """Refuse (``URLRefused``, its message names the flag) a webhook whose host is or
        resolves to a non-public address, so the caller hears it when submitting. A name
        that does not resolve now is let through: delivery checks again, and logs."""
        if self._allow_private:
            return
        host = urlsplit(url).hostname or ""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, 0, type=socket.SOCK_STREAM)
        except OSError:
            return
        _refuse_private(host, [info[4][0] for info in infos])

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
                if not self._allow_private:
                    _check_literal(urlsplit(url).hostname or "")
                session = self._client()
                async with session.post(
                    url,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    allow_redirects=False,
                ) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        log.info("job %s webhook delivered to %s (try %d)", job_id, host, attempt)
                        return True
                    reason = f"HTTP {response.status}"
            except URLRefused as exc:
                log.warning("job %s webhook to %s refused: %s", job_id, host, exc)
                return False
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
            resolver = None if self._allow_private else _PublicResolver()
            connector = aiohttp.TCPConnector(resolver=resolver)
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        return self._session


class _PublicResolver(ThreadedResolver):
    """Resolves as aiohttp's default does, then refuses any non-public answer: what it
    returns is what aiohttp connects to, so the checked addresses are the connected ones."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await super().resolve(host, port, family)
        _refuse_private(host, [result["host"] for result in results])
        return results


def _check_literal(host: str) -> None:
    """aiohttp does not ask the resolver about an IP address written in the URL."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return
    _refuse_private(host, [host])


def _refuse_private(host: str, addresses: list[str]) -> None:
    try:
        check_addresses(host, addresses)
    except URLRefused as exc:
        raise URLRefused(
            host, f"webhook: {exc}, which job URLs may not reach; serve's {ALLOW_FLAG} allows it"
        ) from None
