"""P1: per-job overhead of our executor and pipeline over a bare ``PromptExecutor``.

Same process, same ComfyUI, same model-free prompt (EmptyImage → ImageInvert → SaveImage
with a new colour each round so nothing is served from cache), runs interleaved A/B/C so
machine noise hits all three alike. Prints a markdown table; writes bench/results/*.json.

    .venv/bin/python bench/overhead.py [--rounds 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from comfyui_runpod.delivery import DeliverySettings
from comfyui_runpod.executor import BootSettings, Executor
from comfyui_runpod.pipeline import Pipeline, PipelineSettings


def prompt(color: int) -> dict:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "b"}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    executor = Executor(BootSettings(work_dir=work, cpu=True))
    comfy = executor.start()
    pipeline = Pipeline(executor, PipelineSettings(DeliverySettings(local_dir=work / "out")))

    import execution

    bare = execution.PromptExecutor(
        comfy.server,
        cache_type=execution.CacheType.CLASSIC,
        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0},
    )

    def run_bare(color: int) -> None:
        p, pid = prompt(color), str(uuid.uuid4())
        ok, _, outputs, _ = asyncio.run(execution.validate_prompt(pid, p, None))
        assert ok
        bare.execute(p, pid, {"client_id": "bench"}, outputs)
        assert bare.success

    def run_executor(color: int) -> None:
        ws = executor.workspace("bench")
        result = executor.run(prompt(color), ws)
        assert result.error is None
        ws.cleanup()

    loop = asyncio.new_event_loop()  # like the handler and serve: one long-lived loop

    def run_pipeline(color: int) -> None:
        job = {"id": f"bench-{color}", "input": {"workflow": prompt(color)}}
        result = loop.run_until_complete(pipeline.run(job))
        assert "error" not in result, result
        delivered.extend(result["files"])

    delivered: list[str] = []

    contenders = {
        "a_bare_prompt_executor": run_bare,
        "b_executor_run": run_executor,
        "b_pipeline_run": run_pipeline,
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(args.rounds + 10):
        for offset, (name, run) in enumerate(contenders.items()):
            color = (round_ * 7 + offset) % 0xFFFFFF + 1
            began = time.perf_counter()
            run(color)
            if round_ >= 10:  # warm-up rounds are not counted
                samples[name].append(time.perf_counter() - began)
    executor.close()
    for path in delivered:
        Path(path).unlink()

    def stats(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "median_ms": statistics.median(ordered) * 1000,
            "p90_ms": ordered[int(len(ordered) * 0.9)] * 1000,
        }

    table = {name: stats(values) for name, values in samples.items()}
    base = table["a_bare_prompt_executor"]["median_ms"]
    print(f"ComfyUI {comfy.location.version} on {comfy.device}, {args.rounds} rounds\n")
    print("| path | median ms | p90 ms | ratio to bare |")
    print("|---|---|---|---|")
    for name, row in table.items():
        ratio = row["median_ms"] / base
        print(f"| {name} | {row['median_ms']:.2f} | {row['p90_ms']:.2f} | {ratio:.2f}x |")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"comfyui": comfy.location.version, "device": comfy.device, "results": table}
    (args.out / "overhead.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
