"""The worst inputs of the hostile-input review, all at once, against a real ``serve``
process: a saved workflow that expands to 2^22 nodes, a 200-frame 4096² GIF, reroute chains
600 long and looping, a 400-digit ``ttl``, a download that trickles a byte a second. Before
the limits each of the first two drove ``serve`` past 20 GB until the kernel killed it.

While they run, a sampler reads the process's RSS and a prober times ``/health``: the
process must stay under 2 GB, keep answering within a second, and run a good job after.
"""

from __future__ import annotations

import base64
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import savedkit
import workflows
from desktopkit import Process, start_serve
from httpkit import http
from reliability_kit import Trickle, gif_bytes

API_KEY = "rk-BOMB-KEY-77"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
RSS_LIMIT = 2 * 1024**3
HEALTH_LIMIT_S = 1.0


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    # --allow-private-urls: the trickling server is on loopback.
    process = start_serve(tmp_path_factory.mktemp("bombs"), API_KEY, flags=["--allow-private-urls"])
    try:
        probe = urllib.request.Request(f"{process.url}/local/health", headers=AUTH)
        process.wait_ready(probe, time.monotonic() + 180)
        yield process
    finally:
        process.stop()


class Watch:
    """Samples the process's RSS and ``/health`` latency on two threads until stopped."""

    def __init__(self, serve: Process) -> None:
        self.serve, self.peak_rss, self.slowest_s, self.probes = serve, 0, 0.0, 0
        self.done = threading.Event()
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._rss, self._health)]
        for thread in self.threads:
            thread.start()

    def _rss(self) -> None:
        process = psutil.Process(self.serve.process.pid)
        while not self.done.is_set():
            self.peak_rss = max(self.peak_rss, process.memory_info().rss)
            time.sleep(0.02)

    def _health(self) -> None:
        while not self.done.is_set():
            start = time.monotonic()
            try:
                code, _ = http("GET", f"{self.serve.url}/local/health", headers=AUTH, timeout=10)
                if code != 200:
                    self.failures.append(f"/health answered {code}")
            except OSError as exc:
                self.failures.append(f"/health failed: {exc}")
            self.slowest_s = max(self.slowest_s, time.monotonic() - start)
            self.probes += 1
            time.sleep(0.1)

    def stop(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(15)


def submit(serve: Process, job: dict[str, Any]) -> str:
    code, body = http("POST", f"{serve.url}/local/run", job, headers=AUTH)
    assert code == 200, body
    return body["id"]


def final(serve: Process, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, body = http("GET", f"{serve.url}/local/status/{job_id}", headers=AUTH)
        assert code == 200, body
        if body["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
            return body
        assert time.monotonic() < deadline, f"job {job_id} still {body['status']}"
        time.sleep(0.1)


def gif_job() -> dict[str, Any]:
    gif = base64.b64encode(gif_bytes(4096, 4096, 200)).decode()
    workflow = workflows.load_and_save("bomb.gif")
    return {"input": {"workflow": workflow, "images": [{"name": "bomb.gif", "image": gif}]}}


def test_the_bombs_leave_serve_small_responsive_and_serving(serve: Process, tmp_path: Path) -> None:
    trickle = Trickle(limit_s=30)
    jobs = {
        "subgraphs": (
            {"input": {"workflow": savedkit.nested_subgraphs(21)}},
            "invalid_input",
            "expand",
        ),
        "gif": (gif_job(), "invalid_input", "bomb.gif"),
        "reroutes": (
            {"input": {"workflow": savedkit.reroute_chain(600)}},
            None,
            None,
        ),
        "reroute loop": (
            {"input": {"workflow": savedkit.reroute_chain(5, loop=True)}},
            "invalid_input",
            "Reroute",
        ),
        "trickle": (
            {
                "input": {
                    "workflow": workflows.load_and_save("slow.png"),
                    "images": [{"name": "slow.png", "image": f"{trickle.url}/body.png"}],
                },
                "policy": {"executionTimeout": 3000},
            },
            "",
            "slow.png",
        ),
    }
    watch = Watch(serve)
    try:
        # Refused by serve itself, before any job exists.
        code, body = http(
            "POST",
            f"{serve.url}/local/run",
            {"input": {"workflow": workflows.invert(0)}, "policy": {"ttl": int("9" * 400)}},
            headers=AUTH,
        )
        assert code == 400 and "policy.ttl" in body["error"], body
        ids = {name: submit(serve, job) for name, (job, _, _) in jobs.items()}
        results = {name: final(serve, job_id) for name, job_id in ids.items()}
        good = http(
            "POST",
            f"{serve.url}/local/runsync",
            {"input": {"workflow": workflows.invert(7), "tobase64": True}},
            headers=AUTH,
        )
    finally:
        watch.stop()
        trickle.stop()
    for name, (_, code, named) in jobs.items():
        output = results[name].get("output") or {}
        if code is None:  # allowed: runs like the short chain would
            assert results[name]["status"] == "COMPLETED", (name, results[name])
            continue
        assert results[name]["status"] in ("FAILED", "TIMED_OUT"), (name, results[name])
        error = results[name].get("error") or output.get("error") or ""
        if code:
            assert output.get("error_code") == code, (name, results[name])
        assert named in error, (name, error)
    assert good[0] == 200 and good[1]["status"] == "COMPLETED", good
    print(
        f"bombs: peak RSS {watch.peak_rss / 2**20:.0f} MiB, slowest /health "
        f"{watch.slowest_s * 1000:.0f} ms over {watch.probes} probes"
    )
    assert not watch.failures, watch.failures
    assert watch.probes > 10
    assert watch.peak_rss < RSS_LIMIT, f"peak RSS {watch.peak_rss / 2**20:.0f} MiB"
    assert watch.slowest_s < HEALTH_LIMIT_S, f"/health took {watch.slowest_s:.2f} s"
