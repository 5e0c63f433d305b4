"""Fixtures of the reliability suite. ComfyUI is the session's one ``executor``; each
module gets its own ``serve`` and pipelines on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from comfyui_runpod.executor import Executor
from comfyui_runpod.executor.delivery import DeliverySettings
from comfyui_runpod.executor.inputs import MediaSettings
from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings
from reliability_kit import API_KEY, Web
from s3server import S3Server, closed_port_url
from servekit import ServeThread


@dataclass
class Env:
    """What the bodies of the cases point at."""

    s3: S3Server
    bucket: str
    web: str
    closed: str
    out: Path


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reliability-out")


@pytest.fixture(scope="module")
def pipeline_for(executor: Executor, out_dir: Path) -> Callable[..., Pipeline]:
    """A Pipeline on the shared ComfyUI. Media settings default to production's (no
    private or loopback URLs); keywords override them."""

    def make(environ: dict[str, str] | None = None, **media: Any) -> Pipeline:
        settings = PipelineSettings(
            delivery=DeliverySettings(local_dir=out_dir),
            media=MediaSettings(**media),
            environ=environ or {},
        )
        return Pipeline(executor, settings)

    return make


@pytest.fixture(scope="module")
def served(pipeline_for: Callable[..., Pipeline]) -> Iterator[ServeThread]:
    """One ``serve`` (with an API key) for the module; it stops itself afterwards."""
    running = ServeThread(pipeline_for(), api_key=API_KEY)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    server = Web()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def env(s3_server: S3Server, web: str, out_dir: Path) -> Env:
    bucket = s3_server.make_bucket("reliability")
    return Env(s3_server, bucket, web, closed_port_url(), out_dir)


@pytest.fixture
def serve_factory(pipeline_for: Callable[..., Pipeline]) -> Iterator[Callable[..., ServeThread]]:
    """Start a ``serve`` of its own (``ServeSettings`` overrides as keywords, ``media``
    settings for its pipeline); stopped after the test."""
    started: list[ServeThread] = []

    def start(media: dict[str, Any] | None = None, **overrides: Any) -> ServeThread:
        pipeline = pipeline_for(**(media or {}))
        started.append(ServeThread(pipeline, **{"api_key": API_KEY, **overrides}))
        return started[-1]

    yield start
    for running in started:
        running.stop()
