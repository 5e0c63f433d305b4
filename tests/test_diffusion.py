"""A real diffusion run: a tiny random-weight SD1.5 checkpoint through ComfyUI's own nodes."""

from __future__ import annotations

import threading

import workflows
from comfyui_runpod.executor import Executor
from PIL import Image, ImageStat


def test_tiny_model_renders_an_image_with_sampler_progress(
    executor: Executor, tiny_checkpoint: str
) -> None:
    events: list[dict] = []
    result = executor.run(
        workflows.tiny_sd(tiny_checkpoint, seed=1),
        executor.workspace("tiny-1"),
        on_progress=events.append,
    )
    assert result.error is None
    [output] = result.files
    with Image.open(output.path) as image:
        assert image.size == (64, 64)
        assert max(ImageStat.Stat(image.convert("RGB")).stddev) > 5  # not a flat image
    steps = [(e["node"], e["step"], e["max"]) for e in events if e["event"] == "step"]
    assert ("3", 1, 2) in steps and ("3", 2, 2) in steps
    assert events[-1]["event"] == "finished"


def test_second_seed_reuses_the_loaded_model(executor: Executor, tiny_checkpoint: str) -> None:
    executor.run(workflows.tiny_sd(tiny_checkpoint, seed=10), executor.workspace("warm-0"))
    events: list[dict] = []
    result = executor.run(
        workflows.tiny_sd(tiny_checkpoint, seed=11),
        executor.workspace("warm-1"),
        on_progress=events.append,
    )
    assert result.error is None and len(result.files) == 1
    ran = {e["node"] for e in events if e["event"] == "node"}
    assert "4" not in ran  # CheckpointLoaderSimple did not run again
    assert {"3", "8", "9"} <= ran  # sampler, decoder and saver did


def test_interrupt_mid_ksampler(executor: Executor, tiny_checkpoint: str) -> None:
    stepping = threading.Event()

    def on_progress(event: dict) -> None:
        if event["event"] == "step" and event["node"] == "3":
            stepping.set()

    handle = executor.submit(
        workflows.tiny_sd(tiny_checkpoint, seed=5, steps=500),
        executor.workspace("tiny-cancel"),
        on_progress=on_progress,
    )
    assert stepping.wait(30)
    handle.cancel()
    result = handle.future.result(timeout=30)
    assert result.error is not None and result.error.code == "cancelled"
    assert "node 3 (KSampler)" in result.error.message
    after = executor.run(workflows.tiny_sd(tiny_checkpoint, seed=6), executor.workspace("tiny-2"))
    assert after.error is None and len(after.files) == 1
