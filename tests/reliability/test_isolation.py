"""Isolation and secrets: one job cannot read another job's inputs or outputs, even
knowing their exact folder names, and no key shows up in logs, results or saved files."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import workflows
from comfyui_runpod.executor import Workspace
from comfyui_runpod.executor.worker import make_handler
from httpkit import fetch
from reliability_kit import (
    API_KEY,
    assert_no_secrets,
    b64,
    pixel,
    png_bytes,
    png_text,
)
from s3server import TEST_ACCESS_ID, TEST_ACCESS_SECRET, bucket_contract

RED, BLUE = (200, 10, 10), (10, 10, 200)
VICTIM = "victim-0000feed"


def load(name: str, node: str = "LoadImage") -> dict[str, Any]:
    prompt = workflows.load_and_save(name)
    prompt["1"]["class_type"] = node
    return prompt


@pytest.fixture
def victim_file(executor, monkeypatch) -> Path:
    """The job with id ``victim`` gets a known folder: the thieves get perfect knowledge."""
    real = executor.workspace
    comfy = executor.comfy

    def workspace(job_id: str) -> Workspace:
        if job_id == "victim":
            return Workspace(VICTIM, comfy.job_inputs / VICTIM, comfy.output_dir / VICTIM)
        return real(job_id)

    monkeypatch.setattr(executor, "workspace", workspace)
    return comfy.job_inputs / VICTIM / "secret.png"


def test_a_job_cannot_read_the_inputs_of_a_job_queued_behind_it(
    pipeline_for, executor, victim_file, monkeypatch
):
    """The victim's input file sits on disk while its prompt waits in the executor's queue
    behind the thieves' prompts: each thief names it in every way we know."""
    comfy = executor.comfy
    names = [
        "secret.png",
        f"../{VICTIM}/secret.png",  # exact, for a thief that brought files of its own
        os.path.relpath(victim_file, comfy.empty_input),  # exact, for one that did not
        str(victim_file),
        f"{VICTIM}/secret.png",
        f"..\\{VICTIM}\\secret.png",
        f"./../{VICTIM}/secret.png",
        f"....//{VICTIM}/secret.png",
        "secret.png [input]",
        f"../{VICTIM}/secret.png [input]",
    ]
    thieves = [{"input": {"workflow": load(n)}} for n in names]
    thieves += [
        {
            "input": {
                "workflow": load(n),
                "images": [{"name": "mine.png", "image": b64(png_bytes())}],
            }
        }
        for n in names
    ]
    thieves += [{"input": {"workflow": load(n, "LoadImageMask")}} for n in names[:4]]
    for body in thieves[-4:]:
        body["input"]["workflow"]["1"]["inputs"]["channel"] = "red"
        body["input"]["workflow"]["2"] = {
            "class_type": "RunPodCaptureData",
            "inputs": {"value": ["1", 0], "key": "mask"},
        }
    order: list[str] = []
    submit = executor.submit

    def recording_submit(prompt: Any, workspace: Workspace, **kwargs: Any) -> Any:
        order.append(workspace.name)
        return submit(prompt, workspace, **kwargs)

    monkeypatch.setattr(executor, "submit", recording_submit)
    handler = make_handler(pipeline_for())

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        blocker = asyncio.create_task(
            handler({"id": "blocker", "input": {"workflow": workflows.slow(100, 0.02)}})
        )
        await asyncio.sleep(0.05)
        tasks = [
            asyncio.create_task(handler({**body, "id": f"thief-{i}"}))
            for i, body in enumerate(thieves)
        ]
        deadline = time.monotonic() + 10
        while len(order) < 1 + len(thieves):  # every thief's prompt is queued (and its files
            assert time.monotonic() < deadline  # written) before the victim's files are
            await asyncio.sleep(0.005)
        victim_job = {
            "id": "victim",
            "input": {
                "workflow": load("secret.png"),
                "images": [{"name": "secret.png", "image": b64(png_bytes(RED))}],
                "tobase64": True,
            },
        }
        victim = asyncio.create_task(handler(victim_job))
        while not victim_file.is_file():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        assert not blocker.done()
        stolen = await asyncio.gather(*tasks)
        assert "error" not in await blocker
        return stolen, await victim

    stolen, victim = asyncio.run(scenario())
    assert order[-1] == VICTIM and len(set(order)) == len(order)  # the victim ran last
    assert len(order) == len(thieves) + 2  # every thief ran while the victim's file existed
    for name, result in zip(names * 2 + names[:4], stolen, strict=True):
        assert result.get("error_code") == "validation_failed", (name, result)
        assert "files" not in result
    assert pixel(base64.b64decode(victim["files"][0])) == RED  # the owner reads it fine
    assert not victim_file.exists()  # and it is gone with the job


