"""The job pipeline end to end: contract in, contract out, over real S3 (moto) and HTTP."""

from __future__ import annotations

import asyncio
import base64
import http.server
import io
import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import workflows
from comfyui_runpod.executor import Executor
from PIL import Image, PngImagePlugin
from s3server import TEST_ACCESS_ID, TEST_ACCESS_SECRET, S3Server, bucket_contract, closed_port_url


def png_bytes(color: tuple[int, int, int], size: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "PNG")
    return buffer.getvalue()


def colors(data: bytes) -> set[tuple[int, int, int]]:
    with Image.open(io.BytesIO(data)) as image:
        return {color for _, color in image.convert("RGB").getcolors(maxcolors=1 << 24)}


def load_job(source: str, **extra: object) -> dict:
    return {
        "id": "media",
        "input": {
            "workflow": workflows.load_and_save("in.png"),
            "images": [{"name": "in.png", "image": source}],
            **extra,
        },
    }


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    """A loopback HTTP server for input URLs: a PNG, a huge body, a redirect."""
    body = png_bytes((1, 2, 3))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/in.png":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/huge.png":
                self.send_response(200)
                self.send_header("Content-Length", str(5 * 1024**3))
                self.end_headers()
            else:
                self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_contract_shape_with_bucket_urls(make_pipeline, s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket("contract")
    job = {
        "id": "sync-abc",
        "input": {
            "workflow": json.dumps(workflows.invert(0x204060)),
            "tobase64": False,
            "tobucket": bucket_contract(s3_server, bucket),
        },
        "policy": {"executionTimeout": 60000, "ttl": 60000},
    }
    job["input"]["workflow"] = json.loads(job["input"]["workflow"])
    job["input"]["workflow"]["4"] = {
        "class_type": "RunPodCaptureData",
        "inputs": {"value": "a caption", "key": "text"},
    }
    result = make_pipeline().run_sync(job)
    assert "error" not in result
    assert result["datas"] == {"4": {"text": ["a caption"]}}
    [url] = result["files"]
    assert url.startswith(s3_server.endpoint_url) and "/generations/sync-abc/inv_00001_.png" in url
    with urllib.request.urlopen(url) as response:
        assert colors(response.read()) == {(0xDF, 0xBF, 0x9F)}
    assert result["file_info"][0] == {
        "node_id": "3",
        "kind": "images",
        "name": "inv_00001_.png",
        "content_type": "image/png",
        "size": result["file_info"][0]["size"],
        "delivered": "bucket",
    }
    assert set(result["timings"]) >= {"validate_s", "execute_s", "deliver_s", "total_s"}


def test_bucket_from_s3config_and_from_env(make_pipeline, s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket("levels")
    via_request = {
        "id": "s3config",
        "input": {"workflow": workflows.invert(0)},
        "s3Config": bucket_contract(s3_server, bucket),
    }
    [url] = make_pipeline().run_sync(via_request)["files"]
    assert "/generations/s3config/" in url
    env = {
        "BUCKET_ENDPOINT_URL": s3_server.endpoint_url,
        "BUCKET_ACCESS_KEY_ID": TEST_ACCESS_ID,
        "BUCKET_SECRET_ACCESS_KEY": TEST_ACCESS_SECRET,
        "BUCKET_NAME": bucket,
    }
    result = make_pipeline(env).run_sync({"id": "env", "input": {"workflow": workflows.invert(0)}})
    with urllib.request.urlopen(result["files"][0]) as response:
        assert colors(response.read()) == {(255, 255, 255)}


def test_unreachable_bucket_is_upload_failed_naming_the_file(make_pipeline) -> None:
    job = {
        "id": "down",
        "input": {
            "workflow": workflows.invert(0),
            "tobucket": bucket_contract(closed_port_url(), "b"),
        },
    }
    result = make_pipeline().run_sync(job)
    assert result["error"].startswith("upload_failed: could not upload inv_00001_.png")
    assert result["error_code"] == "upload_failed"
    [kept] = result["details"]["kept_files"]  # the paid-for output is not thrown away
    assert colors(Path(kept).read_bytes()) == {(255, 255, 255)}


def test_wrong_bucket_is_upload_failed(make_pipeline, s3_server: S3Server) -> None:
    job = {
        "id": "nobucket",
        "input": {"workflow": workflows.invert(0), "tobucket": bucket_contract(s3_server, "nope")},
    }
    assert make_pipeline().run_sync(job)["error"].startswith("upload_failed: ")


def test_base64_round_trip(make_pipeline) -> None:
    job = {
        "id": "b64",
        "input": {"workflow": workflows.invert(0x0A0B0C, batch=2), "tobase64": True},
    }
    result = make_pipeline().run_sync(job)
    assert len(result["files"]) == 2
    for encoded in result["files"]:
        assert colors(base64.b64decode(encoded)) == {(0xF5, 0xF4, 0xF3)}
    assert [info["delivered"] for info in result["file_info"]] == ["base64", "base64"]


def test_base64_over_the_payload_limit_is_refused_with_its_size(make_pipeline) -> None:
    job = {"id": "big", "input": {"workflow": workflows.invert(0, size=512), "tobase64": True}}
    result = make_pipeline().run_sync(job, payload_limit=1024)
    assert result["error_code"] == "payload_too_large"
    assert "MiB, over RunPod's" in result["error"] and "bucket" in result["error"]
    assert "files" not in result
    assert Path(result["details"]["kept_files"][0]).stat().st_size > 1024


def test_local_paths_without_bucket_or_base64(make_pipeline, tmp_path: Path) -> None:
    result = make_pipeline().run_sync({"id": "local", "input": {"workflow": workflows.invert(0)}})
    [path] = result["files"]
    assert Path(path) == tmp_path / "out" / "local" / "inv_00001_.png"
    assert colors(Path(path).read_bytes()) == {(255, 255, 255)}
    assert result["file_info"][0]["delivered"] == "local"


def test_an_output_that_does_not_validate_is_named_while_the_rest_runs(make_pipeline) -> None:
    """ComfyUI runs the outputs that validate and drops the others, naming them only in
    its log; the job's result names them too (``warnings``), so no output goes missing
    unnoticed."""
    workflow = {
        **workflows.invert(0, prefix="kept"),
        "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "lost"}},
    }
    result = make_pipeline().run_sync({"id": "partial", "input": {"workflow": workflow}})
    assert [Path(f).name for f in result["files"]] == ["kept_00001_.png"], result
    assert result["warnings"] == [
        "node 4 (SaveImage): Required input is missing: images; not run: output 4 (SaveImage)"
    ]
    whole = make_pipeline().run_sync({"id": "whole", "input": {"workflow": workflows.invert()}})
    assert "warnings" not in whole


@pytest.mark.parametrize("form", ["base64", "data-uri", "url"])
def test_input_image_by_base64_data_uri_and_url(make_pipeline, web: str, form: str) -> None:
    data = png_bytes((1, 2, 3))
    source = {
        "base64": base64.b64encode(data).decode(),
        "data-uri": "data:image/png;base64," + base64.b64encode(data).decode(),
        "url": f"{web}/in.png",
    }[form]
    result = make_pipeline().run_sync(load_job(source, tobase64=True))
    assert "error" not in result, result.get("error")
    assert colors(base64.b64decode(result["files"][0])) == {(1, 2, 3)}


def test_original_worker_files_list(make_pipeline) -> None:
    job = {
        "id": "files",
        "input": {
            "workflow": workflows.load_and_save("upload-0.png"),
            "files": [base64.b64encode(png_bytes((9, 8, 7))).decode()],
            "tobase64": True,
        },
    }
    result = make_pipeline().run_sync(job)
    assert colors(base64.b64decode(result["files"][0])) == {(9, 8, 7)}


@pytest.mark.parametrize(
    ("source", "settings", "culprit"),
    [
        ("not base64 at all!", {}, "not valid base64"),
        (base64.b64encode(b"just text").decode(), {}, "not a readable image"),
        (
            base64.b64encode(png_bytes((0, 0, 0), 64)).decode(),
            {"max_pixels": 100},
            "is 64x64, over the 100 pixel limit",
        ),
        (base64.b64encode(png_bytes((0, 0, 0), 64)).decode(), {"max_bytes": 10}, "larger than"),
        ("WEB/huge.png", {}, "over the"),
        ("WEB/missing.png", {}, "could not download"),
        ("http://127.0.0.1:1/x.png", {}, "could not download"),
        ("WEB/in.png", {"allow_private_urls": False}, "private or local address"),
        ("ftp://example.com/x.png", {}, "not valid base64"),
    ],
)
def test_bad_input_media(make_pipeline, web: str, source: str, settings: dict, culprit: str):
    result = make_pipeline(**settings).run_sync(load_job(source.replace("WEB", web)))
    assert result["error_code"] == "invalid_input"
    assert "in.png" in result["error"] and culprit in result["error"]
    good = make_pipeline().run_sync({"id": "ok", "input": {"workflow": workflows.invert(0)}})
    assert "error" not in good


def test_input_file_objects_may_be_any_file_under_their_own_name(make_pipeline, web: str) -> None:
    """Objects in input.files are not image-checked (audio, video…) and may come by URL."""
    job = {
        "id": "file-objects",
        "input": {
            "workflow": workflows.load_and_save("in.png"),
            "files": [
                {"name": "notes.txt", "file": base64.b64encode(b"not an image").decode()},
                {"name": "in.png", "file": f"{web}/in.png"},
            ],
            "tobase64": True,
        },
    }
    result = make_pipeline().run_sync(job)
    assert "error" not in result, result.get("error")
    assert colors(base64.b64decode(result["files"][0])) == {(1, 2, 3)}


@pytest.mark.parametrize(
    ("entry", "settings", "culprit"),
    [
        ({"name": "a.wav", "file": "not base64!"}, {}, "input.files[0] (a.wav) is not valid"),
        ({"name": "a.wav", "file": "AAAAAAAAAAAAAAAA"}, {"max_bytes": 4}, "(a.wav) is larger"),
        ({"name": "a.wav", "file": "WEB/huge.png"}, {}, "input.files[0] (a.wav) at 127.0.0.1"),
        (
            {"name": "a.wav", "file": "WEB/in.png"},
            {"allow_private_urls": False},
            "input.files[0] (a.wav): ",
        ),
        ({"file": "AA=="}, {}, "input.files[0]: None is not an allowed file name"),
        ({"name": "a.wav"}, {}, 'input.files[0] must be a base64 string or {"name"'),
        ({"name": "../a.wav", "file": "AA=="}, {}, "input.files[0]: '../a.wav' is not an allowed"),
    ],
)
def test_bad_input_file_objects_name_the_entry(
    make_pipeline, web: str, entry: dict, settings: dict, culprit: str
) -> None:
    entry = {k: v.replace("WEB", web) for k, v in entry.items()}
    job = {"id": "bad-file", "input": {"workflow": workflows.invert(0), "files": [entry]}}
    result = make_pipeline(**settings).run_sync(job)
    assert result["error_code"] == "invalid_input"
    assert culprit in result["error"]


def test_image_bomb_is_refused_before_decoding(make_pipeline) -> None:
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, "PNG")  # tiny file, 400 MP
    source = base64.b64encode(buffer.getvalue()).decode()
    began = time.perf_counter()
    result = make_pipeline().run_sync(load_job(source))
    assert result["error"].endswith("in.png is over the 67108864 pixel limit")
    assert time.perf_counter() - began < 5


def test_timeout_policy_and_cancel_through_the_pipeline(make_pipeline) -> None:
    pipeline = make_pipeline()
    slow = {"id": "slow", "input": {"workflow": workflows.slow(200, 0.05)}}
    result = pipeline.run_sync({**slow, "policy": {"executionTimeout": 300}})
    assert result["error_code"] == "timeout"

    async def cancel_it() -> None:
        task = asyncio.create_task(pipeline.run(slow))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_it())
    assert "error" not in pipeline.run_sync(
        {"id": "ok", "input": {"workflow": workflows.invert(0)}}
    )


