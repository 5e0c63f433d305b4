"""Where P1's per-job overhead goes: ``time.perf_counter()`` stamps between the phases of
one ``Pipeline.run`` (model-free job), against ``execute_async`` on a kept loop.

A sampling profiler cannot resolve phases of a few tens of µs in a 2 ms job, and cProfile
only sees the thread it runs on (the job crosses two), so this wraps the phase functions of
the pipeline, executor and delivery (in this process only) and records when each starts
and ends. The wrappers cost a few µs each; read the table as a breakdown, not as P1.

    .venv/bin/python bench/phases.py [--jobs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import (
    RESULTS,
    boot_executor,
    invert_prompt,
    output_files,
    remove_files,
    table,
    write_report,
)

#: (label, start stamp, end stamp): the phases in the order a job passes them.
PHASES = [
    ("start → parse_job", "start", "parse0"),
    ("parse_job", "parse0", "parse1"),
    ("workspace, JobContext", "parse1", "submit0"),
    ("submit (deepcopy, queue)", "submit0", "submit1"),
    ("hop to the executor thread", "submit1", "run0"),
    ("setup before validation", "run0", "validate0"),
    ("validation (ours + ComfyUI's)", "validate0", "validate1"),
    ("validation → execute", "validate1", "execute0"),
    ("execute_async (ComfyUI)", "execute0", "execute1"),
    ("execute → collect", "execute1", "collect0"),
    ("collect", "collect0", "collect1"),
    ("collect → remove temp files", "collect1", "rmtemp0"),
    ("remove temp files", "rmtemp0", "rmtemp1"),
    ("back on the caller's loop", "rmtemp1", "deliver0"),
    ("deliver (local files)", "deliver0", "deliver1"),
    ("deliver → cleanup", "deliver1", "cleanup0"),
    ("Workspace.cleanup", "cleanup0", "cleanup1"),
    ("cleanup → return", "cleanup1", "end"),
]


def _stamp(owner: Any, name: str, key: str, stamps: dict[str, float]) -> None:
    """Wrap ``owner.name`` so that it records ``<key>0`` / ``<key>1`` around each call."""
    original: Callable[..., Any] = getattr(owner, name)
    if asyncio.iscoroutinefunction(original):

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            stamps[f"{key}0"] = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                stamps[f"{key}1"] = time.perf_counter()

    else:

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            stamps[f"{key}0"] = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                stamps[f"{key}1"] = time.perf_counter()

    setattr(owner, name, wrapper)


def measure(executor: Any, *, jobs: int = 1000, warmup: int = 20) -> dict[str, Any]:
    """Stamp ``jobs`` pipeline jobs (and as many floor jobs) on a booted ``executor``.

    Leaves the wrapped functions in place: run it in a process of its own.
    """
    import execution
    from comfyui_runpod.executor import pipeline as pipeline_module
    from comfyui_runpod.executor import runner
    from comfyui_runpod.executor.delivery import DeliverySettings

    stamps: dict[str, float] = {}
    _stamp(pipeline_module, "parse_job", "parse", stamps)
    _stamp(pipeline_module, "deliver", "deliver", stamps)
    _stamp(runner.Executor, "submit", "submit", stamps)
    _stamp(runner.Executor, "_run_one", "run", stamps)
    _stamp(runner.Executor, "_validate", "validate", stamps)
    _stamp(runner, "collect", "collect", stamps)
    _stamp(runner, "_remove_temp_files", "rmtemp", stamps)
    _stamp(runner.Workspace, "cleanup", "cleanup", stamps)
    _stamp(executor._prompt_executor, "execute_async", "execute", stamps)

    comfy = executor.comfy
    local_dir = Path(tempfile.mkdtemp(prefix="bench-phases-"))
    settings = pipeline_module.PipelineSettings(DeliverySettings(local_dir=local_dir), environ={})
    pipeline = pipeline_module.Pipeline(executor, settings)
    floor = execution.PromptExecutor(
        comfy.server,
        cache_type=execution.CacheType.CLASSIC,
        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0},
    )
    loop = asyncio.new_event_loop()
    samples: dict[str, list[float]] = {label: [] for label, _, _ in PHASES}
    samples["total (pipeline)"], samples["floor: validate + execute_async"] = [], []
    try:
        for index in range(warmup + jobs):
            job = {"id": f"phases-{index}", "input": {"workflow": invert_prompt(index + 1)}}
            stamps.clear()
            stamps["start"] = time.perf_counter()
            result = loop.run_until_complete(pipeline.run(job))
            stamps["end"] = time.perf_counter()
            assert "error" not in result, result
            shutil.rmtree(local_dir / job["id"], ignore_errors=True)

            prompt, prompt_id = invert_prompt(0x800000 + index), str(uuid.uuid4())
            began = time.perf_counter()
            ok, _, outputs, _ = loop.run_until_complete(
                execution.validate_prompt(prompt_id, prompt, None)
            )
            loop.run_until_complete(floor.execute_async(prompt, prompt_id, {}, outputs))
            floor_s = time.perf_counter() - began
            assert ok and floor.success
            remove_files(output_files(floor.history_result["outputs"], comfy.output_dir))
            if index < warmup:
                continue
            for label, start, end in PHASES:
                samples[label].append(stamps[end] - stamps[start])
            samples["total (pipeline)"].append(stamps["end"] - stamps["start"])
            samples["floor: validate + execute_async"].append(floor_s)
    finally:
        loop.close()
        shutil.rmtree(local_dir, ignore_errors=True)
    medians = {label: statistics.median(values) * 1000 for label, values in samples.items()}
    return {"jobs": jobs, "median_ms": medians}


def render(report: dict[str, Any]) -> str:
    rows = [(label, f"{ms:.3f}") for label, ms in report["median_ms"].items()]
    return f"Phases of Pipeline.run, {report['jobs']} jobs (medians)\n\n" + table(
        ["phase", "ms"], rows
    )


def parser() -> argparse.ArgumentParser:
    """The command line (not part of ``make bench``: a diagnostic for P1)."""
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--jobs", type=int, default=1000)
    cli.add_argument("--warmup", type=int, default=20)
    cli.add_argument("--out", type=Path, default=RESULTS)
    return cli


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-phases-work-"))
    executor = boot_executor(work)
    try:
        report = measure(executor, jobs=args.jobs, warmup=args.warmup)
    finally:
        executor.close()
        shutil.rmtree(work, ignore_errors=True)
    print(render(report))
    write_report("phases", report, args.out)


if __name__ == "__main__":
    main()
