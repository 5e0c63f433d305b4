"""P6: the local endpoint — ``POST /v2/<id>/runsync`` through ``comfyui-runpod serve``'s
server vs the bare ``Pipeline.run``, interleaved in one run.

The endpoint is the real aiohttp application (``endpoint.make_app`` + ``endpoint.Server``)
on a loopback port, on its own event-loop thread as ``serve`` runs it, sharing the one
booted ComfyUI with the bare pipeline; the client is aiohttp with a kept-alive connection
(as ``runpod.Endpoint`` keeps one). The difference is what the HTTP API, the job queue
and the status object add to a job.

    .venv/bin/python bench/runsync.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import RESULTS, boot_executor, invert_prompt, summarize, table, write_report


def measure(executor: Any, *, rounds: int = 200, warmup: int = 10) -> dict[str, Any]:
    """Interleaved rounds on a booted ``executor``; returns the report dict."""
    from comfyui_runpod.executor.delivery import DeliverySettings
    from comfyui_runpod.executor.endpoint import Server, ServeSettings, make_app
    from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings

    folder = Path(tempfile.mkdtemp(prefix="bench-p6-"))

    def pipeline_for(name: str) -> Pipeline:
        delivery = DeliverySettings(local_dir=folder / name)
        return Pipeline(executor, PipelineSettings(delivery, environ={}))

    bare = pipeline_for("bare")
    settings = ServeSettings(host="127.0.0.1", port=0)
    server_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=server_loop.run_forever, name="bench-serve", daemon=True)
    loop = asyncio.new_event_loop()
    server: Server | None = None
    session: aiohttp.ClientSession | None = None
    try:
        thread.start()

        async def boot() -> tuple[Server, str]:
            started = Server(make_app(pipeline_for("serve"), settings), "127.0.0.1", 0)
            return started, await started.start()

        server, url = asyncio.run_coroutine_threadsafe(boot(), server_loop).result(30)
        runsync_url = f"{url}{settings.prefix}/runsync"
        session = loop.run_until_complete(_session())

        def run_bare(color: int) -> Callable[[], None]:
            job = {"id": f"p6-{color}", "input": {"workflow": invert_prompt(color)}}
            result = loop.run_until_complete(bare.run(job))
            assert "error" not in result and len(result["files"]) == 1, result
            return lambda: shutil.rmtree(folder / "bare" / job["id"], ignore_errors=True)

        async def post(color: int) -> dict[str, Any]:
            assert session is not None
            body = {"input": {"workflow": invert_prompt(color)}}
            async with session.post(runsync_url, json=body) as response:
                return await response.json()

        def run_runsync(color: int) -> Callable[[], None]:
            answer = loop.run_until_complete(post(color))
            assert answer.get("status") == "COMPLETED", answer
            assert len(answer["output"]["files"]) == 1, answer
            return lambda: None  # the endpoint deletes its files when it stops

        contenders = {"pipeline_run": run_bare, "runsync_http": run_runsync}
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for round_ in range(warmup + rounds):
            shift = round_ % len(names)
            for offset, name in enumerate(names[shift:] + names[:shift]):
                color = (round_ * 5 + offset) % 0xFFFFFF + 1
                began = time.perf_counter()
                cleanup = contenders[name](color)
                elapsed = time.perf_counter() - began
                cleanup()
                if round_ >= warmup:
                    samples[name].append(elapsed)
    finally:
        if session is not None:
            loop.run_until_complete(session.close())
        loop.close()
        if server is not None:
            asyncio.run_coroutine_threadsafe(server.stop(), server_loop).result(30)
        server_loop.call_soon_threadsafe(server_loop.stop)
        thread.join(10)
        server_loop.close()
        shutil.rmtree(folder, ignore_errors=True)

    results = {name: summarize(values) for name, values in samples.items()}
    bare_ms = results["pipeline_run"]["median_ms"]
    runsync_ms = results["runsync_http"]["median_ms"]
    return {
        "rounds": rounds,
        "warmup": warmup,
        "results": results,
        "ratios": {"runsync_over_pipeline": runsync_ms / bare_ms},
        "added_ms": runsync_ms - bare_ms,
    }


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


def render(report: dict[str, Any]) -> str:
    rows = [(n, r["median_ms"], r["p90_ms"]) for n, r in report["results"].items()]
    return (
        f"P6 endpoint: /runsync vs Pipeline.run, {report['rounds']} rounds\n\n"
        + table(["path", "median ms", "p90 ms"], rows)
        + f"\n\n/runsync adds {report['added_ms']:.2f} ms "
        f"({report['ratios']['runsync_over_pipeline']:.2f}x)"
    )


def parser() -> argparse.ArgumentParser:
    """The command line (``make bench`` passes flags from ``run.BENCHES``)."""
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--rounds", type=int, default=200)
    cli.add_argument("--warmup", type=int, default=10)
    cli.add_argument("--out", type=Path, default=RESULTS)
    return cli


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-p6-work-"))
    executor = boot_executor(work)
    try:
        report = measure(executor, rounds=args.rounds, warmup=args.warmup)
    finally:
        executor.close()
        shutil.rmtree(work, ignore_errors=True)
    print(render(report))
    write_report("runsync", report, args.out)


if __name__ == "__main__":
    main()
