"""P7: models on demand — download throughput of the model cache vs ``curl`` on loopback,
and a job whose model comes from the cache vs the same job with the model already in a
ComfyUI model folder, interleaved in one run.

The model is the tests' tiny SD1.5 checkpoint (a few hundred MB, built by
``tests/tinymodel.py``), served from a loopback HTTP server. The cache path includes what
a real worker does on every download (address check, streaming to ``.partial``, sha256,
rename); the job path includes ``input.models`` handling on every job (folder check,
cache look-up, locks). The two jobs name different files with the same bytes, so ComfyUI
reloads the checkpoint on every job in both: what differs is only where the file is.

    .venv/bin/python bench/models.py [--rounds 8] [--downloads 3]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchlib import RESULTS, ROOT, boot_executor, summarize, table, write_report

sys.path.insert(0, str(ROOT / "tests"))
try:  # the tests' tiny model and its workflow: one definition of each
    from tinymodel import tiny_sd15_path
    from workflows import tiny_sd
finally:
    sys.path.remove(str(ROOT / "tests"))


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def measure(executor: Any, *, rounds: int = 8, downloads: int = 3) -> dict[str, Any]:
    from comfyui_runpod.executor.delivery import DeliverySettings
    from comfyui_runpod.executor.models import ModelCache, ModelSettings, ModelSpec
    from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings

    checkpoint = tiny_sd15_path()
    size = checkpoint.stat().st_size
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    handler = functools.partial(_Quiet, directory=str(checkpoint.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{checkpoint.name}"
    scratch = Path(tempfile.mkdtemp(prefix="bench-models-"))
    try:
        ours, curl = [], []
        for index in range(downloads):
            cache = ModelCache(ModelSettings(scratch / f"cache-{index}", allow_private_urls=True))
            spec = ModelSpec(url, "checkpoints", "tiny.safetensors", digest)
            began = time.perf_counter()
            cache.ensure(spec)
            ours.append(time.perf_counter() - began)
            target = scratch / f"curl-{index}.safetensors"
            began = time.perf_counter()
            subprocess.run(["curl", "-sf", "-o", str(target), url], check=True)
            curl.append(time.perf_counter() - began)
            shutil.rmtree(cache.root)
            target.unlink()

        comfy = executor.comfy
        listed = comfy.folder_paths.folder_names_and_paths["checkpoints"][0]
        before = list(listed)  # restored at the end: the scratch folders go away
        comfy.folder_paths.add_model_folder_path("checkpoints", str(checkpoint.parent))
        settings = PipelineSettings(
            DeliverySettings(local_dir=scratch / "out"),
            environ={},
            models=ModelSettings(scratch / "cache", allow_private_urls=True),
        )
        pipeline = Pipeline(executor, settings)
        model = {"url": url, "folder": "checkpoints", "name": "cached-tiny.safetensors"}
        jobs = {
            "b_local_folder": lambda seed: {"workflow": tiny_sd(checkpoint.name, seed=seed)},
            "b_model_cache": lambda seed: {
                "workflow": tiny_sd(model["name"], seed=seed),
                "models": [model],
            },
        }
        samples: dict[str, list[float]] = {name: [] for name in jobs}
        loop = asyncio.new_event_loop()
        try:
            for round_ in range(rounds + 1):  # round 0 fills the cache and warms up
                for offset, name in enumerate(sorted(jobs, reverse=bool(round_ % 2))):
                    job = {"id": f"{name}-{round_}", "input": jobs[name](round_ * 2 + offset)}
                    began = time.perf_counter()
                    result = loop.run_until_complete(pipeline.run(job))
                    elapsed = time.perf_counter() - began
                    assert "error" not in result, result
                    if round_:
                        samples[name].append(elapsed)
        finally:
            loop.close()
            listed[:] = before
            comfy.folder_paths.filename_list_cache.pop("checkpoints", None)  # names them
    finally:
        server.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    mb = size / 1_048_576
    throughput = {
        "ours_mib_s": mb / statistics.median(ours),
        "curl_mib_s": mb / statistics.median(curl),
    }
    results = {name: summarize(values) for name, values in samples.items()}
    return {
        "model_mib": round(mb, 1),
        "download": {
            **throughput,
            "ours_over_curl": throughput["ours_mib_s"] / throughput["curl_mib_s"],
        },
        "results": results,
        "ratios": {
            "cache_over_local": results["b_model_cache"]["median_ms"]
            / results["b_local_folder"]["median_ms"]
        },
        "targets": {"cache_over_local": "<= 1.05"},
    }


def render(report: dict[str, Any]) -> str:
    download = report["download"]
    rows = [(name, row["median_ms"], row["p90_ms"]) for name, row in report["results"].items()]
    return (
        f"P7 models: {report['model_mib']} MiB checkpoint over loopback\n\n"
        + table(
            ["download", "MiB/s"],
            [
                ("ours (cache: check, sha256, rename)", download["ours_mib_s"]),
                ("curl -o FILE", download["curl_mib_s"]),
            ],
        )
        + f"\n\nours/curl = {download['ours_over_curl']:.2f}\n\n"
        + table(["job", "median ms", "p90 ms"], rows)
        + f"\n\ncache/local = {report['ratios']['cache_over_local']:.3f} (target <= 1.05)"
    )


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--rounds", type=int, default=8)
    cli.add_argument("--downloads", type=int, default=3)
    cli.add_argument("--out", type=Path, default=RESULTS)
    return cli


def main() -> int:
    args = parser().parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-models-work-"))
    executor = boot_executor(work)
    try:
        report = measure(executor, rounds=args.rounds, downloads=args.downloads)
    finally:
        executor.close()
        shutil.rmtree(work, ignore_errors=True)
    write_report("models", report, args.out)
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
