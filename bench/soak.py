"""P4: soak — many model-free jobs through ``Pipeline.run`` in one process: does anything
grow?

Every ``--every`` jobs (and at 0, after a short warm-up that pays one-time costs such as
lazy imports) it records the process RSS, open file descriptors, threads, Python objects
(after a ``gc.collect()``, so garbage waiting for the collector is not counted as a leak),
and the files left in the executor's work folder. Jobs alternate between the two ways a
job without a bucket returns files: local paths (a file per job is *expected* in the
delivery folder; the bench counts them and removes them as it goes) and base64 (nothing
may remain on disk).

    .venv/bin/python bench/soak.py [--jobs 500] [--every 100]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from benchlib import RESULTS, boot_executor, count_files, invert_prompt, table, write_report

MB = 1024 * 1024


def measure(executor: Any, *, jobs: int = 500, every: int = 100, warmup: int = 20) -> dict:
    """Run ``warmup + jobs`` jobs on a booted ``executor``; returns the report dict."""
    from comfyui_runpod.executor.delivery import DeliverySettings
    from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings

    process = psutil.Process()
    work_dir = executor.settings.work_dir.resolve()
    local_dir = Path(tempfile.mkdtemp(prefix="bench-p4-out-"))
    pipeline = Pipeline(
        executor, PipelineSettings(DeliverySettings(local_dir=local_dir), environ={})
    )
    loop = asyncio.new_event_loop()  # one long-lived loop, like the worker's
    checkpoints: list[dict[str, Any]] = []
    stray = 0  # delivered files beyond the one a local-path job should leave
    began = time.perf_counter()

    def snapshot(done: int) -> None:
        gc.collect()
        checkpoints.append(
            {
                "jobs": done,
                "rss_mb": process.memory_info().rss / MB,
                "fds": process.num_fds(),
                "threads": process.num_threads(),
                "objects": len(gc.get_objects()),
                "work_files": count_files(work_dir),
                "stray_delivered_files": stray,
            }
        )

    try:
        for index in range(warmup + jobs):
            if index == warmup:
                snapshot(0)
            base64 = index % 2 == 1
            job = {
                "id": f"soak-{index}",
                "input": {"workflow": invert_prompt(index + 1, size=32), "tobase64": base64},
            }
            result = loop.run_until_complete(pipeline.run(job))
            assert "error" not in result and len(result["files"]) == 1, result
            delivered = count_files(local_dir)
            stray += delivered - (0 if base64 else 1)
            shutil.rmtree(local_dir / job["id"], ignore_errors=True)
            done = index + 1 - warmup
            if done > 0 and (done % every == 0 or done == jobs):
                snapshot(done)
    finally:
        loop.close()
        shutil.rmtree(local_dir, ignore_errors=True)

    first, last = checkpoints[0], checkpoints[-1]
    return {
        "jobs": jobs,
        "warmup": warmup,
        "seconds": time.perf_counter() - began,
        "checkpoints": checkpoints,
        "growth": {
            "rss_mb": last["rss_mb"] - first["rss_mb"],
            "fds": last["fds"] - first["fds"],
            "threads": last["threads"] - first["threads"],
            "objects": last["objects"] - first["objects"],
            "work_files": last["work_files"] - first["work_files"],
            "stray_delivered_files": last["stray_delivered_files"],
        },
        "targets": {"rss_mb": "<= 50", "fds": "0", "work_files": "0"},
    }


def render(report: dict[str, Any]) -> str:
    rows = [
        (c["jobs"], c["rss_mb"], c["fds"], c["threads"], c["objects"], c["work_files"])
        for c in report["checkpoints"]
    ]
    growth = report["growth"]
    return (
        f"P4 soak: {report['jobs']} model-free jobs through Pipeline.run "
        f"({report['seconds']:.0f} s)\n\n"
        + table(["jobs", "RSS MB", "fds", "threads", "objects", "work files"], rows)
        + f"\n\ngrowth: RSS {growth['rss_mb']:+.1f} MB, fds {growth['fds']:+d}, threads "
        f"{growth['threads']:+d}, objects {growth['objects']:+d}, files left "
        f"{growth['work_files'] + growth['stray_delivered_files']}"
    )


def parser() -> argparse.ArgumentParser:
    """The command line (``make bench`` passes flags from ``run.BENCHES``)."""
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--jobs", type=int, default=500)
    cli.add_argument("--every", type=int, default=100)
    cli.add_argument("--warmup", type=int, default=20)
    cli.add_argument("--out", type=Path, default=RESULTS)
    return cli


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-p4-"))
    executor = boot_executor(work)
    try:
        report = measure(executor, jobs=args.jobs, every=args.every, warmup=args.warmup)
    finally:
        executor.close()
        shutil.rmtree(work, ignore_errors=True)
    print(render(report))
    write_report("soak", report, args.out)


if __name__ == "__main__":
    main()
