"""``comfyui-runpod serve`` over real loopback HTTP: the official runpod client, raw curl
shapes, a moto S3 server and a webhook receiver. One ComfyUI for the whole session (the
``executor`` fixture); each test starts its own server on a free port."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import workflows
from comfyui_runpod.executor.cli import main
from comfyui_runpod.executor.endpoint import ServeSettings
from httpkit import Hook, fetch, http
from PIL import Image
from s3server import TEST_ACCESS_SECRET, bucket_contract
from servekit import ServeThread

MiB = 1024 * 1024


def pixel(png: bytes) -> tuple[int, int, int]:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image.convert("RGB").getpixel((0, 0))


class inverted:
    """What ``workflows.invert(color)`` saves: EmptyImage's 0xRRGGBB, each channel inverted
    (±1: ComfyUI works in floats and truncates when it saves)."""

    def __init__(self, color: int) -> None:
        self.rgb = tuple(255 - (color >> shift & 0xFF) for shift in (16, 8, 0))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, tuple) and all(
            abs(a - b) <= 1 for a, b in zip(other, self.rgb, strict=True)
        )

    def __repr__(self) -> str:
        return f"~{self.rgb}"


def job(workflow: dict[str, Any], **request: Any) -> dict[str, Any]:
    return {"input": {"workflow": workflow}, **request}


def sdk_endpoint(running: ServeThread, monkeypatch: pytest.MonkeyPatch, api_key: str = "unused"):
    """The official client, unchanged, pointed at ``running`` the documented way."""
    monkeypatch.setenv("RUNPOD_ENDPOINT_BASE_URL", f"{running.url}/v2")
    import runpod

    # runpod copies the variable into ``runpod.endpoint_url_base`` when first imported (and
    # each Endpoint reads that attribute); this session may have imported it already.
    monkeypatch.setattr(runpod, "endpoint_url_base", f"{running.url}/v2")
    return runpod.Endpoint(running.settings.endpoint_id, api_key=api_key)


# -- a webhook receiver ----------------------------------------------------------------------


@pytest.fixture
def hook() -> Iterator[Callable[..., Hook]]:
    hooks: list[Hook] = []

    def make(fail_first: int = 0) -> Hook:
        hooks.append(Hook(fail_first).start())
        return hooks[-1]

    yield make
    for h in hooks:
        h.stop()


# -- the official runpod client --------------------------------------------------------------


def test_sdk_run_sync_and_run_status_output(serve, monkeypatch):
    running = serve()
    endpoint = sdk_endpoint(running, monkeypatch)

    output = endpoint.run_sync(job(workflows.invert(0x204060)), timeout=30)
    assert output["files"][0].startswith(f"{running.base}/files/sync-")
    assert pixel(fetch(output["files"][0])[1]) == inverted(0x204060)

    submitted = endpoint.run({"workflow": workflows.invert(0x000000)})  # the SDK wraps input
    deadline = time.monotonic() + 15
    while submitted.status() != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    output = submitted.output()
    assert pixel(fetch(output["files"][0])[1]) == (255, 255, 255)
    assert output["file_info"][0]["content_type"] == "image/png"


def test_sdk_cancel_health_purge_queue(serve, monkeypatch, comfyui_under_test):
    running = serve()
    endpoint = sdk_endpoint(running, monkeypatch)
    slow = endpoint.run({"workflow": workflows.slow(steps=400, delay=0.01)})
    queued = [endpoint.run({"workflow": workflows.invert(c)}) for c in (1, 2)]
    running.wait(slow.job_id, "IN_PROGRESS")

    health = endpoint.health()
    assert health["jobs"] == {
        "completed": 0,
        "failed": 0,
        "inProgress": 1,
        "inQueue": 2,
        "retried": 0,
    }
    assert health["workers"]["running"] == 1 and health["workers"]["idle"] == 0

    assert endpoint.purge_queue() == {"removed": 2, "status": "completed"}
    assert [q.status() for q in queued] == ["CANCELLED", "CANCELLED"]
    assert slow.cancel() == {"id": slow.job_id, "status": "CANCELLED"}
    assert slow.status() == "CANCELLED"

    health = endpoint.health()
    assert health["jobs"]["inProgress"] == 0 and health["jobs"]["inQueue"] == 0
    assert health["workers"] == {"idle": 1, "running": 0, "unhealthy": 0}
    # an extra: the node set, with the tests' deliberately broken pack as its one failure
    assert health["comfyui"]["version"] == comfyui_under_test.version
    assert health["comfyui"]["nodeTypes"] > 400
    assert health["comfyui"]["failedModules"] == 1
    assert health["comfyui"]["failed"][0]["module"].endswith("broken_pack")


# -- the contract's raw HTTP shapes ----------------------------------------------------------


def test_runsync_with_bucket_webhook_and_policy(serve, hook, s3_server, caplog):
    caplog.set_level(logging.INFO, logger="comfyui_runpod")
    running = serve(allow_private_urls=True)  # the receiver is on loopback
    receiver = hook(fail_first=1)
    tobucket = s3_server.make_bucket(f"to-{uuid.uuid4().hex[:8]}")
    s3config = s3_server.make_bucket(f"s3c-{uuid.uuid4().hex[:8]}")
    body = job(
        workflows.invert(0x336699),
        webhook=receiver.url,
        policy={"executionTimeout": 60_000, "ttl": 60_000},
        s3Config=bucket_contract(s3_server, s3config),
    )
    body["input"]["tobucket"] = bucket_contract(s3_server, tobucket)

    code, result = running.call("POST", "runsync?wait=30000", body)
    assert code == 200 and result["status"] == "COMPLETED", result
    assert result["id"].startswith("sync-")
    assert isinstance(result["delayTime"], int) and isinstance(result["executionTime"], int)
    url = result["output"]["files"][0]
    assert f"/{tobucket}/generations/{result['id']}/" in url  # tobucket wins over s3Config
    assert pixel(fetch(url)[1]) == inverted(0x336699)

    # The first POST got a 500; the retry (0.1 s later here) delivered the status object.
    assert receiver.wait(1) == [result]
    assert receiver.attempts == 2

    del body["input"]["tobucket"], body["webhook"]
    code, result = running.call("POST", "runsync", body)
    url = result["output"]["files"][0]
    assert f"/{s3config}/generations/{result['id']}/" in url
    assert pixel(fetch(url)[1]) == inverted(0x336699)

    assert TEST_ACCESS_SECRET not in caplog.text  # inputs (bucket secrets) are never logged
    assert f"job {result['id']} COMPLETED delay=" in caplog.text


def test_execution_timeout_is_timed_out_and_retry(serve):
    running = serve()
    body = job(workflows.slow(steps=500, delay=0.01), policy={"executionTimeout": 200})
    code, result = running.call("POST", "runsync", body)
    assert code == 200 and result["status"] == "TIMED_OUT", result
    assert result["error"].startswith("timeout: execution exceeded 0.2s")
    assert result["output"]["error_code"] == "timeout"
    assert result["executionTime"] < 3000

    code, done = running.call("POST", "runsync", job(workflows.invert(5)))
    assert done["status"] == "COMPLETED"  # the worker stays healthy
    code, body = running.call("POST", f"retry/{done['id']}")
    assert code == 400 and "only FAILED or TIMED_OUT" in body["error"]

    code, body = running.call("POST", f"retry/{result['id']}")
    assert (code, body) == (200, {"id": result["id"], "status": "IN_QUEUE"})
    assert running.wait(result["id"], "TIMED_OUT")["output"]["error_code"] == "timeout"
    assert running.call("GET", "health")[1]["jobs"]["retried"] == 1


def test_ttl_expires_queued_and_running_jobs(serve, hook):
    running = serve(allow_private_urls=True)  # the receiver is on loopback
    receiver = hook()
    slow = workflows.slow(steps=500, delay=0.01)
    a = running.call("POST", "run", job(slow, policy={"ttl": 1000}, webhook=receiver.url))[1]
    a_at = time.monotonic()
    b = running.call("POST", "run", job(workflows.invert(1), policy={"ttl": 400}))[1]
    b_at = time.monotonic()
    c = running.call("POST", "run", job(workflows.invert(2), webhook=receiver.url))[1]
    running.wait(a["id"], "IN_PROGRESS")
    assert running.status(b["id"])["status"] == "IN_QUEUE"

    time.sleep(max(b_at + 0.45 - time.monotonic(), 0))  # b's ttl passed in the queue
    assert running.call("GET", f"status/{b['id']}")[0] == 404  # dropped, never run
    assert running.status(a["id"])["status"] == "IN_PROGRESS"
    assert running.call("GET", "health")[1]["jobs"]["inQueue"] == 1

    time.sleep(max(a_at + 1.05 - time.monotonic(), 0))  # a's ttl passed while it ran
    assert running.call("GET", f"status/{a['id']}")[0] == 404  # interrupted and dropped
    running.wait(c["id"], "COMPLETED")
    assert [h["id"] for h in receiver.wait(1)] == [c["id"]]  # no webhook for expired jobs


def test_auth(serve, monkeypatch):
    running = serve(api_key="s3cret")
    assert running.call("GET", "health", authorized=False)[0] == 401
    code, body = running.call("GET", "health", headers={"Authorization": "Bearer nope"})
    assert code == 401 and "API key" in body["error"]
    assert running.call("GET", "health", headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert running.call("POST", "run", job(workflows.invert(1)), authorized=False)[0] == 401

    with pytest.raises(RuntimeError, match="Unauthorized"):
        sdk_endpoint(running, monkeypatch, api_key="nope").health()
    output = sdk_endpoint(running, monkeypatch, api_key="s3cret").run_sync(
        job(workflows.invert(0x010203)), timeout=30
    )
    url = output["files"][0]
    assert "?token=" in url  # file URLs carry their own token (for browsers, <img>, ...)
    assert pixel(fetch(url)[1]) == inverted(0x010203)
    assert fetch(url.split("?")[0])[0] == 401
    assert fetch(url[:-4] + "0000")[0] == 401
    bare = url.split("?")[0]
    assert fetch(bare, {"Authorization": "Bearer s3cret"})[0] == 200


def test_payload_limits_bad_requests_and_unknown_ids(serve):
    running = serve()

    def sized(size: int) -> bytes:
        """A valid job body of exactly ``size`` bytes (padded with an ignored input key)."""
        body = {"input": {"workflow": workflows.invert(3), "junk": ""}}
        body["input"]["junk"] = "x" * (size - len(json.dumps(body)))
        data = json.dumps(body).encode()
        assert len(data) == size
        return data

    code, body = running.call("POST", "run", raw=sized(10 * MiB + 1))
    assert code == 413 and "10.0 MiB limit" in body["error"]
    chunked = iter([sized(10 * MiB + 1)[: 6 * MiB], sized(10 * MiB + 1)[6 * MiB :]])
    code, body = running.call("POST", "run", raw=chunked)  # no Content-Length: counted
    assert code == 413
    code, body = running.call("POST", "runsync", raw=sized(20 * MiB + 1))
    assert code == 413 and "20.0 MiB limit" in body["error"]
    code, body = running.call("POST", "runsync", raw=sized(15 * MiB))  # fine for runsync
    assert code == 200 and body["status"] == "COMPLETED", body

    bad = {
        b"{not json": "not valid JSON",
        b"[1, 2]": "JSON object",
        b"{}": '"input"',
        b'{"input": {}, "webhook": "ftp://x"}': "webhook",
        b'{"input": {}, "policy": {"ttl": "soon"}}': "policy.ttl",
    }
    for raw, message in bad.items():
        code, body = running.call("POST", "run", raw=raw)
        assert code == 400 and message in body["error"], (raw, body)
    assert running.call("POST", "runsync?wait=soon", job(workflows.invert(1)))[0] == 400

    for method, path in [
        ("GET", "status/nope"),
        ("POST", "status/nope"),
        ("GET", "stream/nope"),
        ("POST", "cancel/nope"),
        ("POST", "retry/nope"),
        ("GET", "files/nope/x.png"),
        ("GET", "nothing-here"),
    ]:
        code, body = running.call(method, path)
        assert code == 404 and "error" in body, (method, path, body)
    assert http("GET", f"{running.url}/v2/other-endpoint/health")[0] == 404
    code, body = running.call("GET", "run")
    assert code == 405 and "error" in body


def test_health_counts_after_a_mix_of_jobs(serve):
    running = serve()
    for color in (1, 2):
        assert running.call("POST", "runsync", job(workflows.invert(color)))[1]["status"] == (
            "COMPLETED"
        )
    broken = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    failed = running.call("POST", "runsync", job(broken))[1]
    assert failed["status"] == "FAILED"
    assert failed["error"].startswith("validation_failed: unknown node type")
    assert failed["output"]["error_code"] == "validation_failed"
    assert failed["output"]["details"]["unknown_node_types"] == {"1": "NoSuchNode"}
    slow = job(workflows.slow(steps=500, delay=0.01), policy={"executionTimeout": 100})
    assert running.call("POST", "runsync", slow)[1]["status"] == "TIMED_OUT"
    blocker = running.call("POST", "run", job(workflows.slow(steps=500, delay=0.01)))[1]
    queued = running.call("POST", "run", job(workflows.invert(3)))[1]
    assert running.call("POST", f"cancel/{queued['id']}")[1]["status"] == "CANCELLED"
    assert running.call("POST", f"cancel/{blocker['id']}")[1]["status"] == "CANCELLED"
    assert running.call("POST", f"retry/{failed['id']}")[0] == 200
    running.wait(failed["id"], "FAILED")

    health = running.call("GET", "health")[1]
    assert {key: health[key] for key in ("jobs", "workers")} == {
        "jobs": {"completed": 2, "failed": 3, "inProgress": 0, "inQueue": 0, "retried": 1},
        "workers": {"idle": 1, "running": 0, "unhealthy": 0},
    }


def test_queue_is_fifo_with_three_jobs_in_flight(serve, hook):
    running = serve(allow_private_urls=True)  # the receiver is on loopback
    receiver = hook()
    bodies = [
        job(workflows.slow(steps=20, delay=0.01), webhook=receiver.url),
        job(workflows.invert(1), webhook=receiver.url),
        job(workflows.invert(2), webhook=receiver.url),
    ]
    ids = [running.call("POST", "run", body)[1]["id"] for body in bodies]
    assert [running.status(i)["status"] for i in ids[1:]] == ["IN_QUEUE", "IN_QUEUE"]

    finished = [running.wait(i, "COMPLETED") for i in ids]
    assert [h["id"] for h in receiver.wait(3)] == ids  # completion order = submit order
    delays = [f["delayTime"] for f in finished]
    assert delays == sorted(delays)
    # One worker: the second job waited for the first to run (less the few ms between the
    # two submissions, which delayTime does not see).
    assert delays[1] >= finished[0]["executionTime"] - 50


def test_cancel_running_job_then_next_completes(serve):
    running = serve()
    slow = running.call("POST", "run", job(workflows.slow(steps=500, delay=0.01)))[1]
    nxt = running.call("POST", "run", job(workflows.invert(0x0F0F0F)))[1]

    deadline = time.monotonic() + 10
    while (status := running.status(slow["id"])).get("output", {}).get("event") != "step":
        assert time.monotonic() < deadline, status
        time.sleep(0.01)
    assert status["status"] == "IN_PROGRESS"  # progress shows in output while running
    assert status["output"]["class"] == "TestSlowSteps" and 0 <= status["output"]["percent"] < 100

    code, body = running.call("POST", f"cancel/{slow['id']}")
    assert (code, body) == (200, {"id": slow["id"], "status": "CANCELLED"})
    done = running.wait(nxt["id"], "COMPLETED", timeout=10)
    assert pixel(fetch(done["output"]["files"][0])[1]) == inverted(0x0F0F0F)
    cancelled = running.status(slow["id"])
    assert cancelled["status"] == "CANCELLED" and "output" not in cancelled
    assert cancelled["executionTime"] < 5000


def test_stream_yields_progress_then_the_output_once(serve):
    running = serve()
    submitted = running.call("POST", "run", job(workflows.slow(steps=10, delay=0.02)))[1]
    chunks: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while True:
        code, body = running.call("GET", f"stream/{submitted['id']}")
        assert code == 200 and body["id"] == submitted["id"]
        chunks += [c["output"] for c in body["stream"]]
        if body["status"] == "COMPLETED" and not body["stream"]:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert {"started", "step"} <= {c.get("event") for c in chunks[:-1]}
    assert chunks[-1]["files"][0].startswith(f"{running.base}/files/")


def _preview(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/jpeg;base64,"), data_url[:40]
    image = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1], validate=True)))
    assert image.format == "JPEG" and max(image.size) <= 256
    return image


def test_previews_show_in_stream_and_status_only_when_asked(serve, tiny_checkpoint):
    """``input.previews``: the sampler's latent preview (latent2rgb, no model) as a small
    JPEG in the progress, at most one a second; without it no step carries one."""
    running = serve()
    graph = workflows.tiny_sd(tiny_checkpoint, steps=6, prefix="pv")
    asked = running.call("POST", "run", {"input": {"workflow": graph, "previews": True}})[1]
    plain = running.call("POST", "run", job(workflows.tiny_sd(tiny_checkpoint, steps=3)))[1]
    chunks: list[dict[str, Any]] = []
    statuses: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while True:
        body = running.call("GET", f"stream/{asked['id']}")[1]
        chunks += [c["output"] for c in body["stream"]]
        if body["status"] == "IN_PROGRESS":
            statuses.append(running.status(asked["id"]).get("output") or {})
        if body["status"] == "COMPLETED" and not body["stream"]:
            break
        assert time.monotonic() < deadline and body["status"] != "FAILED", body
        time.sleep(0.05)
    previews = [c for c in chunks if "preview" in c]
    assert previews and all(c["event"] == "step" and c["class"] == "KSampler" for c in previews)
    assert _preview(previews[0]["preview"]).size == (8, 8)  # a 64 px image's latent
    # status keeps showing the latest one, whichever step a poll lands on
    shown = [s["preview"] for s in statuses if s.get("event") == "step" and s["step"] > 1]
    assert shown and all(_preview(p) for p in shown)
    done = running.wait(plain["id"], "COMPLETED", timeout=60)
    assert "preview" not in json.dumps(done)
    code, body = running.call("GET", f"stream/{plain['id']}")
    assert code == 200 and "preview" not in json.dumps(body)


def test_local_output_urls_follow_the_retention_window(serve, tmp_path):
    running = serve(retention_s=1.0)
    code, result = running.call("POST", "runsync", job(workflows.invert(0x0A141E, size=16)))
    done_at = time.monotonic()
    assert result["status"] == "COMPLETED"
    [url] = result["output"]["files"]
    name = result["output"]["file_info"][0]["name"]
    assert url == f"{running.base}/files/{result['id']}/{name}"
    code, data = fetch(url)
    assert code == 200 and pixel(data) == inverted(0x0A141E)
    folder = tmp_path / "out" / result["id"]
    assert (folder / name).is_file()
    assert running.status(result["id"])["status"] == "COMPLETED"

    for sneaky in ("..%2F..%2Fconftest.py", "../../../etc/passwd", "%2e%2e/x.png"):
        assert fetch(f"{running.base}/files/{result['id']}/{sneaky}")[0] in (400, 404)

    time.sleep(max(done_at + 1.05 - time.monotonic(), 0))
    assert running.call("GET", f"status/{result['id']}")[0] == 404
    assert fetch(url)[0] == 404
    assert not folder.exists()


def test_shutdown_interrupts_the_running_job(serve, make_pipeline):
    running = serve()
    slow = running.call("POST", "run", job(workflows.slow(steps=1000, delay=0.01)))[1]
    running.wait(slow["id"], "IN_PROGRESS")
    waiter: dict[str, Any] = {}

    def runsync() -> None:
        waiter["answer"] = running.call("POST", "runsync", job(workflows.invert(1)))

    thread = threading.Thread(target=runsync)
    thread.start()
    deadline = time.monotonic() + 5
    while running.call("GET", "health")[1]["jobs"]["inQueue"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    running.stop()
    assert time.monotonic() - started < 5
    thread.join(5)
    assert waiter["answer"][0] == 200  # the waiting /runsync got an answer, not a hang

    # Nothing left broken: the same ComfyUI runs the next job normally.
    result = make_pipeline().run_sync(
        {"id": "after-stop", "input": {"workflow": workflows.invert(7)}}
    )
    assert "error" not in result, result
    assert pixel(Path(result["files"][0]).read_bytes()) == inverted(7)


def test_serve_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--host",
        "--port",
        "--endpoint-id",
        "--api-key",
        "COMFYUI_RUNPOD_API_KEY",
        "--out",
        "--public-url",
        "--retention",
        "--webhook-retry-delay",
        "--webhook-timeout",
        "--cpu",
        "--comfyui",
    ):
        assert flag in text


def test_a_saved_ui_format_workflow_runs_through_runsync(serve):
    running = serve()
    oracle = Path(__file__).parent / "oracle" / "cases" / "bypassed_chain.json"
    saved = json.loads(oracle.read_text())["workflow"]
    code, body = running.call("POST", "runsync", {"input": {"workflow": json.dumps(saved)}})
    assert code == 200 and body["status"] == "COMPLETED", body
    output = body["output"]
    assert "convert_s" in output["timings"]
    assert pixel(fetch(output["files"][0])[1]) == (0x12, 0x34, 0x56)  # both inverts bypassed


@pytest.mark.parametrize("endpoint_id", ["local\n", "", "a/b", "x" * 65])
def test_an_odd_endpoint_id_is_refused_at_start(endpoint_id: str) -> None:
    """The id is a path segment of every URL: a trailing newline is not "local"."""
    with pytest.raises(ValueError, match="endpoint id"):
        ServeSettings(endpoint_id=endpoint_id)
