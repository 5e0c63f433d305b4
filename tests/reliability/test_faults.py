"""Fault injection: broken buckets, webhook receivers and nodes, cancel storms, clients
that hang up, a full disk. The worker or server must survive each one, tell the user
what happened, and keep every output it produced.

SIGTERM during a job is ``tests/test_remote.py::test_sigterm_during_a_job_stops_serve_cleanly``
(a real ``comfyui-runpod serve`` process): not repeated here."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import workflows
from comfyui_runpod.executor.worker import make_handler
from httpkit import Hook, fetch
from reliability_kit import API_KEY, Dropper, pixel
from s3server import S3Proxy, bucket_contract, closed_port_url

WHITE = (255, 255, 255)


def bucket_job(endpoint: str, bucket: str, batch: int = 1, **request: Any) -> dict[str, Any]:
    body = {"input": {"workflow": workflows.invert(0, batch=batch)}, **request}
    body["input"]["tobucket"] = bucket_contract(endpoint, bucket)
    return body


def assert_kept(result: dict[str, Any], count: int) -> None:
    """Delivery failed, and every produced file is still on disk, intact."""
    kept = result["details"]["kept_files"]
    assert len(kept) == count
    for path in kept:
        assert pixel(Path(path).read_bytes()) == WHITE


@dataclass
class FailAfterFirst(S3Proxy):
    """The first PUT goes through, every later one gets a 500: a bucket that breaks in
    the middle of a job's upload."""

    def _put_started(self) -> int:
        n = super()._put_started()
        return n + self.fail_puts if n == 1 else 1  # S3Proxy fails PUT number <= fail_puts


# -- the bucket --------------------------------------------------------------------------------


def test_s3_down_is_upload_failed_naming_the_file_and_outputs_are_kept(pipeline_for, env):
    began = time.monotonic()
    result = pipeline_for(allow_private_urls=True).run_sync(
        {"id": "down", **bucket_job(env.closed, "b", batch=2)}
    )
    assert time.monotonic() - began < 10  # three tries with a short backoff, not minutes
    assert result["error_code"] == "upload_failed"
    assert re.match(
        r"upload_failed: could not upload inv_0000[12]_\.png to bucket b: ", result["error"]
    )
    assert_kept(result, 2)


def test_s3_failing_every_put_is_retried_three_times(pipeline_for, env):
    with S3Proxy(env.s3, fail_puts=10**6) as proxy:
        result = pipeline_for(allow_private_urls=True).run_sync(
            {"id": "fails", **bucket_job(proxy.endpoint_url, env.bucket)}
        )
    assert proxy.puts == 3
    assert result["error"] == (
        f"upload_failed: could not upload inv_00001_.png to bucket {env.bucket}: "
        "InternalError: injected failure"
    )
    assert_kept(result, 1)


def test_s3_failing_twice_then_recovering_delivers(pipeline_for, env):
    with S3Proxy(env.s3, fail_puts=2) as proxy:
        result = pipeline_for(allow_private_urls=True).run_sync(
            {"id": "flaky", **bucket_job(proxy.endpoint_url, env.bucket)}
        )
        assert "error" not in result, result
        status, data = fetch(result["files"][0])  # presigned for the proxy's address
    assert status == 200 and pixel(data) == WHITE
    assert proxy.puts == 3


def test_s3_failing_mid_upload_through_serve_keeps_every_file(serve_factory, env):
    running = serve_factory()
    running.use_media(allow_private_urls=True)  # the S3 proxy is on loopback
    with FailAfterFirst(env.s3, fail_puts=1) as proxy:
        code, answer = running.call(
            "POST", "runsync", bucket_job(proxy.endpoint_url, env.bucket, 3)
        )
    assert code == 200 and answer["status"] == "FAILED", answer
    assert proxy.puts == 1 + 2 * 3  # one went through; the other two were tried three times
    assert re.match(
        r"upload_failed: could not upload inv_0000[123]_\.png to bucket ", answer["error"]
    )
    assert_kept(answer["output"], 3)  # the uploaded one too: the job's result is one piece
    objects = env.s3.client().list_objects_v2(
        Bucket=env.bucket, Prefix=f"generations/{answer['id']}/"
    )
    assert objects["KeyCount"] == 1
    assert (
        running.call("POST", "runsync", {"input": {"workflow": workflows.invert(0)}})[1]["status"]
        == "COMPLETED"
    )


def test_s3_dropping_connections_mid_request(pipeline_for):
    dropper = Dropper()
    try:
        result = pipeline_for(allow_private_urls=True).run_sync(
            {"id": "drop", **bucket_job(dropper.url, "b")}
        )
    finally:
        dropper.stop()
    assert result["error_code"] == "upload_failed"
    assert result["error"].startswith("upload_failed: could not upload inv_00001_.png to bucket b")
    assert dropper.connections >= 3  # retried
    assert_kept(result, 1)


def test_s3_slow_still_delivers_and_uploads_in_parallel(pipeline_for, env):
    with S3Proxy(env.s3, put_delay_s=0.4) as proxy:
        result = pipeline_for(allow_private_urls=True).run_sync(
            {"id": "slow", **bucket_job(proxy.endpoint_url, env.bucket, 3)}
        )
        assert "error" not in result, result
        assert [pixel(fetch(url)[1]) for url in result["files"]] == [WHITE] * 3
    assert proxy.max_in_flight == 3  # all three PUTs waited on S3 at once: in parallel


# -- the webhook receiver ----------------------------------------------------------------------


