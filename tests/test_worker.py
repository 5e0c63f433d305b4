"""The serverless worker through the real runpod SDK (its local ``--test_input`` mode).

RunPod's job queue cannot exist here, so the SDK runs one job from ``--test_input`` and
exits — the same handler, pipeline and executor code as in the cloud.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import workflows
from comfyui_runpod.executor.delivery import payload_limit_for
from comfyui_runpod.executor.worker import ProgressThrottle, make_handler
from s3server import TEST_ACCESS_SECRET, S3Server, bucket_contract

TESTS = Path(__file__).resolve().parent


def worker(job: dict, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "comfyui_runpod",
        "worker",
        "--cpu",
        "--work-dir",
        str(tmp_path / "work"),
        *extra,
        "--test_input",
        json.dumps(job),
    ]
    env = {**os.environ, "COMFYUI_RUNPOD_OUTPUT": str(tmp_path / "out")}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path
    )


@pytest.mark.slow
def test_worker_runs_a_model_free_job_with_a_bucket(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket("worker")
    job = {
        "input": {"workflow": workflows.invert(0)},
        "s3Config": bucket_contract(s3_server, bucket),
    }
    warmup = TESTS.parent / "examples" / "invert.json"
    # The moto server is on loopback: a job's own bucket gets there only with the flag.
    done = worker(job, tmp_path, "--warmup", str(warmup), "--allow-private-urls")
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-3000:]
    assert "job warmup COMPLETED" in logs and "warmup done" in logs
    assert "completed successfully" in logs
    assert "/generations/local_test/inv_00001_.png" in logs
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["generations/local_test/inv_00001_.png"]
    assert TEST_ACCESS_SECRET not in logs


@pytest.mark.slow
def test_worker_runs_the_tiny_model(tmp_path: Path, executor, tiny_checkpoint: str) -> None:
    from tinymodel import tiny_sd15_path

    models = tmp_path / "models.yaml"
    models.write_text(f"tests:\n  base_path: {tiny_sd15_path().parent}\n  checkpoints: .\n")
    job = {"input": {"workflow": workflows.tiny_sd(tiny_checkpoint)}}
    warmup = tmp_path / "warmup.json"
    warmup.write_text(json.dumps(workflows.tiny_sd(tiny_checkpoint, seed=7)))
    done = worker(job, tmp_path, "--extra-model-paths", str(models), "--warmup", str(warmup))
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-3000:]
    assert len(list((tmp_path / "out" / "local_test").glob("tiny_*.png"))) == 1
    # The warmup's checkpoint was read while ComfyUI imported, before the warmup ran.
    size_mib = tiny_sd15_path().stat().st_size / 2**20
    read = f"read 1 model file(s) ahead, {size_mib:.1f} MiB"
    assert read in logs and logs.index(read) < logs.index("job warmup COMPLETED")


@pytest.mark.slow
def test_worker_reports_a_bad_job_as_an_error(tmp_path: Path) -> None:
    done = worker({"input": {"workflow": {"1": {"class_type": "Nope"}}}}, tmp_path)
    logs = done.stdout + done.stderr
    assert done.returncode == 1
    assert "validation_failed: unknown node type in node 1 ('Nope')" in logs
    # Without a warmup the SDK takes the job while ComfyUI still boots; the job waits.
    assert logs.index("local_test | Started.") < logs.index("ready on cpu")
    assert "boot_wait=" in logs


def test_handler_cancel_interrupts_and_reraises(make_pipeline) -> None:
    handler = make_handler(make_pipeline())

    async def scenario() -> dict:
        task = asyncio.create_task(
            handler({"id": "c1", "input": {"workflow": workflows.slow(200, 0.05)}})
        )
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await handler({"id": "c2", "input": {"workflow": workflows.invert(0)}})

    assert "error" not in asyncio.run(scenario())


def test_handler_honours_execution_timeout(make_pipeline) -> None:
    handler = make_handler(make_pipeline())
    job = {"id": "t1", "input": {"workflow": workflows.slow(200, 0.05)}}
    result = asyncio.run(handler({**job, "policy": {"executiontimeout": 400}}))
    assert result["error"].startswith("timeout: execution exceeded 0.4s")
    ok = asyncio.run(handler({"id": "t2", "input": {"workflow": workflows.invert(0)}}))
    assert "error" not in ok


def test_payload_limit_follows_runpods_sync_job_ids() -> None:
    assert payload_limit_for("sync-1234") == 20 * 1024 * 1024
    assert payload_limit_for("a1b2c3") == 10 * 1024 * 1024


def test_progress_throttle_keeps_first_and_last() -> None:
    sent: list[dict] = []
    throttle = ProgressThrottle(sent.append, interval_s=60)
    for event in ["started", "step", "step", "node", "finished"]:
        throttle({"event": event})
    assert [e["event"] for e in sent] == ["started", "finished"]


def test_progress_throttle_carries_a_dropped_preview_to_the_next_event() -> None:
    sent: list[dict] = []
    throttle = ProgressThrottle(sent.append, interval_s=60)
    throttle({"event": "started"})
    throttle({"event": "step", "preview": "data:image/jpeg;base64,AAAA"})  # dropped...
    throttle({"event": "step"})
    throttle({"event": "finished"})  # ...its preview rides here, once
    assert sent == [
        {"event": "started"},
        {"event": "finished", "preview": "data:image/jpeg;base64,AAAA"},
    ]


def test_a_cuda_error_asks_runpod_for_a_fresh_worker(make_pipeline) -> None:
    handler = make_handler(make_pipeline())
    prompt = workflows.invert(0)
    prompt["2"] = {
        "class_type": "TestRaise",
        "inputs": {"image": ["1", 0], "message": "CUDA error: an illegal memory access"},
    }
    result = asyncio.run(handler({"id": "cuda", "input": {"workflow": prompt}}))
    assert result["error_code"] == "execution_failed"
    assert result["refresh_worker"] is True  # runpod pops it and stops this worker
    ordinary = asyncio.run(handler({"id": "ok", "input": {"workflow": workflows.invert(0)}}))
    assert "refresh_worker" not in ordinary


def test_read_ahead_finds_model_names_in_either_workflow_format() -> None:
    from comfyui_runpod.executor.readahead import model_names

    api = workflows.tiny_sd("tiny.safetensors")
    api["9"] = {"class_type": "LoraLoader", "inputs": {"lora_name": "sub/style.SAFETENSORS"}}
    saved = {
        "nodes": [
            {"type": "CheckpointLoaderSimple", "widgets_values": ["tiny.safetensors"]},
            {"type": "UNETLoader", "widgets_values": ["flux.sft", "default"]},
            {"type": "Note", "widgets_values": ["https://host/x.safetensors"]},
        ]
    }
    assert model_names({"input": {"workflow": api}}) == [
        "tiny.safetensors",
        "sub/style.SAFETENSORS",
    ]
    assert model_names(saved) == ["tiny.safetensors", "flux.sft"]
