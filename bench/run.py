"""``make bench``: run P1–P7, each in its own fresh process, then print one markdown table
of where every target stands (and write it as ``bench/results/summary.{json,md}``).

Each bench is a separate process so that one's ComfyUI, model or leaked state cannot tilt
another's numbers; inside each, the contenders run interleaved. ComfyUI's own log of each
bench goes to ``bench/results/<bench>.log``.

    .venv/bin/python bench/run.py [--quick] [--only overhead,soak] [--summary-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import BENCH, RESULTS, machine, table

#: bench → (its arguments by default, with --quick). Defaults keep `make bench` ~5 min on
#: 2 CPU cores; pass bigger counts to a script itself for more precise numbers.
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "overhead": (["--rounds", "300"], ["--rounds", "30", "--warmup", "3"]),
    "coldstart": (["--rounds", "3"], ["--rounds", "1"]),
    "diffusion": (["--rounds", "20"], ["--rounds", "3", "--warmup", "1"]),
    "soak": (["--jobs", "500", "--every", "100"], ["--jobs", "50", "--every", "10"]),
    "delivery": ([], ["--repeats", "1", "--files", "8", "--size-mb", "0.5"]),
    "runsync": (["--rounds", "200"], ["--rounds", "20", "--warmup", "3"]),
    "models": (["--rounds", "8"], ["--rounds", "1", "--downloads", "1"]),
}


def run_benches(names: list[str], quick: bool, out: Path) -> dict[str, float]:
    """Run each named bench script; returns seconds per bench. Stops at the first failure."""
    out.mkdir(parents=True, exist_ok=True)
    took = {}
    for name in names:
        args = BENCHES[name][1 if quick else 0]
        command = [sys.executable, str(BENCH / f"{name}.py"), *args, "--out", str(out)]
        print(f"## {name}: {' '.join(args) or '(defaults)'}", flush=True)
        began = time.perf_counter()
        with open(out / f"{name}.log", "wb") as log:
            done = subprocess.run(command, stderr=log, check=False)
        took[name] = time.perf_counter() - began
        print(f"({took[name]:.0f} s)\n", flush=True)
        if done.returncode != 0:
            tail = (out / f"{name}.log").read_text(errors="replace").splitlines()[-30:]
            raise SystemExit(f"bench {name} failed ({done.returncode}):\n" + "\n".join(tail))
    return took


def _load(out: Path, name: str) -> dict[str, Any] | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _status(ok: bool | str | None) -> str:
    if isinstance(ok, str):
        return ok
    return "n/a" if ok is None else "met" if ok else "**missed**"


#: "Ours faster" needs a margin: within ±2 % the two paths are a tie on this machine.
TIE = 0.02


def _faster(ratio: float | None) -> bool | str | None:
    """Status of an "ours faster" target from ``theirs / ours``."""
    if ratio is None:
        return None
    if abs(ratio - 1) < TIE:
        return "**tie** (±2 %)"
    return ratio > 1


def _ms(row: dict[str, float]) -> str:
    return f"{row['median_ms']:.2f} ms (p90 {row['p90_ms']:.2f})"


def summarize(out: Path = RESULTS) -> tuple[str, list[dict[str, Any]]]:
    """The combined table from whatever ``<out>/*.json`` exist; also returns its rows."""
    rows: list[dict[str, Any]] = []

    def add(
        bench: str, measure: str, ours: str, other: str, ratio: str, target: str, ok: Any
    ) -> None:
        rows.append(
            {
                "bench": bench,
                "measure": measure,
                "ours": ours,
                "other": other,
                "ratio": ratio,
                "target": target,
                "status": _status(ok),
            }
        )

    if p1 := _load(out, "overhead"):
        res, ratios = p1["results"], p1["ratios"]
        b_a = ratios["b_over_a"]
        add(
            "P1",
            "per job: pipeline (b) vs bare PromptExecutor (a)",
            _ms(res["b_pipeline"]),
            _ms(res["a_bare"]),
            f"b/a {b_a:.2f}",
            "b/a ≤ 1.2",
            b_a <= 1.2,
        )
        if "b_over_a_floor" in ratios:
            floor = ratios["b_over_a_floor"]
            add(
                "P1",
                "… vs the same on one kept loop (execute_async)",
                _ms(res["b_pipeline"]),
                _ms(res["a_floor"]),
                f"b/a {floor:.2f}",
                "(info)",
                None,
            )
        if "c_over_b" in ratios:
            c_b = ratios["c_over_b"]
            add(
                "P1",
                "per job: server + new ws per job (c) vs pipeline (b)",
                _ms(res["b_pipeline"]),
                _ms(res["c_server"]),
                f"c/b {c_b:.2f}",
                "c/b ≥ 5",
                c_b >= 5,
            )
        if "c_kept_ws_over_b" in ratios:
            kept = ratios["c_kept_ws_over_b"]
            add(
                "P1",
                "per job: server + one kept ws vs pipeline (b)",
                _ms(res["b_pipeline"]),
                _ms(res["c_server_kept_ws"]),
                f"c/b {kept:.2f}",
                "(best case of c)",
                None,
            )
    if p2 := _load(out, "coldstart"):
        res, ratio = p2["results"], p2["ratios"]["server_over_ours"]
        add(
            "P2",
            "process start → first result",
            f"{res['ours_script']['median_s']:.2f} s",
            f"{res['server']['median_s']:.2f} s",
            f"server/ours {ratio:.2f}",
            "server/ours ≥ 2",
            ratio >= 2.0,
        )
        cli = p2["ratios"]["server_over_ours_cli"]
        add(
            "P2",
            "… ours as `comfyui-runpod run`, until exit",
            f"{res['ours_cli']['median_s']:.2f} s",
            f"{res['server']['median_s']:.2f} s",
            f"server/ours {cli:.2f}",
            "(info)",
            None,
        )
    if p3 := _load(out, "diffusion"):
        res = p3["results"]
        ratio = p3["ratios"].get("server_over_ours")
        add(
            "P3",
            f"warm job, {p3['model']}",
            _ms(res["ours_pipeline"]),
            _ms(res["c_server"]) if "c_server" in res else "—",
            f"server/ours {ratio:.2f}" if ratio else "—",
            "ours faster",
            _faster(ratio),
        )
    if p4 := _load(out, "soak"):
        g = p4["growth"]
        files = g["work_files"] + g["stray_delivered_files"]
        add(
            "P4",
            f"soak, {p4['jobs']} jobs: RSS / fds / files left",
            f"{g['rss_mb']:+.1f} MB / {g['fds']:+d} / {files}",
            "—",
            "—",
            "≤ 50 MB / 0 / 0",
            g["rss_mb"] <= 50 and g["fds"] <= 0 and files == 0,
        )
    if p5 := _load(out, "delivery"):
        med = list(p5["medians_s"].values())
        sp = p5["speedup"]
        add(
            "P5",
            f"{p5['files']} × {p5['mb']:g} MB to S3, modelled {p5['latency_ms']:g} ms/PUT",
            f"{med[3]:.2f} s ({p5['workers']} workers)",
            f"{med[2]:.2f} s (1 worker)",
            f"{sp['modelled']:.1f}×",
            "≥ 4×",
            sp["modelled"] >= 4,
        )
        add(
            "P5",
            "… on loopback (no latency to hide)",
            f"{med[1]:.2f} s",
            f"{med[0]:.2f} s",
            f"{sp['loopback']:.1f}×",
            "(info)",
            None,
        )
    if p6 := _load(out, "runsync"):
        res = p6["results"]
        add(
            "P6",
            "per job: `/runsync` (serve) vs Pipeline.run",
            _ms(res["runsync_http"]),
            _ms(res["pipeline_run"]),
            f"+{p6['added_ms']:.2f} ms",
            "(info)",
            None,
        )

    if p7 := _load(out, "models"):
        res, ratio = p7["results"], p7["ratios"]["cache_over_local"]
        add(
            "P7",
            "per job: tiny model from the model cache vs a ComfyUI model folder",
            _ms(res["b_model_cache"]),
            _ms(res["b_local_folder"]),
            f"{ratio:.3f}",
            "≤ 1.05",
            ratio <= 1.05,
        )
        download = p7["download"]
        add(
            "P7",
            f"download of {p7['model_mib']} MiB on loopback vs curl",
            f"{download['ours_mib_s']:.0f} MiB/s",
            f"{download['curl_mib_s']:.0f} MiB/s",
            f"{download['ours_over_curl']:.2f}",
            "(info)",
            None,
        )

    headers = ["", "measure", "ours", "compared with", "ratio", "target", "status"]
    markdown = table(headers, [list(r.values()) for r in rows])
    return markdown, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run)")
    parser.add_argument("--only", help="comma-separated subset of: " + ",".join(BENCHES))
    parser.add_argument("--summary-only", action="store_true", help="only re-print the table")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = set(names) - set(BENCHES)
    if unknown:
        parser.error(f"unknown bench(es): {', '.join(sorted(unknown))}")
    took = {} if args.summary_only else run_benches(names, args.quick, args.out)
    markdown, rows = summarize(args.out)
    info = machine()
    print(f"# Summary ({info['cpus']} CPUs, {info['platform']})\n\n{markdown}")
    (args.out / "summary.md").write_text(markdown + "\n")
    summary = {"machine": info, "seconds": took, "quick": args.quick, "rows": rows}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
