"""The project's one RunPod API client (aiohttp): submit, poll, cancel, fetch results.

Speaks the hosted API (``https://api.runpod.ai/v2/<endpoint>/...``) and therefore also
``comfyui-runpod serve``: the base URL comes from ``RUNPOD_ENDPOINT_BASE_URL`` like the
official SDK's. FAILED jobs keep their error text (the SDK's ``output()`` drops it).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp

DEFAULT_BASE_URL = "https://api.runpod.ai/v2"
BASE_URL_ENV = "RUNPOD_ENDPOINT_BASE_URL"
#: Where ``comfyui-runpod serve`` answers by default.
LOCAL_SERVE_BASE_URL = "http://127.0.0.1:8000/v2"
FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})

StatusCallback = Callable[[dict[str, Any]], None]


class RunPodError(RuntimeError):
    """The API refused a request, or a job ended in a state other than COMPLETED."""

    def __init__(
        self, message: str, status: dict[str, Any] | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status or {}
        #: The HTTP status the API answered with, when it answered with an error.
        self.http_status = http_status


class RunPodAuthError(RunPodError):
    """HTTP 401: the endpoint refused the API key (callers say so without the key)."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


class RunPodClient:
    """One endpoint's API. Use it as ``async with RunPodClient(...)`` (a session of its
    own), or hand it a long-lived ``session`` (the desktop routes keep one for all jobs;
    the client then never closes it)."""

    def __init__(
        self,
        endpoint_id: str,
        api_key: str | None = None,
        base_url: str | None = None,
        request_timeout_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if not endpoint_id or "/" in endpoint_id:
            raise ValueError(f"invalid endpoint id {endpoint_id!r}")
        from_env = os.environ.get(BASE_URL_ENV)
        base = base_url or from_env or DEFAULT_BASE_URL
        self.url = f"{base.rstrip('/')}/{endpoint_id}"
        self._unreachable_hint = _unreachable_hint(base, given=bool(base_url), env=from_env)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> RunPodClient:
        if self._owns_session:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self, job_input: dict[str, Any], **extra: Any) -> str:
        """``POST /run``; returns the job id. ``extra``: ``webhook``, ``policy``, ``s3Config``."""
        answer = await self._call("POST", "run", {"input": job_input, **extra})
        if "id" not in answer:
            raise RunPodError(f"{self.url}/run answered without a job id: {answer}")
        return str(answer["id"])

    async def status(self, job_id: str) -> dict[str, Any]:
        return await self._call("GET", f"status/{job_id}")

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "health")

    @property
    def has_key(self) -> bool:
        """Whether requests carry an API key (never the key itself)."""
        return bool(self._headers)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._call("POST", f"cancel/{job_id}")

    async def wait(
        self,
        job_id: str,
        *,
        timeout_s: float,
        on_status: StatusCallback | None = None,
        first_poll_s: float = 0.2,
        max_poll_s: float = 2.0,
    ) -> dict[str, Any]:
        """Poll ``status`` with backoff until the job ends; COMPLETED returns its status."""
        deadline = time.monotonic() + timeout_s
        delay = first_poll_s
        while True:
            status = await self.status(job_id)
            if on_status is not None:
                on_status(status)
            state = status.get("status")
            if state == "COMPLETED":
                return status
            if state in FINAL:
                error = status.get("error") or (status.get("output") or {}).get("error")
                raise RunPodError(f"job {job_id} {state}: {error or 'no error text'}", status)
            if time.monotonic() + delay > deadline:
                raise RunPodError(f"job {job_id} still {state} after {timeout_s:g}s", status)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, max_poll_s)

    async def fetch(self, url: str) -> bytes:
        """Download a result file (a bucket URL, or a file URL ``serve`` hands out)."""
        session = self._require_session()
        # Bucket URLs are presigned: our Authorization header must not go to the bucket.
        headers = self._headers if url.startswith(self.url) else {}
        async with session.get(url, headers=headers, timeout=self._timeout) as response:
            if response.status != 200:
                raise RunPodError(f"could not fetch a result file: HTTP {response.status}")
            return await response.read()

    async def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        session = self._require_session()
        url = f"{self.url}/{path}"
        try:
            async with session.request(
                method, url, json=body, headers=self._headers, timeout=self._timeout
            ) as response:
                text = await response.text()
                if response.status == 401:
                    raise RunPodAuthError(
                        f"{url}: 401 unauthorized — set RUNPOD_API_KEY (or runpod_api_key in "
                        "the user config file) to a key for this endpoint",
                        self.url,
                    )
                if response.status >= 400:
                    raise RunPodError(
                        f"{url}: HTTP {response.status}: {text[:300]}",
                        http_status=response.status,
                    )
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    raise RunPodError(f"{url}: not JSON: {text[:300]}") from None
        except aiohttp.ClientConnectionError as exc:
            if not isinstance(exc, aiohttp.ClientConnectorError):  # dropped mid-answer
                raise RunPodError(f"{url}: {type(exc).__name__}: {exc}") from None
            raise RunPodError(
                f"cannot connect to {url} ({exc.strerror or exc}): {self._unreachable_hint}"
            ) from None
        except aiohttp.ClientError as exc:
            raise RunPodError(f"{url}: {type(exc).__name__}: {exc}") from None
        if not isinstance(answer, dict):
            raise RunPodError(f"{url}: expected a JSON object, got {text[:300]}")
        return answer

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use RunPodClient as `async with RunPodClient(...) as client`")
        return self._session


def _unreachable_hint(base: str, *, given: bool, env: str | None) -> str:
    """What to check when the endpoint cannot be reached, by where its base URL came from
    (RunPod's own API is the default, so a newcomer's local test meets it first)."""
    if given:
        return f"base URL {base}: is the endpoint running there?"
    if env:
        return f"{BASE_URL_ENV}={base}: is `comfyui-runpod serve` (or the endpoint) running there?"
    return (
        f"{BASE_URL_ENV} is unset, so this is RunPod's API; for a local "
        f"`comfyui-runpod serve`, start it and set {BASE_URL_ENV}={LOCAL_SERVE_BASE_URL}"
    )
