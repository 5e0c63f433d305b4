"""P5: delivery — 20 × 2 MB outputs to an S3 API (moto server on loopback), parallel vs
one by one, through the project's one S3 module. Prints a markdown table, writes JSON.

Loopback has no latency to hide, so a second pair of runs goes through the tests' S3
proxy with a per-PUT delay standing in for the round trips of a real bucket (a modelled
network, stated as such in the output). Both the S3 server and the proxy are Python in
this process: their CPU time is a floor that no number of upload threads removes, so the
report also gives the two floors (latency alone, and the parallel loopback time).

A last row delivers the same files as a job with ``input.toUrls`` would (``deliver``, one
presigned PUT per file, no keys on the worker) through the same modelled proxy, beside
``tobucket``'s parallel run there.

    .venv/bin/python bench/delivery.py [--files 20] [--size-mb 2] [--latency-ms 80]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import RESULTS, free_port, table, write_report
from comfyui_runpod.executor.delivery import DeliverySettings, deliver
from comfyui_runpod.executor.outputs import OutputFile
from comfyui_runpod.executor.request import JobRequest
from comfyui_runpod.nodes.storage import BucketConfig, upload_files


def measure(
    *,
    files: int = 20,
    size_mb: float = 2.0,
    repeats: int = 3,
    latency_ms: float = 80.0,
    workers: int = DeliverySettings.upload_workers,
) -> dict[str, Any]:
    """Upload ``files`` random files, one by one and with ``workers`` threads, to a moto
    server on loopback and through the latency proxy; returns the report dict."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    folder = Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    medians: dict[str, float] = {}
    to_urls_runs: list[float] = []
    try:
        cfg = BucketConfig(f"http://127.0.0.1:{port}", "bench-id", "bench-secret", "bench")
        import boto3

        boto3.client(
            "s3",
            endpoint_url=cfg.endpoint_url,
            aws_access_key_id="x",
            aws_secret_access_key="x",
            region_name="us-east-1",
        ).create_bucket(Bucket="bench")

        paths = []
        for index in range(files):
            path = folder / f"out_{index:05d}.png"
            path.write_bytes(os.urandom(int(size_mb * 1024 * 1024)))
            paths.append(path)

        tests = str(Path(__file__).resolve().parent.parent / "tests")
        sys.path.insert(0, tests)
        try:
            from s3server import S3Proxy, S3Server
        finally:
            sys.path.remove(tests)

        upstream = S3Server(cfg.endpoint_url, "127.0.0.1", port)
        with S3Proxy(upstream, put_delay_s=latency_ms / 1000) as proxy:
            slow = BucketConfig(proxy.endpoint_url, "bench-id", "bench-secret", "bench")
            setups = {"loopback": cfg, f"+{latency_ms:g} ms per PUT (modelled)": slow}
            for label, target in setups.items():
                for count in (1, workers):
                    runs = []
                    for repeat in range(repeats):
                        began = time.perf_counter()
                        upload_files(target, paths, f"run-{repeat}-{count}", max_workers=count)
                        runs.append(time.perf_counter() - began)
                    medians[f"{label}, {count} worker{'s' * (count > 1)}"] = statistics.median(runs)
            signer = boto3.client(
                "s3",
                endpoint_url=proxy.endpoint_url,
                aws_access_key_id="bench-id",
                aws_secret_access_key="bench-secret",
                region_name="us-east-1",
            )
            outputs = [OutputFile(path, "1", "images", path.name, "") for path in paths]
            settings = DeliverySettings(local_dir=folder / "local", upload_workers=workers)
            for repeat in range(repeats):
                urls = [
                    signer.generate_presigned_url(
                        "put_object",
                        Params={"Bucket": "bench", "Key": f"urls-{repeat}/{path.name}"},
                        ExpiresIn=600,
                    )
                    for path in paths
                ]
                job = JobRequest(f"urls-{repeat}", None, to_urls=urls, allow_private_urls=True)
                began = time.perf_counter()
                deliver(job, outputs, settings=settings, job_dir=folder)
                to_urls_runs.append(time.perf_counter() - began)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    values = list(medians.values())
    waves = -(-files // workers)
    return {
        "files": files,
        "mb": size_mb,
        "repeats": repeats,
        "workers": workers,
        "latency_ms": latency_ms,
        "medians_s": medians,
        "speedup": {"loopback": values[0] / values[1], "modelled": values[2] / values[3]},
        # What parallelism could give if the modelled latency were the only cost.
        "latency_only_ideal_speedup": files / waves,
        # Two floors of the parallel modelled run: the latency of its waves of PUTs, and
        # the same uploads with no latency (the CPU of client, proxy and moto on this box).
        "floors_s": {"latency": waves * latency_ms / 1000, "loopback_parallel": values[1]},
        # input.toUrls (presigned PUTs, no keys) vs tobucket, both parallel, modelled latency.
        "to_urls": {"median_s": statistics.median(to_urls_runs), "tobucket_median_s": values[3]},
        "targets": {"speedup": ">= 4"},
    }


def render(report: dict[str, Any]) -> str:
    rows = [(name, value) for name, value in report["medians_s"].items()]
    modelled = f"+{report['latency_ms']:g} ms per PUT (modelled)"
    workers = f"{report['workers']} workers"
    rows.append((f"{modelled}, {workers}, input.toUrls", report["to_urls"]["median_s"]))
    speedup = report["speedup"]
    return (
        f"P5 delivery: {report['files']} x {report['mb']:g} MB to a moto S3 server, "
        f"{report['repeats']} runs each\n\n"
        + table(["network, upload workers", "median s"], rows)
        + f"\n\nparallel speed-up: loopback {speedup['loopback']:.1f}x, with latency "
        f"{speedup['modelled']:.1f}x (latency alone would allow "
        f"{report['latency_only_ideal_speedup']:.1f}x)"
    )


def parser() -> argparse.ArgumentParser:
    """The command line (``make bench`` passes flags from ``run.BENCHES``)."""
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--files", type=int, default=20)
    cli.add_argument("--size-mb", type=float, default=2.0)
    cli.add_argument("--repeats", type=int, default=3)
    cli.add_argument("--latency-ms", type=float, default=80.0)
    cli.add_argument("--workers", type=int, default=DeliverySettings.upload_workers)
    cli.add_argument("--out", type=Path, default=RESULTS)
    return cli


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    report = measure(
        files=args.files,
        size_mb=args.size_mb,
        repeats=args.repeats,
        latency_ms=args.latency_ms,
        workers=args.workers,
    )
    print(render(report))
    write_report("delivery", report, args.out)


if __name__ == "__main__":
    main()
