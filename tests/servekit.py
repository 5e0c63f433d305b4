"""``serve`` in-process for the endpoint tests: the real app on a loopback port, on a
thread of its own, with helpers to call it and wait for jobs; the ``serve`` fixture starts
them (a pytest plugin of ``conftest.py``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from comfyui_runpod.executor.endpoint import Server, ServeSettings, make_app
from comfyui_runpod.executor.pipeline import Pipeline
from httpkit import http


class ServeThread:
    """``comfyui-runpod serve`` (the real aiohttp app) on a free loopback port, on its own
    event-loop thread. With an ``api_key`` every call carries it unless ``authorized=False``."""

    def __init__(self, pipeline: Pipeline, **overrides: Any) -> None:
        fast = {"webhook_retry_delay_s": 0.1, "sweep_interval_s": 0.05}
        self.settings = ServeSettings(host="127.0.0.1", port=0, **{**fast, **overrides})
        self.pipeline = pipeline
        self.default_media = pipeline.settings.media
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="serve", daemon=True)
        self.thread.start()

        async def boot() -> tuple[Server, str]:
            server = Server(make_app(pipeline, self.settings), "127.0.0.1", 0)
            return server, await server.start()

        self.server, self.url = asyncio.run_coroutine_threadsafe(boot(), self.loop).result(10)

    @property
    def base(self) -> str:
        return f"{self.url}/v2/{self.settings.endpoint_id}"

    @property
    def auth(self) -> dict[str, str]:
        key = self.settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def use_media(self, **overrides: Any) -> None:
        """This server's media settings for the next jobs (the server default plus these)."""
        media = replace(self.default_media, **overrides) if overrides else self.default_media
        self.pipeline.settings = replace(self.pipeline.settings, media=media)

    def call(
        self, method: str, path: str, body: Any = None, *, authorized: bool = True, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = {**(self.auth if authorized else {}), **kwargs.pop("headers", {})}
        return http(method, f"{self.base}/{path}", body, headers=headers, **kwargs)

    def status(self, job_id: str) -> dict[str, Any]:
        code, body = self.call("GET", f"status/{job_id}")
        assert code == 200, body
        return body

    def wait(self, job_id: str, *states: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (body := self.status(job_id))["status"] not in states:
            assert time.monotonic() < deadline, f"still {body['status']}, wanted {states}"
            time.sleep(0.01)
        return body

    def health(self) -> dict[str, Any]:
        code, body = self.call("GET", "health")
        assert code == 200, body
        return body

    def stop(self) -> None:
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def serve(make_pipeline: Callable[..., Pipeline]) -> Iterator[Callable[..., ServeThread]]:
    """Start a server (``ServeSettings`` overrides as keywords); stopped after the test."""
    started: list[ServeThread] = []

    def start(**overrides: Any) -> ServeThread:
        started.append(ServeThread(make_pipeline(), **overrides))
        return started[-1]

    yield start
    for running in started:
        running.stop()
