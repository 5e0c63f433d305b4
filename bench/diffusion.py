"""P3: the tiny diffusion model (SD1.5 layout, random weights, 2 steps, 64×64): warm
per-job time, ours (``Pipeline.run``) vs the server path, interleaved in one run.

The checkpoint is built by ``tests/tinymodel.py`` (cached outside the repository) and
reaches both sides the same way: one ``extra_model_paths.yaml``, loaded by our executor
with ComfyUI's own ``load_extra_path_config`` and given to the server as
``--extra-model-paths-config``. Warm-up jobs (not counted) load the model on both sides;
every counted job has a new seed, so sampler, decoder and saver run each time.

    .venv/bin/python bench/diffusion.py [--rounds 20] [--steps 2] [--no-server]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import (
    RESULTS,
    ROOT,
    ComfyServer,
    boot_executor,
    checkpoint_yaml,
    output_files,
    remove_files,
    server_job,
    summarize,
    table,
    write_report,
)

sys.path.insert(0, str(ROOT / "tests"))
try:  # the tests' tiny model and its workflow: one definition of each
    from tinymodel import tiny_sd15_path
    from workflows import tiny_sd
finally:
    sys.path.remove(str(ROOT / "tests"))


def tiny_checkpoint() -> Path:
    """The tests' tiny SD1.5 checkpoint (built on first use; ComfyUI must be booted)."""
    return tiny_sd15_path()


def measure(
    executor: Any,
    checkpoint: Path,
    *,
    rounds: int = 20,
    warmup: int = 2,
    steps: int = 2,
    server: bool = True,
) -> dict[str, Any]:
    """Interleaved warm jobs on a booted ``executor``; ``server=False``: ours only."""
    import utils.extra_config
    from comfyui_runpod.executor.delivery import DeliverySettings
    from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings

    folder = Path(tempfile.mkdtemp(prefix="bench-p3-"))
    yaml_path = checkpoint_yaml(folder, checkpoint.parent)
    utils.extra_config.load_extra_path_config(str(yaml_path))
    pipeline = Pipeline(
        executor, PipelineSettings(DeliverySettings(local_dir=folder / "out"), environ={})
    )
    loop = asyncio.new_event_loop()
    competitor: ComfyServer | None = None
    session: aiohttp.ClientSession | None = None

    def ours(seed: int) -> Callable[[], None]:
        workflow = tiny_sd(checkpoint.name, seed=seed, steps=steps)
        job = {"id": f"p3-{seed}", "input": {"workflow": workflow}}
        result = loop.run_until_complete(pipeline.run(job))
        assert "error" not in result and len(result["files"]) == 1, result
        return lambda: shutil.rmtree(folder / "out" / job["id"], ignore_errors=True)

    def theirs(seed: int) -> Callable[[], None]:
        assert competitor is not None and session is not None
        prompt = tiny_sd(checkpoint.name, seed=seed, steps=steps)
        outputs = loop.run_until_complete(server_job(session, competitor.base_url, prompt))
        files = output_files(outputs, competitor.output_dir)
        assert len(files) == 1, outputs
        return lambda: remove_files(files)

    contenders: dict[str, Callable[[int], Callable[[], None]]] = {"ours_pipeline": ours}
    try:
        if server:
            competitor = ComfyServer(executor.comfy.location.path, [yaml_path]).start()
            session = loop.run_until_complete(_session())
            contenders["c_server"] = theirs
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for round_ in range(warmup + rounds):
            shift = round_ % len(names)
            for offset, name in enumerate(names[shift:] + names[:shift]):
                began = time.perf_counter()
                cleanup = contenders[name](1000 + round_ * 10 + offset)
                elapsed = time.perf_counter() - began
                cleanup()
                if round_ >= warmup:
                    samples[name].append(elapsed)
    finally:
        if session is not None:
            loop.run_until_complete(session.close())
        if competitor is not None:
            competitor.stop()
        loop.close()
        shutil.rmtree(folder, ignore_errors=True)

    results = {name: summarize(values) for name, values in samples.items()}
    report: dict[str, Any] = {
        "comfyui": executor.comfy.location.version,
        "device": executor.comfy.device,
        "model": f"tiny SD1.5 ({checkpoint.name}), {steps} steps, 64x64",
        "rounds": rounds,
        "warmup": warmup,
        "results": results,
        "ratios": {},
        "targets": {"server_over_ours": "> 1 (ours faster)"},
    }
    if server:
        report["ratios"]["server_over_ours"] = (
            results["c_server"]["median_ms"] / results["ours_pipeline"]["median_ms"]
        )
    return report


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


def render(report: dict[str, Any]) -> str:
    rows = [(n, r["median_ms"], r["p90_ms"]) for n, r in report["results"].items()]
    ratios = ", ".join(f"{k} = {v:.2f}" for k, v in report["ratios"].items())
    return (
        f"P3 {report['model']}, {report['rounds']} warm jobs each\n\n"
        + table(["path", "median ms", "p90 ms"], rows)
        + (f"\n\n{ratios}" if ratios else "")
    )


def parser() -> argparse.ArgumentParser:
    """The command line (``make bench`` passes flags from ``run.BENCHES``)."""
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--rounds", type=int, default=20)
    cli.add_argument("--warmup", type=int, default=2)
    cli.add_argument("--steps", type=int, default=2)
    cli.add_argument("--no-server", action="store_true")
    cli.add_argument("--out", type=Path, default=RESULTS)
    return cli


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-p3-work-"))
    executor = boot_executor(work)
    try:
        report = measure(
            executor,
            tiny_checkpoint(),
            rounds=args.rounds,
            warmup=args.warmup,
            steps=args.steps,
            server=not args.no_server,
        )
    finally:
        executor.close()
        shutil.rmtree(work, ignore_errors=True)
    print(render(report))
    write_report("diffusion", report, args.out)


if __name__ == "__main__":
    main()
