"""P5: uploading 20 × 2 MB outputs to an S3 API (moto server on loopback), parallel vs
one by one, through the project's one S3 module. Prints a markdown table, writes JSON.

Loopback has no latency to hide, so a second pair of runs goes through the tests' S3
proxy with a per-PUT delay standing in for the round trips of a real bucket (a modelled
network, stated as such in the output).

    .venv/bin/python bench/delivery.py [--files 20] [--size-mb 2] [--latency-ms 80]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from comfyui_runpod.delivery import DeliverySettings
from comfyui_runpod.storage import BucketConfig, upload_files


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--size-mb", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=80.0)
    parser.add_argument("--workers", type=int, default=DeliverySettings.upload_workers)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    cfg = BucketConfig(f"http://127.0.0.1:{port}", "bench-id", "bench-secret", "bench")
    import boto3

    boto3.client(
        "s3",
        endpoint_url=cfg.endpoint_url,
        aws_access_key_id="x",
        aws_secret_access_key="x",
        region_name="us-east-1",
    ).create_bucket(Bucket="bench")

    folder = Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    files = []
    for index in range(args.files):
        path = folder / f"out_{index:05d}.png"
        path.write_bytes(os.urandom(int(args.size_mb * 1024 * 1024)))
        files.append(path)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from s3server import S3Proxy, S3Server

    upstream = S3Server(cfg.endpoint_url, "127.0.0.1", port)
    medians: dict[str, float] = {}
    with S3Proxy(upstream, put_delay_s=args.latency_ms / 1000) as proxy:
        slow = BucketConfig(proxy.endpoint_url, "bench-id", "bench-secret", "bench")
        setups = {"loopback": cfg, f"+{args.latency_ms:g} ms per PUT (modelled)": slow}
        for label, target in setups.items():
            for workers in (1, args.workers):
                runs = []
                for repeat in range(args.repeats):
                    began = time.perf_counter()
                    upload_files(target, files, f"run-{repeat}-{workers}", max_workers=workers)
                    runs.append(time.perf_counter() - began)
                medians[f"{label}, {workers} worker{'s' * (workers > 1)}"] = statistics.median(runs)
    server.stop()

    print(f"{args.files} x {args.size_mb:g} MB to a moto S3 server, {args.repeats} runs each\n")
    print("| network, upload workers | median s |\n|---|---|")
    for name, value in medians.items():
        print(f"| {name} | {value:.2f} |")
    values = list(medians.values())
    speedups = {"loopback": values[0] / values[1], "modelled": values[2] / values[3]}
    print(
        f"\nparallel speed-up: loopback {speedups['loopback']:.1f}x, "
        f"with latency {speedups['modelled']:.1f}x"
    )
    report = {"medians_s": medians, "speedup": speedups, "files": args.files, "mb": args.size_mb}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "delivery.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
