"""Models on demand: real HTTP (a loopback file server) and real S3 (moto), a real cache
on disk, and real ComfyUI loading what was fetched."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import workflows
from comfyui_runpod.executor.models import (
    ModelCache,
    ModelSettings,
    ModelSpec,
    read_manifest,
)
from s3server import S3Server, bucket_contract
from safetensors.torch import save_file

SECRET = "Bearer tok-models-0123456789"


@dataclass
class FileServer:
    """Serves ``files`` on loopback with HTTP ranges, counts requests, and can misbehave:
    ``stall`` (send headers, then nothing), ``die_after`` (close mid-body once) and
    ``need_auth`` (401 without the secret header)."""

    files: dict[str, bytes]
    stall: set[str] = field(default_factory=set)
    die_after: dict[str, int] = field(default_factory=dict)
    need_auth: set[str] = field(default_factory=set)
    requests: list[tuple[str, str | None]] = field(default_factory=list)

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
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
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