def test_a_job_cannot_read_or_upload_the_outputs_of_an_earlier_job(serve_factory, env, executor):
    running = serve_factory(media={"allow_private_urls": True})  # the moto server is on loopback
    _, victim = running.call("POST", "runsync", {"input": {"workflow": workflows.invert(0x204060)}})
    assert victim["status"] == "COMPLETED"
    [url] = victim["output"]["files"]
    name = victim["output"]["file_info"][0]["name"]
    kept = env.out / victim["id"] / name
    assert kept.is_file()  # kept for the retention window: a target
    comfy = executor.comfy

    thief_bucket = env.s3.make_bucket(f"thief-{uuid.uuid4().hex[:8]}")

    def upload(file_path: str) -> dict[str, Any]:
        prompt = workflows.invert(0)
        prompt["4"] = {
            "class_type": "RunPodS3Upload",
            "inputs": {
                "name_prefix": "loot",
                "format": "png",
                "quality": 90,
                "file_path": file_path,
            },
        }
        return prompt

    attempts = [
        load(str(kept)),
        load(os.path.relpath(kept, comfy.empty_input)),
        load(f"{name} [output]"),
        load(f"{victim['id']}/{name} [output]", "LoadImageOutput"),
        load(f"{name} [output]", "LoadImageOutput"),
        upload(str(kept)),
        upload(os.path.relpath(kept, comfy.output_dir)),
        upload(f"../{victim['id']}/{name}"),
    ]
    for prompt in attempts:
        body = {"input": {"workflow": prompt, "tobucket": bucket_contract(env.s3, thief_bucket)}}
        _, answer = running.call("POST", "runsync", body)
        assert answer["status"] == "FAILED", (prompt, answer)
        assert answer["output"]["error_code"] in ("validation_failed", "execution_failed")
    assert env.s3.client().list_objects_v2(Bucket=thief_bucket)["KeyCount"] == 0

    # The victim's file URL works; under another job's id, or without its token, it does not.
    other = {"input": {"workflow": workflows.invert(1, prefix="other")}}
    thief = running.call("POST", "runsync", other)[1]
    token = url.split("?token=")[1]
    assert fetch(url)[0] == 200
    assert fetch(f"{running.base}/files/{thief['id']}/{name}?token={token}")[0] == 404
    assert fetch(url.split("?")[0])[0] == 401
    assert pixel(kept.read_bytes()) == (0xDF, 0xBF, 0x9F)  # untouched


def test_two_jobs_with_the_same_input_names_each_see_their_own(pipeline_for):
    handler = make_handler(pipeline_for())

    def job(i: int, color: tuple[int, int, int]) -> dict[str, Any]:
        return {
            "id": f"same-{i}",
            "input": {
                "workflow": workflows.load_and_save("same.png", prefix="same"),
                "images": [{"name": "same.png", "image": b64(png_bytes(color))}],
                "tobase64": True,
            },
        }

    async def both() -> list[dict[str, Any]]:
        return await asyncio.gather(handler(job(1, RED)), handler(job(2, BLUE)))

    first, second = asyncio.run(both())
    assert pixel(base64.b64decode(first["files"][0])) == RED
    assert pixel(base64.b64decode(second["files"][0])) == BLUE


@pytest.mark.parametrize("job_id", ["../../escape-{}", "/tmp/escape-{}", "..", "a/../../b-{}"])
def test_a_job_id_cannot_place_files_outside_the_output_folder(pipeline_for, env, job_id):
    job_id = job_id.format(uuid.uuid4().hex[:8])
    result = pipeline_for().run_sync({"id": job_id, "input": {"workflow": workflows.invert(0)}})
    [path] = result["files"]
    assert Path(path).resolve().is_relative_to(env.out.resolve()), path
    assert pixel(Path(path).read_bytes()) == (255, 255, 255)
    assert not job_id.startswith("/") or not Path(job_id).exists()


# -- secrets -----------------------------------------------------------------------------------


def test_no_secret_in_logs_results_or_files_of_bucket_jobs(
    serve_factory, pipeline_for, env, caplog: pytest.LogCaptureFixture
):
    """Jobs that deliver to a bucket (tobucket, s3Config, BUCKET_* env, the S3 Upload
    node), through serve and the handler: scan our logs, every result, and the PNG
    metadata of every uploaded object. The corpus does the same for every bad input."""
    caplog.set_level(logging.DEBUG)
    contract = bucket_contract(env.s3, env.bucket)
    node = workflows.invert(0)
    node["4"] = {
        "class_type": "RunPodS3Upload",
        "inputs": {"images": ["2", 0], "name_prefix": "node", "format": "png", "quality": 90},
    }
    bodies = [
        {"input": {"workflow": workflows.invert(0), "tobucket": contract}},
        {"input": {"workflow": workflows.invert(0)}, "s3Config": contract},
        {"input": {"workflow": node, "tobucket": contract}},
    ]
    environ = {
        "BUCKET_ENDPOINT_URL": env.s3.endpoint_url,
        "BUCKET_ACCESS_KEY_ID": TEST_ACCESS_ID,
        "BUCKET_SECRET_ACCESS_KEY": TEST_ACCESS_SECRET,
        "BUCKET_NAME": env.bucket,
    }
    results: list[Any] = []
    running = serve_factory(media={"allow_private_urls": True})  # the moto server is on loopback
    for body in bodies:
        _, answer = running.call("POST", "runsync", body)
        assert answer["status"] == "COMPLETED", answer
        results.append(answer)
    handler = make_handler(pipeline_for(environ, allow_private_urls=True))
    for i, body in enumerate([*bodies, {"input": {"workflow": workflows.invert(0)}}]):
        result = asyncio.run(handler({**body, "id": f"secret-{i}"}))
        assert "error" not in result, result
        results.append(result)
    # A caller with a wrong key is told so, without their key echoed back.
    wrong = running.call("GET", "health", headers={"Authorization": "Bearer " + API_KEY[::-1]})
    assert wrong[0] == 401 and API_KEY[::-1] not in wrong[1]["error"]

    files = [u for r in results for u in (r.get("output") or r)["files"]]
    assert len(files) == 4 + 5  # the S3 Upload node adds one URL to the SaveImage file
    pngs = [png_text(fetch(url)[1]) for url in files]
    assert any('"prompt"' in text for text in pngs)  # ComfyUI did save metadata to scan
    assert_no_secrets(caplog.records, *results, *pngs)
