"""P1: per-job overhead — bare ``PromptExecutor`` vs our executor and pipeline vs the
server path that other RunPod workers use, interleaved in one run.

Same ComfyUI tree, same model-free prompt (EmptyImage → ImageInvert → SaveImage, a new
colour each job so nothing is served from cache), one ComfyUI booted in this process:

- ``a_bare``: ``validate_prompt`` + ``PromptExecutor.execute``, nothing else (``execute``
  is ``asyncio.run(execute_async(...))``, so it builds an event loop per call, as ComfyUI's
  own ``main.py`` prompt worker does);
- ``a_floor``: the same on one kept event loop (``execute_async``): the least any wrapper
  of ComfyUI's executor can cost, shown so that b/a is not flattered by ``a``'s loops;
- ``b_executor``: our ``Executor.run`` (its thread, workspace, validation, collection);
- ``b_pipeline``: our ``Pipeline.run`` (job parsing, executor, delivery): what a job costs;
- ``c_server``: ComfyUI's ``main.py`` server in a child process on loopback, driven the
  way worker-comfyui's handler drives it: new websocket per job, ``POST /prompt``, wait
  for ``executing``/``node: null``, ``GET /history/<id>``;
- ``c_server_kept_ws``: the same with one websocket kept open (the server path's best case).

Each round runs every contender once, in a rotating order, so machine noise hits all alike.

    .venv/bin/python bench/overhead.py [--rounds 300] [--no-server]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import (
    RESULTS,
    ComfyServer,
    boot_executor,
    invert_prompt,
    output_files,
    remove_files,
    server_job,
    summarize,
    table,
    write_report,
)


def measure(
    executor: Any, *, rounds: int = 300, warmup: int = 10, server: bool = True
) -> dict[str, Any]:
    """Run the interleaved rounds on a booted ``executor``; returns the report dict.

    ``server=False`` leaves out the two ``c_*`` contenders (no child process).
    """
    import execution
    from comfyui_runpod.executor.delivery import DeliverySettings
    from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings

    comfy = executor.comfy
    local_dir = Path(tempfile.mkdtemp(prefix="bench-p1-out-"))
    pipeline = Pipeline(
        executor, PipelineSettings(DeliverySettings(local_dir=local_dir), environ={})
    )
    bare = execution.PromptExecutor(
        comfy.server,
        cache_type=execution.CacheType.CLASSIC,
        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0},
    )
    floor = execution.PromptExecutor(
        comfy.server,
        cache_type=execution.CacheType.CLASSIC,
        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0},
    )
    loop = asyncio.new_event_loop()  # like the handler and serve: one long-lived loop
    competitor: ComfyServer | None = None
    session: aiohttp.ClientSession | None = None
    kept: aiohttp.ClientWebSocketResponse | None = None
    kept_id = uuid.uuid4().hex

    def run_bare(color: int) -> Callable[[], None]:
        prompt, prompt_id = invert_prompt(color), str(uuid.uuid4())
        ok, _, outputs, _ = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        assert ok
        bare.execute(prompt, prompt_id, {"client_id": "bench"}, outputs)
        assert bare.success
        files = output_files(bare.history_result["outputs"], comfy.output_dir)
        return lambda: remove_files(files)

    def run_floor(color: int) -> Callable[[], None]:
        prompt, prompt_id = invert_prompt(color), str(uuid.uuid4())
        ok, _, outputs, _ = loop.run_until_complete(
            execution.validate_prompt(prompt_id, prompt, None)
        )
        assert ok
        loop.run_until_complete(floor.execute_async(prompt, prompt_id, {"client_id": "b"}, outputs))
        assert floor.success
        files = output_files(floor.history_result["outputs"], comfy.output_dir)
        return lambda: remove_files(files)

    def run_executor(color: int) -> Callable[[], None]:
        workspace = executor.workspace("bench")
        result = executor.run(invert_prompt(color), workspace)
        assert result.error is None and len(result.files) == 1, result.error
        workspace.cleanup()
        return lambda: None

    def run_pipeline(color: int) -> Callable[[], None]:
        job = {"id": f"bench-{color}", "input": {"workflow": invert_prompt(color)}}
        result = loop.run_until_complete(pipeline.run(job))
        assert "error" not in result and len(result["files"]) == 1, result
        return lambda: shutil.rmtree(local_dir / job["id"], ignore_errors=True)

    def run_server(color: int, *, keep: bool = False) -> Callable[[], None]:
        assert competitor is not None and session is not None
        call = server_job(
            session,
            competitor.base_url,
            invert_prompt(color),
            ws=kept if keep else None,
            client_id=kept_id if keep else None,
        )
        outputs = loop.run_until_complete(call)
        files = output_files(outputs, competitor.output_dir)
        assert len(files) == 1, outputs
        # Files are removed between jobs (untimed) so SaveImage's folder scan stays as
        # cheap on the server as on our side, where each run has its own folder.
        return lambda: remove_files(files)

    contenders: dict[str, Callable[[int], Callable[[], None]]] = {
        "a_bare": run_bare,
        "a_floor": run_floor,
        "b_executor": run_executor,
        "b_pipeline": run_pipeline,
    }
    try:
        if server:
            competitor = ComfyServer(comfy.location.path).start()

            async def connect() -> tuple[aiohttp.ClientSession, Any]:
                client = aiohttp.ClientSession()
                return client, await client.ws_connect(
                    f"{competitor.base_url}/ws?clientId={kept_id}"
                )

            session, kept = loop.run_until_complete(connect())
            contenders["c_server"] = run_server
            contenders["c_server_kept_ws"] = lambda color: run_server(color, keep=True)
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for round_ in range(warmup + rounds):
            shift = round_ % len(names)
            for offset, name in enumerate(names[shift:] + names[:shift]):
                color = (round_ * 7 + offset) % 0xFFFFFF + 1
                began = time.perf_counter()
                cleanup = contenders[name](color)
                elapsed = time.perf_counter() - began
                cleanup()
                if round_ >= warmup:  # warm-up rounds are not counted
                    samples[name].append(elapsed)
    finally:
        if kept is not None:
            loop.run_until_complete(kept.close())
        if session is not None:
            loop.run_until_complete(session.close())
        if competitor is not None:
            competitor.stop()
        loop.close()
        shutil.rmtree(local_dir, ignore_errors=True)

    results = {name: summarize(values) for name, values in samples.items()}
    median = {name: row["median_ms"] for name, row in results.items()}
    ratios = {
        "b_over_a": median["b_pipeline"] / median["a_bare"],
        "b_executor_over_a": median["b_executor"] / median["a_bare"],
        "b_over_a_floor": median["b_pipeline"] / median["a_floor"],
    }
    if server:
        ratios["c_over_b"] = median["c_server"] / median["b_pipeline"]
        ratios["c_kept_ws_over_b"] = median["c_server_kept_ws"] / median["b_pipeline"]
    report: dict[str, Any] = {
        "comfyui": comfy.location.version,
        "device": comfy.device,
        "rounds": rounds,
        "warmup": warmup,
        "results": results,
        "ratios": ratios,
        "targets": {"b_over_a": "<= 1.2", "c_over_b": ">= 5"},
    }
    if competitor is not None:
        report["server_ready_s"] = competitor.ready_s
    return report


def render(report: dict[str, Any]) -> str:
    base = report["results"]["b_pipeline"]["median_ms"]
    rows = [
        (name, row["median_ms"], row["p90_ms"], f"{row['median_ms'] / base:.2f}x")
        for name, row in report["results"].items()
    ]
    ratios = ", ".join(f"{k} = {v:.2f}" for k, v in report["ratios"].items())
    return (
        f"P1 per-job overhead: ComfyUI {report['comfyui']} on {report['device']}, "
        f"{report['rounds']} rounds\n\n"
        + table(["path", "median ms", "p90 ms", "vs b_pipeline"], rows)
        + f"\n\n{ratios}"
    )


def parser() -> argparse.ArgumentParser:
    """The command line (``make bench`` passes flags from ``run.BENCHES``)."""
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--rounds", type=int, default=300)
    cli.add_argument("--warmup", type=int, default=10)
    cli.add_argument("--no-server", action="store_true", help="leave out the c_* paths")
    cli.add_argument("--out", type=Path, default=RESULTS)
    return cli


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-p1-"))
    executor = boot_executor(work)
    try:
        report = measure(
            executor, rounds=args.rounds, warmup=args.warmup, server=not args.no_server
        )
    finally:
        executor.close()
        shutil.rmtree(work, ignore_errors=True)
    print(render(report))
    write_report("overhead", report, args.out)


if __name__ == "__main__":
    main()
