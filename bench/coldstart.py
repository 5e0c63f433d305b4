"""P2: cold start — process start → the first job's result, ours vs the server path.

Contenders, each a fresh process per sample, interleaved in a rotating order:

- ``ours_script``: a Python process that boots our ``Executor`` and runs one job through
  ``Pipeline.run`` (what ``comfyui-runpod worker`` does before it takes its first job); the
  clock stops when the result line arrives on its stdout. It then runs a job of a node
  module not imported yet (``ImageBlur``, the lazy first-use cost) and the same job again;
- ``ours_eager``: the same with ``COMFYUI_RUNPOD_LAZY=0`` (``--no-lazy``: everything
  imported at boot, as the server does);
- ``ours_cli``: ``comfyui-runpod run job.json``, until the process has exited (a user's
  view: includes the interpreter's shutdown);
- ``server``: ComfyUI's ``main.py`` started, polled until it answers (every 10 ms; the
  reference worker polls every 50 ms), then one job over websocket + ``POST /prompt`` +
  ``GET /history`` (the same client as P1).

Same ComfyUI tree, same model-free job, CPU, and the same node set on both sides: partner
(API) nodes on, the default of both ``main.py`` and ours, or off on both (``--api-nodes off``:
``--disable-api-nodes`` / ``COMFYUI_RUNPOD_API_NODES=0``). The node index is built before
the first sample (``comfyui-runpod comfyui index``, as the image does). RSS is read after
the first job, ours and the server's.

    .venv/bin/python bench/coldstart.py [--rounds 3] [--api-nodes on|off]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import (
    RESULTS,
    ComfyServer,
    comfyui_tree,
    invert_prompt,
    output_files,
    rss_mib,
    server_job,
    table,
    write_report,
)

#: Read by the ``ours_script`` child as ``comfyui-runpod`` reads them: one switch, both paths.
API_NODES_ENV = "COMFYUI_RUNPOD_API_NODES"
LAZY_ENV = "COMFYUI_RUNPOD_LAZY"


def child() -> None:
    """The ``ours_script`` process: boot, one job, one JSON line on stdout; then the lazy
    first-use cost on a second line; exit."""
    from benchlib import boot_executor, rss_mib
    from comfyui_runpod.executor.delivery import DeliverySettings
    from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings

    work = Path(tempfile.mkdtemp(prefix="bench-p2-child-"))
    try:
        executor = boot_executor(
            work,
            api_nodes=os.environ.get(API_NODES_ENV) != "0",
            lazy=os.environ.get(LAZY_ENV) != "0",
        )
        settings = PipelineSettings(DeliverySettings(local_dir=work / "delivered"), environ={})
        pipeline = Pipeline(executor, settings)
        result = pipeline.run_sync({"id": "cold", "input": {"workflow": invert_prompt(1)}})
        line = {"boot_s": executor.comfy.boot_s, "result": result, "rss_mib": rss_mib()}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        timings = []
        for color in (2, 3):
            began = time.perf_counter()
            blurred = pipeline.run_sync(
                {"id": f"blur{color}", "input": {"workflow": blur_prompt(color)}}
            )
            timings.append(time.perf_counter() - began)
            if "error" in blurred:
                raise RuntimeError(f"blur job failed: {blurred}")
        sys.stdout.write(json.dumps({"first_use_s": timings[0], "again_s": timings[1]}) + "\n")
        sys.stdout.flush()
        executor.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def blur_prompt(color: int) -> dict[str, Any]:
    """The model-free job plus ``ImageBlur`` (comfy_extras/nodes_post_processing.py)."""
    prompt = invert_prompt(color)
    prompt["4"] = {
        "class_type": "ImageBlur",
        "inputs": {"image": ["2", 0], "blur_radius": 2, "sigma": 1.0},
    }
    prompt["3"]["inputs"]["images"] = ["4", 0]
    return prompt


def _env(api_nodes: bool, lazy: bool = True) -> dict[str, str]:
    return {**os.environ, API_NODES_ENV: "1" if api_nodes else "0", LAZY_ENV: "1" if lazy else "0"}


def _ours_script(timeout_s: float, api_nodes: bool, lazy: bool = True) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child"]
    began = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(api_nodes, lazy)
    )
    try:
        assert process.stdout is not None
        report: dict[str, Any] = {}
        for line in process.stdout:  # anything ComfyUI prints to stdout comes first
            if line.startswith(b'{"boot_s"'):
                report = json.loads(line)
                break
        elapsed = time.perf_counter() - began
        if not report:
            raise RuntimeError(f"ours_script exited with {process.wait()} and no result")
        if "error" in report["result"]:
            raise RuntimeError(f"ours_script job failed: {report['result']}")
        lazy_cost = next(
            (json.loads(line) for line in process.stdout if line.startswith(b'{"first_use_s"')),
            None,
        )
        if lazy_cost is None:
            raise RuntimeError(f"ours_script exited with {process.wait()} before the blur jobs")
        process.wait(timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return {"s": elapsed, "boot_s": report["boot_s"], "rss_mib": report["rss_mib"], **lazy_cost}


def _ours_cli(timeout_s: float, api_nodes: bool) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="bench-p2-cli-"))
    try:
        job = folder / "job.json"
        job.write_text(json.dumps({"input": {"workflow": invert_prompt(2)}}))
        cli = Path(sys.executable).with_name("comfyui-runpod")
        command = [str(cli), "run", str(job), "--cpu", "--out", str(folder / "out")]
        command += ["--work-dir", str(folder / "work")]
        began = time.perf_counter()
        done = subprocess.run(
            command, capture_output=True, timeout=timeout_s, check=False, env=_env(api_nodes)
        )
        elapsed = time.perf_counter() - began
        if done.returncode != 0:
            raise RuntimeError(f"comfyui-runpod run failed: {done.stderr.decode()[-2000:]}")
        json.loads(done.stdout)
        return {"s": elapsed}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _server(comfyui: Path, timeout_s: float, api_nodes: bool) -> dict[str, Any]:
    server = ComfyServer(comfyui, api_nodes=api_nodes)
    try:
        server.spawn()
        began = server.started_at
        server.wait_ready(timeout_s)

        async def first_job() -> Any:
            async with aiohttp.ClientSession() as session:
                return await server_job(session, server.base_url, invert_prompt(3))

        outputs = asyncio.run(first_job())
        elapsed = time.perf_counter() - began
        assert len(output_files(outputs, server.output_dir)) == 1, outputs
        assert server.process is not None
        return {"s": elapsed, "ready_s": server.ready_s, "rss_mib": rss_mib(server.process.pid)}
    finally:
        server.stop()


def measure(rounds: int = 3, timeout_s: float = 300.0, api_nodes: bool = True) -> dict[str, Any]:
    """``rounds`` fresh processes of each contender, in a rotating order."""
    comfyui = comfyui_tree()
    cli = Path(sys.executable).with_name("comfyui-runpod")
    index = [str(cli), "comfyui", "index", "--cpu", "--comfyui", str(comfyui)]
    subprocess.run(index, check=True, capture_output=True, env=_env(api_nodes))
    contenders = {
        "ours_script": lambda: _ours_script(timeout_s, api_nodes),
        "ours_eager": lambda: _ours_script(timeout_s, api_nodes, lazy=False),
        "ours_cli": lambda: _ours_cli(timeout_s, api_nodes),
        "server": lambda: _server(comfyui, timeout_s, api_nodes),
    }
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(contenders[name]())

    def median(name: str, key: str = "s") -> float:
        return statistics.median(s[key] for s in samples[name])

    results = {
        name: {"median_s": median(name), "samples_s": [s["s"] for s in runs]}
        for name, runs in samples.items()
    }
    for name in ("ours_script", "ours_eager"):
        results[name]["boot_median_s"] = median(name, "boot_s")
        results[name]["first_use_median_s"] = median(name, "first_use_s")
        results[name]["again_median_s"] = median(name, "again_s")
    for name in ("ours_script", "ours_eager", "server"):
        results[name]["rss_median_mib"] = median(name, "rss_mib")
    results["server"]["ready_median_s"] = median("server", "ready_s")
    return {
        "rounds": rounds,
        "api_nodes": api_nodes,
        "results": results,
        "ratios": {
            "server_over_ours": median("server") / median("ours_script"),
            "server_over_ours_cli": median("server") / median("ours_cli"),
            "eager_over_lazy": median("ours_eager") / median("ours_script"),
        },
        "targets": {"server_over_ours": ">= 2.0 (issue 23)"},
    }


def render(report: dict[str, Any]) -> str:
    res = report["results"]
    rows = [
        ("ours: boot + 1 job (script)", res["ours_script"]["median_s"]),
        ("ours --no-lazy: boot + 1 job (script)", res["ours_eager"]["median_s"]),
        ("ours: `comfyui-runpod run` until exit", res["ours_cli"]["median_s"]),
        ("server: main.py start + 1 job (ws)", res["server"]["median_s"]),
    ]
    lazy, eager = res["ours_script"], res["ours_eager"]
    return (
        f"P2 cold start, {report['rounds']} fresh processes each (median), partner nodes "
        f"{'on' if report.get('api_nodes', False) else 'off'}\n\n"
        + table(["path", "seconds"], rows)
        + f"\n\nours boot {lazy['boot_median_s']:.2f} s (--no-lazy "
        f"{eager['boot_median_s']:.2f} s); server ready {res['server']['ready_median_s']:.2f} s; "
        f"server/ours = {report['ratios']['server_over_ours']:.2f}\n"
        f"first job of a module not imported yet (ImageBlur): {lazy['first_use_median_s']:.3f} s, "
        f"again {lazy['again_median_s']:.3f} s (--no-lazy: {eager['first_use_median_s']:.3f} s)\n"
        f"RSS after the first job: ours {lazy['rss_median_mib']:.0f} MiB, --no-lazy "
        f"{eager['rss_median_mib']:.0f} MiB, server {res['server']['rss_median_mib']:.0f} MiB"
    )


def parser() -> argparse.ArgumentParser:
    """The command line (``make bench`` passes flags from ``run.BENCHES``)."""
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--rounds", type=int, default=3)
    cli.add_argument("--timeout", type=float, default=300.0)
    cli.add_argument(
        "--api-nodes",
        choices=("on", "off"),
        default="on",
        help="partner (API) nodes on both sides (default: on, as both boot by default)",
    )
    cli.add_argument("--out", type=Path, default=RESULTS)
    cli.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return cli


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.child:
        child()
        return
    report = measure(args.rounds, args.timeout, args.api_nodes == "on")
    print(render(report))
    write_report("coldstart", report, args.out)


if __name__ == "__main__":
    main()