@pytest.mark.parametrize("receiver", ["down", "hangs", "resets"])
def test_webhook_receiver_failing_the_result_stays_available(serve_factory, caplog, receiver):
    caplog.set_level(logging.INFO, logger="comfyui_runpod")
    broken = None if receiver == "down" else Dropper(hang=receiver == "hangs")
    url = f"{broken.url if broken else closed_port_url()}/hook?token=t0ken"
    try:
        running = serve_factory(webhook_timeout_s=0.3, allow_private_urls=True)
        code, answer = running.call(
            "POST", "run", {"input": {"workflow": workflows.invert(0)}, "webhook": url}
        )
        assert code == 200
        done = running.wait(answer["id"], "COMPLETED")
        deadline = time.monotonic() + 10
        while "failed (try 3 of 3)" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        # Three tries, and the result is still there to poll; the server still works.
        assert running.status(answer["id"]) == done
        assert pixel(fetch(done["output"]["files"][0])[1]) == WHITE
        nxt = running.call("POST", "runsync", {"input": {"workflow": workflows.invert(0)}})[1]
        assert nxt["status"] == "COMPLETED"
    finally:
        if broken:
            broken.stop()
    assert "t0ken" not in caplog.text  # webhook URLs often carry a token: logs name the host


# -- nodes -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_out_of_memory_frees_the_models_and_the_worker_goes_on(
    pipeline_for, executor, tiny_checkpoint
):
    """A real (tiny) model is loaded, a node raises torch's OutOfMemoryError: the models are
    unloaded, the job says out_of_memory, and the worker takes the next job."""
    handler = make_handler(pipeline_for())
    mm = executor.comfy.model_management
    warm = asyncio.run(
        handler({"id": "warm", "input": {"workflow": workflows.tiny_sd(tiny_checkpoint)}})
    )
    assert "error" not in warm, warm
    assert mm.current_loaded_models  # the model is in memory

    prompt = workflows.invert(0)
    prompt["2"] = {"class_type": "TestOutOfMemory", "inputs": {"image": ["1", 0]}}
    result = asyncio.run(handler({"id": "oom", "input": {"workflow": prompt}}))
    assert result["error"] == (
        "out_of_memory: node 2 (TestOutOfMemory) ran out of memory; models were unloaded, "
        "try smaller sizes"
    )
    assert "refresh_worker" not in result
    assert mm.current_loaded_models == []

    again = asyncio.run(handler({"id": "again", "input": {"workflow": workflows.invert(0)}}))
    assert "error" not in again, again


def test_a_full_disk_is_an_internal_error_and_the_worker_goes_on(pipeline_for, monkeypatch):
    from comfyui_runpod.executor import pipeline as pipeline_module

    def disk_full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    handler = make_handler(pipeline_for())
    with monkeypatch.context() as patch:
        patch.setattr(pipeline_module, "materialize", disk_full)
        job = {
            "id": "full",
            "input": {"workflow": workflows.load_and_save("in.png"), "files": ["AA=="]},
        }
        result = asyncio.run(handler(job))
    assert result["error"] == "internal_error: OSError: [Errno 28] No space left on device"
    ok = asyncio.run(handler({"id": "ok", "input": {"workflow": workflows.invert(0)}}))
    assert "error" not in ok


# -- cancel storms -----------------------------------------------------------------------------


def test_20_rapid_cancels_on_serve(serve_factory):
    running = serve_factory()
    slow = {"input": {"workflow": workflows.slow(steps=400, delay=0.01)}}
    ids = []
    for _ in range(20):
        code, answer = running.call("POST", "run", slow)
        assert code == 200
        ids.append(answer["id"])
        code, answer = running.call("POST", f"cancel/{ids[-1]}")
        assert (code, answer) == (200, {"id": ids[-1], "status": "CANCELLED"})
    health = running.health()
    assert health["jobs"]["inQueue"] == health["jobs"]["inProgress"] == 0
    assert health["workers"] == {"idle": 1, "running": 0, "unhealthy": 0}

    began = time.monotonic()
    code, done = running.call("POST", "runsync", {"input": {"workflow": workflows.invert(0)}})
    assert done["status"] == "COMPLETED"
    assert time.monotonic() - began < 3  # no cancelled job kept the worker busy (4 s each)
    assert all(running.status(i)["status"] == "CANCELLED" for i in ids)


def test_20_rapid_cancels_through_the_handler(pipeline_for):
    handler = make_handler(pipeline_for())
    slow = {"input": {"workflow": workflows.slow(steps=400, delay=0.01)}}

    async def storm() -> dict[str, Any]:
        for i in range(20):
            task = asyncio.create_task(handler({**slow, "id": f"c{i}"}))
            await asyncio.sleep(0.01 * (i % 3))  # some queued, some running
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return await handler({"id": "after", "input": {"workflow": workflows.invert(0)}})

    began = time.monotonic()
    assert "error" not in asyncio.run(storm())
    assert time.monotonic() - began < 5


# -- clients -----------------------------------------------------------------------------------


def test_client_hanging_up_during_runsync_the_job_completes(serve_factory):
    running = serve_factory(allow_private_urls=True)  # the webhook receiver is on loopback
    hook = Hook().start()
    try:
        body = json.dumps(
            {"input": {"workflow": workflows.slow(steps=30, delay=0.01)}, "webhook": hook.url}
        ).encode()
        url = urllib.parse.urlsplit(running.base)
        with socket.create_connection((url.hostname, url.port), timeout=5) as client:
            client.sendall(
                f"POST {url.path}/runsync HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.1)  # the job is running; the client goes away without an answer
        [final] = hook.wait(1)
    finally:
        hook.stop()
    assert final["status"] == "COMPLETED"
    status = running.status(final["id"])
    assert status["status"] == "COMPLETED" and status["output"] == final["output"]
    assert pixel(fetch(status["output"]["files"][0])[1]) == (0, 0, 0)