def test_cancel_cleans_up_only_after_the_last_node_settles(
    make_pipeline, executor: Executor
) -> None:
    """A save node past its last interrupt check still writes after the cancel: the run's
    folder must be removed after that write, not before it (which left orphan files)."""
    late_save = executor.comfy.nodes.NODE_CLASS_MAPPINGS["TestLateSave"]
    workflow = workflows.invert(0)
    workflow["3"] = {
        "class_type": "TestLateSave",
        "inputs": {"images": ["2", 0], "filename_prefix": "late", "delay": 1.0},
    }
    pipeline = make_pipeline()
    written_before, started_before = len(late_save.written), len(late_save.started)

    started_before = len(late_save.started)

    async def cancel_during_the_save() -> None:
        job = {"id": "late-save", "input": {"workflow": workflow}}
        task = asyncio.create_task(pipeline.run(job))
        deadline = time.monotonic() + 10
        while len(late_save.started) == started_before:  # inside the node, past its checks
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_during_the_save())
    deadline = time.monotonic() + 10
    while len(late_save.written) == written_before and time.monotonic() < deadline:
        time.sleep(0.05)
    late = Path(late_save.written[-1])
    assert late.parent.parent == executor.comfy.output_dir  # in the run's own folder
    deadline = time.monotonic() + 5
    while late.parent.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not late.parent.exists(), f"orphan files after cancel: {list(late.parent.iterdir())}"


