"""Hostile input through a real ``serve``: a saved workflow that expands to millions of
nodes is refused at once, a large one converts off the event loop (``/health`` keeps
answering), and numbers too large for a float are a 400, not a 500."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import savedkit
from comfyui_runpod.executor import Executor
from comfyui_runpod.executor.delivery import DeliverySettings
from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings
from reliability_kit import API_KEY
from servekit import ServeThread


def serve_with(executor: Executor, out: Path, **settings: object) -> ServeThread:
    pipeline = Pipeline(
        executor,
        PipelineSettings(delivery=DeliverySettings(local_dir=out), environ={}, **settings),
    )
    return ServeThread(pipeline, api_key=API_KEY)


@pytest.fixture
def running(executor: Executor, out_dir: Path) -> Iterator[ServeThread]:
    served = serve_with(executor, out_dir)
    yield served
    served.stop()


def test_a_subgraph_bomb_is_refused_at_once_and_serve_stays_small(running: ServeThread) -> None:
    """21 nested levels, each using the next twice (15 KB; 4 million nodes expanded):
    before the node limit this took ``serve`` past 20 GB."""
    process = psutil.Process()
    before = process.memory_info().rss
    started = time.monotonic()
    code, body = running.call(
        "POST", "runsync", {"input": {"workflow": savedkit.nested_subgraphs(21)}}
    )
    assert time.monotonic() - started < 5
    assert code == 200 and body["status"] == "FAILED", body
    assert body["output"]["error_code"] == "invalid_input"
    assert "expands to more than 10000 nodes" in body["error"]
    assert "--max-workflow-nodes" in body["error"]
    assert process.memory_info().rss - before < 200 * 1024**2
    assert running.health()["workers"]["unhealthy"] == 0


def test_health_answers_within_a_second_while_a_large_workflow_converts(
    executor: Executor, out_dir: Path
) -> None:
    """A limit raised for a 260,000-node saved workflow (seconds to convert): the
    conversion runs off the event loop, so ``/health`` (and cancel, and ttl) answer."""
    served = serve_with(executor, out_dir, max_workflow_nodes=1_000_000)
    try:
        workflow = savedkit.nested_subgraphs(17, leaf="Reroute")
        code, queued = served.call("POST", "run", {"input": {"workflow": workflow}})
        assert code == 200, queued
        slowest, result = 0.0, queued
        while result["status"] not in ("COMPLETED", "FAILED"):
            for call in (served.health, lambda: served.status(queued["id"])):
                started = time.monotonic()
                answer = call()
                slowest = max(slowest, time.monotonic() - started)
            result = answer
            time.sleep(0.05)
        assert slowest < 1, f"/health and /status took {slowest:.2f}s during the conversion"
        assert result["status"] == "COMPLETED", result
        assert result["output"]["timings"]["convert_s"] > 1  # long enough to have mattered
    finally:
        served.stop()


@pytest.mark.parametrize("field", ["ttl", "executionTimeout"])
def test_a_400_digit_policy_number_is_a_400(running: ServeThread, field: str) -> None:
    body = {"input": {"workflow": savedkit.reroute_chain(1)}, "policy": {field: 10**400}}
    code, answer = running.call("POST", "run", body)
    assert code == 400, answer
    assert f"policy.{field} must be milliseconds" in answer["error"]
