"""Models on demand: real HTTP (a loopback file server) and real S3 (moto), a real cache
on disk, and real ComfyUI loading what was fetched."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import workflows
from comfyui_runpod.executor import models
from comfyui_runpod.executor.apps import AppStore
from comfyui_runpod.executor.errors import JobError
from comfyui_runpod.executor.models import (
    ModelCache,
    ModelSettings,
    ModelSpec,
    read_manifest,
)
from s3server import S3Server, bucket_contract
from safetensors.torch import save_file
from servekit import ServeThread

SECRET = "Bearer tok-models-0123456789"


@dataclass
class FileServer:
    """Serves ``files`` on loopback with HTTP ranges (an ``ETag`` per content, ``If-Range``
    honoured), counts requests, and can misbehave: ``stall`` (send headers, then nothing),
    ``die_after`` (close mid-body once), ``need_auth`` (401 without the secret header),
    ``no_length`` (no ``Content-Length``: the body ends with the connection) and
    ``bad_range`` (a 206 that starts at 0 whatever the range asked)."""

    files: dict[str, bytes]
    stall: set[str] = field(default_factory=set)
    die_after: dict[str, int] = field(default_factory=dict)
    need_auth: set[str] = field(default_factory=set)
    no_length: set[str] = field(default_factory=set)
    bad_range: set[str] = field(default_factory=set)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    if_ranges: list[str | None] = field(default_factory=list)

    def start(self) -> FileServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.split("?", 1)[0].lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name in server.need_auth and self.headers.get("Authorization") != SECRET:
                    self.send_error(401)
                    return
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
                server.if_ranges.append(self.headers.get("If-Range"))
                start = 0
                if self.headers.get("Range") and self.headers.get("If-Range") in (None, etag):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if name in server.bad_range:
                        start = 0
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("ETag", etag)
                if name in server.no_length:
                    self.send_header("Connection", "close")
                else:
                    self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if name in server.stall:
                    time.sleep(5)
                    return
                cut = server.die_after.pop(name, None)
                if cut is not None:
                    self.wfile.write(data[start:cut])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the network dies mid-file
                    return
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def url(self, name: str, query: str = "") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}{query}"

    def hits(self, name: str) -> int:
        return sum(1 for requested, _ in self.requests if requested == name)


def lora_bytes(seed: int = 0) -> bytes:
    """A small LoRA-shaped safetensors file (its keys match nothing: ComfyUI loads it and
    applies no patch, which is all these tests need)."""
    import torch

    path = Path(f"/tmp/comfyui-runpod-test-lora-{seed}.safetensors")
    generator = torch.Generator().manual_seed(seed)
    save_file({"lora_unet_x.lora_up.weight": torch.randn(4, 4, generator=generator)}, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def files(tiny_checkpoint: str) -> dict[str, bytes]:
    from tinymodel import tiny_sd15_path

    return {
        "tiny.safetensors": tiny_sd15_path().read_bytes(),
        "style.safetensors": lora_bytes(1),
        "other.safetensors": lora_bytes(2),
    }


@pytest.fixture
def web(files: dict[str, bytes]) -> Iterator[FileServer]:
    server = FileServer(dict(files)).start()
    yield server
    server.httpd.shutdown()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "model-cache"


@pytest.fixture
def pipeline(make_pipeline, cache_dir: Path):
    return make_pipeline(models=ModelSettings(cache_dir, allow_private_urls=True))


def lora_workflow(ckpt: str, lora: str) -> dict[str, Any]:
    """The tiny SD1.5 graph with a LoraLoader between the checkpoint and the sampler."""
    workflow = workflows.tiny_sd(ckpt, steps=1)
    workflow["10"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["4", 0],
            "clip": ["4", 1],
            "lora_name": lora,
            "strength_model": 1.0,
            "strength_clip": 1.0,
        },
    }
    workflow["3"]["inputs"]["model"] = ["10", 0]
    for node in ("6", "7"):
        workflow[node]["inputs"]["clip"] = ["10", 1]
    return workflow


def leftovers(cache_dir: Path) -> list[str]:
    """Everything in the cache but lock and metadata files."""
    return sorted(
        p.relative_to(cache_dir).as_posix()
        for p in cache_dir.rglob("*")
        if p.is_file() and not p.relative_to(cache_dir).as_posix().startswith((".locks", ".meta"))
    )


def test_a_job_fetches_its_model_once_and_the_next_job_uses_the_cache(
    pipeline, web: FileServer, files: dict[str, bytes], cache_dir: Path
) -> None:
    digest = hashlib.sha256(files["tiny.safetensors"]).hexdigest()
    model = {"url": web.url("tiny.safetensors"), "folder": "checkpoints", "sha256": digest}
    model["name"] = "fetched-tiny.safetensors"
    job = {"input": {"workflow": workflows.tiny_sd("fetched-tiny.safetensors"), "models": [model]}}
    events: list[dict] = []
    first = pipeline.run_sync({**job, "id": "m1"}, on_progress=events.append)
    assert "error" not in first, first
    assert len(first["files"]) == 1 and first["timings"]["models_s"] > 0
    assert web.hits("tiny.safetensors") == 1
    cached = cache_dir / "checkpoints" / "fetched-tiny.safetensors"
    assert cached.read_bytes() == files["tiny.safetensors"]
    downloads = [e for e in events if e["event"] == "download"]
    assert downloads[-1]["bytes"] == downloads[-1]["total"] == len(files["tiny.safetensors"])

    second = pipeline.run_sync({**job, "id": "m2"})
    assert "error" not in second, second
    assert web.hits("tiny.safetensors") == 1  # from the cache


def test_a_url_in_a_loader_input_is_fetched_into_its_folder(
    pipeline, web: FileServer, tiny_checkpoint: str, cache_dir: Path
) -> None:
    workflow = lora_workflow(tiny_checkpoint, web.url("style.safetensors"))
    result = pipeline.run_sync({"id": "lora-url", "input": {"workflow": workflow}})
    assert "error" not in result, result
    assert (cache_dir / "loras" / "style.safetensors").is_file()
    assert web.hits("style.safetensors") == 1


@pytest.mark.parametrize(
    ("case", "code", "text"),
    [
        ("checksum", "model_checksum_mismatch", "has sha256"),
        ("missing", "model_download_failed", "HTTP 404"),
        ("stall", "model_download_failed", "timed out"),
        ("too-large", "model_too_large", "over the 0.0 MiB limit per model file"),
        ("private", "model_download_failed", "private or local address"),
        ("folder", "invalid_input", "'lorax' is not a ComfyUI model folder"),
    ],
)
def test_a_model_that_cannot_be_had_is_a_clear_error_and_leaves_nothing(
    make_pipeline,
    web: FileServer,
    tiny_checkpoint: str,
    cache_dir: Path,
    case: str,
    code: str,
    text: str,
) -> None:
    settings = {"allow_private_urls": case != "private", "read_timeout_s": 1.0}
    if case == "too-large":
        settings["max_file_bytes"] = 100
    pipeline = make_pipeline(models=ModelSettings(cache_dir, **settings))
    model: dict[str, Any] = {"url": web.url("style.safetensors"), "folder": "loras"}
    if case == "checksum":
        model["sha256"] = "0" * 64
    elif case == "missing":
        model["url"] = web.url("nothing.safetensors", "?X-Signature=hidden")
    elif case == "stall":
        web.stall.add("style.safetensors")
    elif case == "folder":
        model["folder"] = "lorax"
    workflow = lora_workflow(tiny_checkpoint, "style.safetensors")
    result = pipeline.run_sync({"id": case, "input": {"workflow": workflow, "models": [model]}})
    assert result["error_code"] == code, result
    assert text in result["error"]
    assert "hidden" not in json.dumps(result)  # a signed URL's query is a secret
    assert leftovers(cache_dir) == []
    web.stall.clear()
    good = make_pipeline(models=ModelSettings(cache_dir, allow_private_urls=True))
    ok = {"url": web.url("other.safetensors"), "folder": "loras"}
    workflow = lora_workflow(tiny_checkpoint, "other.safetensors")
    assert "error" not in good.run_sync(
        {"id": "next", "input": {"workflow": workflow, "models": [ok]}}
    )


def test_s3_models_and_images_use_the_jobs_bucket(
    pipeline, s3_server: S3Server, files: dict[str, bytes], tiny_checkpoint: str
) -> None:
    import io
    import urllib.request

    from PIL import Image

    bucket = s3_server.make_bucket("models-bucket")
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="loras/style.safetensors", Body=files["style.safetensors"])
    png = io.BytesIO()
    Image.new("RGB", (4, 4), (9, 8, 7)).save(png, "PNG")
    client.put_object(Bucket=bucket, Key="in/photo.png", Body=png.getvalue())
    workflow = lora_workflow(tiny_checkpoint, "style.safetensors")
    workflow["20"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    workflow["21"] = {"class_type": "SaveImage", "inputs": {"images": ["20", 0]}}
    workflow["21"]["inputs"]["filename_prefix"] = "photo"
    job = {
        "id": "s3-model",
        "input": {
            "workflow": workflow,
            "models": [{"url": f"s3://{bucket}/loras/style.safetensors", "folder": "loras"}],
            "images": [{"name": "photo.png", "image": f"s3://{bucket}/in/photo.png"}],
        },
        "s3Config": bucket_contract(s3_server, bucket),
    }
    result = pipeline.run_sync(job)
    assert "error" not in result, result
    info = result["file_info"]
    photo = [f for f, i in zip(result["files"], info, strict=True) if i["node_id"] == "21"]
    with urllib.request.urlopen(photo[0]) as response:  # the job's bucket got the outputs
        data = response.read()
    with Image.open(io.BytesIO(data)) as image:
        assert image.convert("RGB").getpixel((0, 0)) == (9, 8, 7)


def test_two_jobs_naming_the_same_url_download_it_once(web: FileServer, cache_dir: Path) -> None:
    cache = ModelCache(ModelSettings(cache_dir, allow_private_urls=True))
    spec = ModelSpec(web.url("style.safetensors"), "loras", "style.safetensors")
    fresh: list[bool] = []
    threads = [threading.Thread(target=lambda: fresh.append(cache.ensure(spec))) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(fresh) == [False, True]
    assert web.hits("style.safetensors") == 1


def test_a_dead_download_resumes_by_http_range(
    web: FileServer, files: dict[str, bytes], cache_dir: Path
) -> None:
    cache = ModelCache(ModelSettings(cache_dir, allow_private_urls=True))
    data = files["tiny.safetensors"]
    digest = hashlib.sha256(data).hexdigest()
    spec = ModelSpec(web.url("tiny.safetensors"), "checkpoints", "resumed.safetensors", digest)
    web.die_after["tiny.safetensors"] = len(data) // 3
    with pytest.raises(Exception, match="model_download_failed"):
        cache.ensure(spec)
    assert not cache.path_of(spec).exists()  # nothing half-written under its name
    assert cache.ensure(spec) is True
    assert web.requests[-1] == ("tiny.safetensors", f"bytes={len(data) // 3}-")
    assert hashlib.sha256(cache.path_of(spec).read_bytes()).hexdigest() == digest
    assert leftovers(cache_dir) == ["checkpoints/resumed.safetensors"]


def test_eviction_under_a_small_cap_keeps_the_model_in_use(
    web: FileServer, files: dict[str, bytes], cache_dir: Path
) -> None:
    size = len(files["style.safetensors"])
    web.files.update({f"m{i}.safetensors": lora_bytes(10 + i) for i in range(3)})
    cap = 2 * size + size // 2  # room for two
    cache = ModelCache(ModelSettings(cache_dir, max_cache_bytes=cap, allow_private_urls=True))
    a, b, c = (
        ModelSpec(web.url(f"m{i}.safetensors"), "loras", f"m{i}.safetensors") for i in range(3)
    )
    cache.ensure(a)
    time.sleep(0.05)
    cache.ensure(b)
    with cache.in_use([a]):  # a is the least recently used, but a job uses it
        cache.ensure(c)
    assert cache.path_of(a).is_file() and cache.path_of(c).is_file()
    assert not cache.path_of(b).exists()
    assert cache.size() <= cap


def test_header_secrets_reach_the_host_and_nothing_else(
    pipeline, web: FileServer, tiny_checkpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    web.need_auth.add("style.safetensors")
    model = {"url": web.url("style.safetensors"), "folder": "loras"}
    model["headers"] = {"Authorization": SECRET}
    workflow = lora_workflow(tiny_checkpoint, "style.safetensors")
    good = pipeline.run_sync({"id": "auth", "input": {"workflow": workflow, "models": [model]}})
    assert "error" not in good, good
    refused = {**model, "url": web.url("style.safetensors"), "name": "refused.safetensors"}
    refused["headers"] = {"Authorization": "Bearer wrong-0123456789"}
    bad = pipeline.run_sync({"id": "no-auth", "input": {"workflow": workflow, "models": [refused]}})
    assert bad["error_code"] == "model_download_failed" and "HTTP 401" in bad["error"]
    for text in (json.dumps(good), json.dumps(bad), caplog.text):
        assert SECRET not in text and "wrong-0123456789" not in text


def test_a_boot_manifest_fills_the_cache_before_the_first_job(
    pipeline, web: FileServer, tmp_path: Path, cache_dir: Path
) -> None:
    manifest = tmp_path / "models.yaml"
    manifest.write_text(
        "models:\n"
        f"  - url: {web.url('style.safetensors')}\n    folder: loras\n"
        f"  - url: {web.url('other.safetensors')}\n    folder: loras\n    name: o.safetensors\n"
    )
    pipeline.prefetch(read_manifest(manifest))
    assert sorted(p.name for p in (cache_dir / "loras").iterdir()) == [
        "o.safetensors",
        "style.safetensors",
    ]
    broken = tmp_path / "broken.yaml"
    broken.write_text("models:\n  - url: ftp://x/y.safetensors\n    folder: loras\n")
    with pytest.raises(Exception, match=r"broken.yaml: models\[0\].url"):
        read_manifest(broken)


# -- the cache cap, resumes and metadata (issue 22) --------------------------------------------


def cache_bytes(cache_dir: Path) -> int:
    """Every byte the cache holds on disk but locks and metadata: partial downloads too."""
    return sum((cache_dir / name).stat().st_size for name in leftovers(cache_dir))


def test_the_cap_holds_without_a_content_length(
    web: FileServer, files: dict[str, bytes], cache_dir: Path
) -> None:
    size = len(files["tiny.safetensors"])
    web.no_length.add("tiny.safetensors")
    cache = ModelCache(ModelSettings(cache_dir, max_cache_bytes=size // 2, allow_private_urls=True))
    spec = ModelSpec(web.url("tiny.safetensors"), "checkpoints", "tiny.safetensors")
    with pytest.raises(JobError) as caught:
        cache.ensure(spec)
    assert caught.value.code == "model_too_large"
    assert "cannot fit the" in caught.value.message and "model cache" in caught.value.message
    assert leftovers(cache_dir) == []  # stopped at the cap, and nothing kept to resume

    # A length-less file that fits is fetched.
    small = ModelSpec(web.url("style.safetensors"), "loras", "style.safetensors")
    web.no_length.add("style.safetensors")
    assert cache.ensure(small) is True
    assert cache.path_of(small).read_bytes() == files["style.safetensors"]


def test_partial_downloads_count_toward_the_cap(
    web: FileServer, files: dict[str, bytes], cache_dir: Path
) -> None:
    web.files.update({f"m{i}.safetensors": lora_bytes(20 + i) for i in range(3)})
    size = len(web.files["m0.safetensors"])
    cap = 2 * size + size // 2  # room for two files
    cache = ModelCache(ModelSettings(cache_dir, max_cache_bytes=cap, allow_private_urls=True))
    a, b, c = (
        ModelSpec(web.url(f"m{i}.safetensors"), "loras", f"m{i}.safetensors") for i in range(3)
    )
    cache.ensure(a)
    web.die_after["m1.safetensors"] = size - 10  # b dies near its end: a partial stays
    with pytest.raises(JobError, match="model_download_failed"):
        cache.ensure(b)
    assert leftovers(cache_dir) == [f".partial/{models._key(b)}", "loras/m0.safetensors"]
    with cache.in_use([a]):
        cache.ensure(c)
    assert cache_bytes(cache_dir) <= cap
    assert cache.path_of(a).is_file() and cache.path_of(c).is_file()
    assert cache.size() == cache_bytes(cache_dir)


def test_a_resume_only_continues_the_same_source(
    web: FileServer, files: dict[str, bytes], cache_dir: Path
) -> None:
    cache = ModelCache(ModelSettings(cache_dir, allow_private_urls=True))
    other = files["other.safetensors"]
    signed = web.url("tiny.safetensors", "?X-Signature=hidden")
    spec = ModelSpec(signed, "loras", "mixed.safetensors")
    web.die_after["tiny.safetensors"] = len(other) // 2
    with pytest.raises(JobError, match="model_download_failed"):
        cache.ensure(spec)
    for path in cache_dir.rglob("*"):  # the source is kept without its secret query
        assert not path.is_file() or b"hidden" not in path.read_bytes()

    # Another URL under the same name: its bytes from the start, not appended to the first.
    moved = ModelSpec(web.url("other.safetensors"), "loras", "mixed.safetensors")
    assert cache.ensure(moved) is True
    assert web.requests[-1] == ("other.safetensors", None)
    assert cache.path_of(moved).read_bytes() == other


def test_a_resume_restarts_when_the_file_changed_on_the_server(
    web: FileServer, files: dict[str, bytes], cache_dir: Path
) -> None:
    cache = ModelCache(ModelSettings(cache_dir, allow_private_urls=True))
    web.files["v.safetensors"] = files["style.safetensors"]
    spec = ModelSpec(web.url("v.safetensors"), "loras", "v.safetensors")
    web.die_after["v.safetensors"] = len(files["style.safetensors"]) // 2
    with pytest.raises(JobError, match="model_download_failed"):
        cache.ensure(spec)
    web.files["v.safetensors"] = files["other.safetensors"]  # a new version, a new ETag
    assert cache.ensure(spec) is True
    assert web.if_ranges[-1] is not None  # asked for the rest only if it is the same file
    assert cache.path_of(spec).read_bytes() == files["other.safetensors"]


def test_a_range_answer_that_starts_elsewhere_restarts_from_zero(
    web: FileServer, files: dict[str, bytes], cache_dir: Path
) -> None:
    cache = ModelCache(ModelSettings(cache_dir, allow_private_urls=True))
    data = files["style.safetensors"]
    spec = ModelSpec(web.url("style.safetensors"), "loras", "style.safetensors")
    web.die_after["style.safetensors"] = len(data) // 2
    with pytest.raises(JobError, match="model_download_failed"):
        cache.ensure(spec)
    web.bad_range.add("style.safetensors")  # 206, but from byte 0
    assert cache.ensure(spec) is True
    assert cache.path_of(spec).read_bytes() == data
    assert web.requests[-1] == ("style.safetensors", None)


def test_a_url_written_into_a_loader_stays_in_the_shared_workflow(
    make_pipeline, web: FileServer, files: dict[str, bytes], tiny_checkpoint: str, tmp_path
) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    stored = lora_workflow(tiny_checkpoint, web.url("style.safetensors"))
    (apps / "styled.json").write_text(json.dumps(stored))
    store = AppStore(apps)
    before = copy.deepcopy(store.apps["styled"].workflow)
    pipeline = make_pipeline()
    pipeline.settings = replace(pipeline.settings, apps=store)
    result = pipeline.run_sync({"id": "app-url", "input": {"app": "styled", "params": {}}})
    assert "error" not in result, result
    assert store.apps["styled"].workflow == before  # the app still names its URL


def test_a_retry_of_a_failed_download_fetches_it(
    make_pipeline, web: FileServer, files: dict[str, bytes], tiny_checkpoint: str
) -> None:
    running = ServeThread(make_pipeline())
    try:
        workflow = lora_workflow(tiny_checkpoint, web.url("later.safetensors"))
        code, failed = running.call("POST", "runsync", {"input": {"workflow": workflow}})
        assert code == 200 and failed["status"] == "FAILED", failed
        assert "HTTP 404" in failed["error"]
        web.files["later.safetensors"] = files["style.safetensors"]  # now it is there
        assert running.call("POST", f"retry/{failed['id']}")[0] == 200
        done = running.wait(failed["id"], "COMPLETED", "FAILED", timeout=60)
        assert done["status"] == "COMPLETED", done
        assert web.hits("later.safetensors") == 2
    finally:
        running.stop()


def test_a_url_in_a_text_input_is_text(
    pipeline, web: FileServer, tiny_checkpoint: str, cache_dir: Path
) -> None:
    workflow = workflows.tiny_sd(tiny_checkpoint, steps=1)
    workflow["6"]["inputs"]["text"] = "https://example.com style"
    workflow["7"]["inputs"]["text"] = web.url("style.safetensors")
    result = pipeline.run_sync({"id": "url-prompt", "input": {"workflow": workflow}})
    assert "error" not in result, result
    assert web.requests == []  # nothing fetched: a prompt is not a model


@pytest.mark.parametrize(
    ("model", "culprit"),
    [
        ({"name": "m.safetensors\n"}, "input.models[0].name: 'm.safetensors\\n' is not an allowed"),
        ({"sha256": "ab" * 32 + "\n"}, "input.models[0].sha256 must be 64 hex digits"),
    ],
)
def test_a_trailing_newline_is_refused_before_any_download(
    pipeline, web: FileServer, tiny_checkpoint: str, model: dict[str, str], culprit: str
) -> None:
    spec = {"url": web.url("style.safetensors"), "folder": "loras", **model}
    workflow = lora_workflow(tiny_checkpoint, "style.safetensors")
    result = pipeline.run_sync({"id": "nl", "input": {"workflow": workflow, "models": [spec]}})
    assert result["error_code"] == "invalid_input", result
    assert culprit in result["error"]
    assert web.requests == []


def test_a_url_naming_a_file_with_a_newline_is_refused(
    pipeline, web: FileServer, tiny_checkpoint: str
) -> None:
    workflow = lora_workflow(tiny_checkpoint, web.url("style.safetensors%0A"))
    result = pipeline.run_sync({"id": "nl-url", "input": {"workflow": workflow}})
    assert result["error_code"] == "invalid_input", result
    assert "is not an allowed model file name" in result["error"]
    assert web.requests == []


def test_a_cached_file_without_metadata_is_checked_against_the_jobs_sha256(
    web: FileServer, files: dict[str, bytes], cache_dir: Path
) -> None:
    cache = ModelCache(ModelSettings(cache_dir, allow_private_urls=True))
    data = files["style.safetensors"]
    spec = ModelSpec(web.url("style.safetensors"), "loras", "hand.safetensors")
    cache.path_of(spec).parent.mkdir(parents=True)
    cache.path_of(spec).write_bytes(data[:-1] + b"!")  # put there by hand, and not that file
    wrong = ModelSpec(spec.url, spec.folder, spec.name, hashlib.sha256(data).hexdigest())
    with pytest.raises(JobError) as caught:
        cache.ensure(wrong)
    assert caught.value.code == "model_checksum_mismatch"
    assert "in the cache has sha256" in caught.value.message

    cache.path_of(spec).write_bytes(data)
    assert cache.ensure(wrong) is False  # the right file: used, not fetched
    assert web.requests == []


def test_a_model_gets_its_name_only_with_its_metadata(
    web: FileServer, files: dict[str, bytes], cache_dir: Path
) -> None:
    cache = ModelCache(ModelSettings(cache_dir, allow_private_urls=True))
    spec = ModelSpec(web.url("style.safetensors"), "loras", "style.safetensors")
    (cache_dir / ".meta" / f"{models._key(spec)}.json").mkdir()  # the metadata cannot be written
    with pytest.raises((JobError, OSError)):
        cache.ensure(spec)
    assert not cache.path_of(spec).exists()  # no file whose source nobody knows
    assert [p.name for p in (cache_dir / ".meta").iterdir()] == [f"{models._key(spec)}.json"]


def test_eviction_passes_over_a_file_another_process_just_removed(
    web: FileServer, files: dict[str, bytes], cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = len(files["style.safetensors"])
    cache = ModelCache(
        ModelSettings(cache_dir, max_cache_bytes=2 * size + size // 2, allow_private_urls=True)
    )
    a, b = (ModelSpec(web.url(n), "loras", n) for n in ("style.safetensors", "other.safetensors"))
    cache.ensure(a)
    cache.ensure(b)
    listed = cache._files

    def raced() -> list[Path]:  # listed, then removed by another worker on the volume
        found = listed()
        cache.path_of(a).unlink()
        return found

    monkeypatch.setattr(cache, "_files", raced)
    c = ModelSpec(web.url("style.safetensors"), "loras", "again.safetensors")
    assert cache.ensure(c) is True
    assert cache.path_of(c).is_file()
