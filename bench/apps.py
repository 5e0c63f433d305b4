"""Per-job overhead of an app job (``{"app", "params"}``) over the same plain workflow job.

One ComfyUI booted in this process, model-free jobs, a new colour each job (nothing
served from ComfyUI's cache), contenders interleaved in a rotating order per round:

- ``plain``: the workflow with literal values (EmptyImage → ImageInvert → SaveImage);
- ``app``: ``{"app": "color", "params": {...}}``: schema derivation from live INPUT_TYPES,
  parameter checks and binding (values written into the widgets the input nodes feed),
  then the same graph as ``plain``;
- ``app_as_workflow`` (``--with-app-as-workflow``): the app file sent as a plain workflow
  with ``overrides``: its input nodes run as three more, trivial nodes.

    .venv/bin/python bench/apps.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import BENCH, boot_executor, summarize, table, write_report

APPS = BENCH.parent / "tests" / "apps"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument(
        "--with-app-as-workflow",
        action="store_true",
        help="also run app_as_workflow (its bigger graph changes ComfyUI's cache for the job "
        "after it, so it skews the other two; off by default)",
    )
    args = parser.parse_args()

    from comfyui_runpod.executor.apps import AppStore
    from comfyui_runpod.executor.delivery import DeliverySettings
    from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings

    work = Path(tempfile.mkdtemp(prefix="bench-apps-"))
    executor = boot_executor(work / "comfy")
    settings = PipelineSettings(
        delivery=DeliverySettings(local_dir=work / "out"), apps=AppStore(APPS), environ={}
    )
    pipeline = Pipeline(executor, settings)
    app_workflow = json.loads((APPS / "color.json").read_text())

    def plain(color: int) -> dict[str, Any]:
        return {
            "input": {
                "workflow": {
                    "1": {
                        "class_type": "EmptyImage",
                        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color},
                    },
                    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                    "3": {
                        "class_type": "SaveImage",
                        "inputs": {"images": ["2", 0], "filename_prefix": "p"},
                    },
                }
            }
        }

    def app_as_workflow(color: int) -> dict[str, Any]:
        overrides = {"10.value": color, "11.value": "p"}
        return {"input": {"workflow": app_workflow, "overrides": overrides}}

    def app(color: int) -> dict[str, Any]:
        return {"input": {"app": "color", "params": {"color": color, "prefix": "p"}}}

    contenders = {"plain": plain, "app": app}
    if args.with_app_as_workflow:
        contenders["app_as_workflow"] = app_as_workflow
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    color = 0
    for warm in range(20):  # first jobs pay for imports and first-use caches
        for name in names:
            pipeline.run_sync({"id": f"warm-{warm}", **contenders[name](color := color + 1)})
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            color += 1
            job = {"id": f"{name}-{round_}", **contenders[name](color)}
            started = time.perf_counter()
            result = pipeline.run_sync(job)
            samples[name].append(time.perf_counter() - started)
            assert "error" not in result, result
    executor.close()
    stats = {name: summarize(values) for name, values in samples.items()}
    base = stats["plain"]["median_ms"]
    rows = [
        (name, s["median_ms"], s["p90_ms"], f"{(s['median_ms'] / base - 1) * 100:+.1f} %")
        for name, s in stats.items()
    ]
    # Paired: the same round's jobs ran back to back, so their difference drifts less with
    # the machine's load than two medians do.
    paired = {
        name: statistics.median(a - b for a, b in zip(samples[name], samples["plain"], strict=True))
        * 1000
        for name in names[1:]
    }
    print(table(["job", "median ms", "p90 ms", "vs plain"], rows))
    for name, diff in paired.items():
        print(f"{name}: median paired difference {diff:+.3f} ms ({diff / base * 100:+.1f} %)")
    report = {"rounds": args.rounds, "stats": stats, "paired_diff_ms": paired}
    print(write_report("apps", report))


if __name__ == "__main__":
    main()
