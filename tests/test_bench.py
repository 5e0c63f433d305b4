"""Smoke test of the benchmarks (bench/): every bench's real code path with tiny counts,
on the session's ComfyUI, asserting the JSON they write — never a timing, which would make
the suite flaky on a busy machine. ``make bench`` gives the numbers.

P1 runs with the real ComfyUI server and websocket client (3 rounds), so a change that
breaks the competitor shows up here; P2 (fresh processes) and P3's server half are left to
``make bench`` for time.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from comfyui_runpod.executor import Executor

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` as ``bench_<name>`` (its plain name could shadow others);
    ``bench/`` goes last on ``sys.path`` so that only ``benchlib`` is found there."""
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    module_name = f"bench_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def written(name: str, report: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the report as the bench does and read it back (JSON round trip)."""
    path = bench("benchlib").write_report(name, report, out)
    assert path == out / f"{name}.json"
    data = json.loads(path.read_text())
    assert data["bench"] == name
    assert {"cpus", "platform", "python"} <= data["machine"].keys()
    return data


def assert_stats(row: dict[str, Any], n: int) -> None:
    assert row["n"] == n
    for key in ("median_ms", "p90_ms", "min_ms", "mean_ms"):
        assert isinstance(row[key], float) and math.isfinite(row[key])


def test_p1_overhead_with_the_server_path(executor: Executor, tmp_path: Path) -> None:
    overhead = bench("overhead")
    report = written("overhead", overhead.measure(executor, rounds=3, warmup=1), tmp_path)
    names = {"a_bare", "a_floor", "b_executor", "b_pipeline", "c_server", "c_server_kept_ws"}
    assert set(report["results"]) == names
    for row in report["results"].values():
        assert_stats(row, 3)
    ratios = {"b_over_a", "b_executor_over_a", "b_over_a_floor", "c_over_b", "c_kept_ws_over_b"}
    assert set(report["ratios"]) == ratios
    assert report["server_ready_s"] > 0
    assert "| c_server |" in overhead.render(report)
    leftovers = list(executor.comfy.output_dir.glob("*.png"))
    assert leftovers == []  # the bare executor's files are removed as it goes


def test_p4_soak_leaves_nothing_behind(executor: Executor, tmp_path: Path) -> None:
    soak = bench("soak")
    report = written("soak", soak.measure(executor, jobs=10, every=5, warmup=2), tmp_path)
    assert [c["jobs"] for c in report["checkpoints"]] == [0, 5, 10]
    for checkpoint in report["checkpoints"]:
        assert {"rss_mb", "fds", "threads", "objects", "work_files"} <= checkpoint.keys()
    growth = report["growth"]
    assert {"rss_mb", "fds", "threads", "objects"} <= growth.keys()
    assert growth["work_files"] == 0 and growth["stray_delivered_files"] == 0


def test_p6_runsync_against_the_bare_pipeline(executor: Executor, tmp_path: Path) -> None:
    runsync = bench("runsync")
    report = written("runsync", runsync.measure(executor, rounds=3, warmup=1), tmp_path)
    assert set(report["results"]) == {"pipeline_run", "runsync_http"}
    for row in report["results"].values():
        assert_stats(row, 3)
    assert isinstance(report["added_ms"], float)


def test_p7_models_cache_and_download(
    executor: Executor, tiny_checkpoint: str, tmp_path: Path
) -> None:
    models = bench("models")
    report = written("models", models.measure(executor, rounds=1, downloads=1), tmp_path)
    assert set(report["results"]) == {"b_local_folder", "b_model_cache"}
    for row in report["results"].values():
        assert_stats(row, 1)
    assert report["download"]["ours_mib_s"] > 0 and report["download"]["curl_mib_s"] > 0
    assert "cache/local" in models.render(report)


def test_p5_delivery_tiny(tmp_path: Path) -> None:
    delivery = bench("delivery")
    report = delivery.measure(files=3, size_mb=0.05, repeats=1, latency_ms=5, workers=3)
    report = written("delivery", report, tmp_path)
    assert len(report["medians_s"]) == 4
    assert set(report["speedup"]) == {"loopback", "modelled"}
    assert report["latency_only_ideal_speedup"] == 3


def test_summary_table_reads_every_report(tmp_path: Path) -> None:
    """The ``make bench`` table, from reports of the shapes the benches write."""
    stats = {"n": 1, "median_ms": 2.0, "p90_ms": 3.0, "min_ms": 1.0, "mean_ms": 2.0}
    reports: dict[str, dict[str, Any]] = {
        "overhead": {
            "results": {
                name: stats
                for name in ("a_bare", "b_executor", "b_pipeline", "c_server", "c_server_kept_ws")
            },
            "ratios": {"b_over_a": 1.1, "b_executor_over_a": 1.0, "c_over_b": 2.0},
        },
        "coldstart": {
            "rounds": 1,
            "results": {
                "ours_script": {"median_s": 5.0, "samples_s": [5.0], "boot_median_s": 4.0},
                "ours_cli": {"median_s": 6.0, "samples_s": [6.0]},
                "server": {"median_s": 7.0, "samples_s": [7.0], "ready_median_s": 6.0},
            },
            "ratios": {"server_over_ours": 1.4, "server_over_ours_cli": 1.2},
        },
        "diffusion": {
            "model": "tiny",
            "results": {"ours_pipeline": stats, "c_server": stats},
            "ratios": {"server_over_ours": 1.0},
        },
        "soak": {
            "jobs": 5,
            "growth": {"rss_mb": 1.0, "fds": 0, "work_files": 0, "stray_delivered_files": 0},
        },
        "delivery": {
            "files": 2,
            "mb": 1.0,
            "latency_ms": 80.0,
            "workers": 2,
            "medians_s": {"a": 1.0, "b": 1.0, "c": 2.0, "d": 0.4},
            "speedup": {"loopback": 1.0, "modelled": 5.0},
        },
        "runsync": {
            "results": {"pipeline_run": stats, "runsync_http": stats},
            "ratios": {"runsync_over_pipeline": 1.0},
            "added_ms": 0.0,
        },
    }
    for name, report in reports.items():
        written(name, report, tmp_path)
    markdown, rows = bench("run").summarize(tmp_path)
    benches = ["P1", "P1", "P2", "P2", "P3", "P4", "P5", "P5", "P6"]
    assert [r["bench"] for r in rows] == benches  # no kept-ws ratio: that row is left out
    status = {r["target"]: r["status"] for r in rows}
    assert status["b/a ≤ 1.2"] == "met" and status["c/b ≥ 5"] == "**missed**"
    assert status["server/ours ≥ 2"] == "**missed**"  # P2's 1.4
    assert status["ours faster"] == "**tie** (±2 %)"  # P3's 1.0: a tie is not a win
    assert status["≤ 50 MB / 0 / 0"] == "met" and status["≥ 4×"] == "met"
    assert markdown.count("\n") == len(rows) + 1  # header, rule, one line per row


@pytest.mark.parametrize(
    "name", ["overhead", "coldstart", "diffusion", "soak", "delivery", "runsync", "models"]
)
def test_make_bench_passes_flags_each_bench_accepts(name: str, tmp_path: Path) -> None:
    run = bench("run")
    for args in run.BENCHES[name]:  # the default and the --quick flags
        parsed = bench(name).parser().parse_args([*args, "--out", str(tmp_path)])
        assert parsed.out == tmp_path
