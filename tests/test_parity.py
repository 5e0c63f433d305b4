"""Parity with the desktop: check jobs and models fetched from the saved workflow's own
``properties.models``, over a real ``serve`` (servekit), a real ComfyUI and a loopback
HTTP server for the model file."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import workflows
from servekit import ServeThread
from test_models import FileServer

MODEL = "parity-tiny.safetensors"
PACK = {"cnr_id": "comfyui-impact-pack", "ver": "8.1.0"}


@pytest.fixture
def web(tiny_checkpoint: str) -> Iterator[FileServer]:
    from tinymodel import tiny_sd15_path

    server = FileServer({MODEL: tiny_sd15_path().read_bytes()}).start()
    yield server
    server.httpd.shutdown()


def saved_tiny(ckpt: str, models: list[dict[str, Any]], unknown: bool = False) -> dict[str, Any]:
    """The tiny SD1.5 graph as ComfyUI's frontend saves it; the loader carries
    ``properties.models``, and ``unknown`` adds a custom node this worker lacks."""

    def node(node_id: int, kind: str, links: list[tuple[str, str, int]], *values: Any) -> dict:
        inputs = [{"name": n, "type": t, "link": link} for n, t, link in links]
        return {
            "id": node_id,
            "type": kind,
            "mode": 0,
            "inputs": inputs,
            "widgets_values": list(values),
        }

    loader = node(4, "CheckpointLoaderSimple", [], ckpt)
    loader["properties"] = {"models": models, "cnr_id": "comfy-core", "ver": "0.3.75"}
    nodes = [
        loader,
        node(6, "CLIPTextEncode", [("clip", "CLIP", 1)], "a cat"),
        node(7, "CLIPTextEncode", [("clip", "CLIP", 2)], ""),
        node(5, "EmptyLatentImage", [], 64, 64, 1),
        node(
            3,
            "KSampler",
            [
                ("model", "MODEL", 3),
                ("positive", "CONDITIONING", 4),
                ("negative", "CONDITIONING", 5),
                ("latent_image", "LATENT", 6),
            ],
            *(1, "fixed", 1, 7.0, "euler", "normal", 1.0),
        ),
        node(8, "VAEDecode", [("samples", "LATENT", 7), ("vae", "VAE", 8)]),
        node(9, "SaveImage", [("images", "IMAGE", 9)], "parity"),
    ]
    if unknown:
        extra = node(20, "ImpactWildcardProcessor", [], "a {red|blue} cat")
        extra["properties"] = dict(PACK)
        nodes.append(extra)
    links = [
        [1, 4, 1, 6, 0, "CLIP"],
        [2, 4, 1, 7, 0, "CLIP"],
        [3, 4, 0, 3, 0, "MODEL"],
        [4, 6, 0, 3, 1, "CONDITIONING"],
        [5, 7, 0, 3, 2, "CONDITIONING"],
        [6, 5, 0, 3, 3, "LATENT"],
        [7, 3, 0, 8, 0, "LATENT"],
        [8, 4, 2, 8, 1, "VAE"],
        [9, 8, 0, 9, 0, "IMAGE"],
    ]
    return {"version": 0.4, "nodes": nodes, "links": links}


def runsync(running: ServeThread, job_input: dict[str, Any]) -> dict[str, Any]:
    code, body = running.call("POST", "runsync?wait=60000", {"input": job_input})
    assert code == 200, body
    return body


def test_a_check_job_names_unknown_packs_and_missing_models_and_runs_nothing(
    serve, web: FileServer
) -> None:
    running = serve()
    name = "parity-check.safetensors"  # never fetched: missing whatever ran before
    entry = {"name": name, "url": web.url(MODEL), "directory": "checkpoints"}
    saved = saved_tiny(name, [entry], unknown=True)
    body = runsync(running, {"workflow": saved, "check": True})
    assert body["status"] == "COMPLETED", body
    assert body["output"]["check"] == {
        "ok": False,
        "missing_nodes": [
            {
                "node": "20",
                "class_type": "ImpactWildcardProcessor",
                "pack": "comfyui-impact-pack",
                "version": "8.1.0",
            }
        ],
        "missing_models": [
            {
                "node": "4",
                "input": "ckpt_name",
                "folder": "checkpoints",
                "name": name,
                "url": web.url(MODEL),
            }
        ],
        "errors": [],
    }
    assert web.hits(MODEL) == 0  # a check fetches nothing


def test_a_check_job_on_an_api_workflow_has_no_pack_or_url(serve, tiny_checkpoint: str) -> None:
    running = serve()
    api = workflows.tiny_sd("not-here.safetensors", steps=1)
    api["20"] = {"class_type": "ImpactWildcardProcessor", "inputs": {"text": "x"}}
    check = runsync(running, {"workflow": api, "check": True})["output"]["check"]
    assert check["missing_nodes"] == [
        {"node": "20", "class_type": "ImpactWildcardProcessor", "pack": None, "version": None}
    ]
    assert check["missing_models"] == [
        {
            "node": "4",
            "input": "ckpt_name",
            "folder": "checkpoints",
            "name": "not-here.safetensors",
            "url": None,
        }
    ]
    assert check["ok"] is False and check["errors"] == []

    good = runsync(running, {"workflow": workflows.tiny_sd(tiny_checkpoint), "check": True})
    assert good["output"]["check"]["ok"] is True, good


def test_fetch_models_fetches_what_the_saved_workflow_names_then_the_cache_serves_it(
    serve, web: FileServer
) -> None:
    running = serve()
    entry = {"name": MODEL, "url": web.url(MODEL), "directory": "checkpoints"}
    saved = saved_tiny(MODEL, [entry])

    refused = runsync(running, {"workflow": saved})
    assert refused["status"] == "FAILED", refused
    assert refused["error"].startswith("validation_failed"), refused["error"]
    assert f"checkpoints/{MODEL}" in refused["error"] and "fetch_models" in refused["error"]
    assert web.hits(MODEL) == 0

    first = runsync(running, {"workflow": saved, "fetch_models": True})
    assert first["status"] == "COMPLETED", first
    assert len(first["output"]["files"]) == 1 and first["output"]["timings"]["models_s"] > 0
    assert web.hits(MODEL) == 1

    second = runsync(running, {"workflow": saved, "fetch_models": True})
    assert second["status"] == "COMPLETED", second
    assert web.hits(MODEL) == 1  # from the cache


def test_the_env_makes_fetch_models_the_default_and_a_given_checksum_is_checked(
    make_pipeline, web: FileServer
) -> None:
    pipeline = make_pipeline(environ={"COMFYUI_RUNPOD_FETCH_MODELS": "1"})
    name = "parity-env.safetensors"
    bad = {"name": name, "url": web.url(MODEL), "hash": "0" * 64, "hash_type": "SHA256"}
    result = pipeline.run_sync({"input": {"workflow": saved_tiny(name, [bad])}})
    assert result["error"].startswith("model_checksum_mismatch"), result

    digest = hashlib.sha256(web.files[MODEL]).hexdigest()
    good = {**bad, "hash": digest, "directory": "checkpoints"}
    result = pipeline.run_sync({"input": {"workflow": saved_tiny(name, [good])}})
    assert "error" not in result, result
    assert len(result["files"]) == 1


def test_model_hosts_limit_where_a_jobs_model_urls_may_point(
    make_pipeline, web: FileServer, tmp_path
) -> None:
    from comfyui_runpod.executor.models import ModelSettings

    name = "parity-hosts.safetensors"
    entry = {"name": name, "url": web.url(MODEL), "directory": "checkpoints"}
    job = {"input": {"workflow": saved_tiny(name, [entry]), "fetch_models": True}}

    def limited(*hosts: str) -> ModelSettings:
        return ModelSettings(tmp_path / "models", allow_private_urls=True, allowed_hosts=hosts)

    refused = make_pipeline(models=limited("huggingface.co", "civitai.com")).run_sync(job)
    assert refused["error"] == (
        f"invalid_input: model checkpoints/{name}: 127.0.0.1 is not among the hosts this "
        "worker fetches models from (huggingface.co, civitai.com; COMFYUI_RUNPOD_MODEL_HOSTS)"
    ), refused
    assert web.hits(MODEL) == 0

    allowed = make_pipeline(models=limited("huggingface.co", "127.0.0.1")).run_sync(job)
    assert "error" not in allowed, allowed
    assert web.hits(MODEL) == 1