def test_secrets_never_reach_logs_results_or_png_metadata(
    make_pipeline, s3_server: S3Server, caplog: pytest.LogCaptureFixture, executor: Executor
) -> None:
    caplog.set_level(logging.DEBUG)
    bucket = s3_server.make_bucket("secrets")
    pipeline = make_pipeline()
    jobs = [
        {
            "id": "s1",
            "input": {
                "workflow": workflows.invert(0),
                "tobucket": bucket_contract(s3_server, bucket),
            },
        },
        {
            "id": "s2",
            "input": {"workflow": workflows.invert(0)},
            "s3Config": bucket_contract(s3_server, bucket),
        },
        {
            "id": "s3",
            "input": {
                "workflow": workflows.invert(0),
                "tobucket": bucket_contract(closed_port_url(), bucket),
            },
        },
        {
            "id": "s4",
            "input": {"workflow": workflows.invert(0), "tobucket": bucket_contract("bad", bucket)},
        },
        {
            "id": "s5",
            "input": {
                "workflow": {"1": {"class_type": "Nope"}},
                "tobucket": bucket_contract(s3_server, bucket),
            },
        },
    ]
    results = [pipeline.run_sync(job) for job in jobs]
    assert "error" not in results[0] and "error" not in results[1]
    assert all("error" in r for r in results[2:])
    # The moto server's own access log and botocore's wire-level DEBUG log belong to the
    # test server and the AWS SDK, not to us: they see signed requests by design.
    ours = [r for r in caplog.records if not r.name.startswith(("werkzeug", "botocore"))]
    seen = "\n".join(r.getMessage() for r in ours)
    # A presigned URL carries the access key *id* in X-Amz-Credential by S3's design (the id
    # is not a secret; the signing secret never leaves the worker).
    seen += re.sub(r"X-Amz-Credential=[^&\"]*", "", json.dumps(results))
    for url in results[0]["files"] + results[1]["files"]:
        with urllib.request.urlopen(url) as response:
            image = Image.open(io.BytesIO(response.read()))
            assert isinstance(image, PngImagePlugin.PngImageFile)
            seen += json.dumps(image.text)
    assert TEST_ACCESS_SECRET not in seen + caplog.text
    assert TEST_ACCESS_ID not in seen
