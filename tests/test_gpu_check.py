"""``make gpu-check`` without a GPU: what CI can run of it, so that the script cannot rot
before a session is lent a GPU.

- the plain invocation on a machine without CUDA: one line, exit 0;
- the ``--cpu`` dry run: every step, on the CPU, and the report it writes;
- the hard time limit, and the pieces the GPU run relies on that the dry run stands in for
  (the full-size SD1.5 layout, the bundle's wheel plan, the test-suite summary).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from comfyui_runpod.executor import Executor

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
STEPS = [
    "environment",
    "test_suite",
    "boot",
    "models",
    "server",
    "perf_tiny",
    "perf_full",
    "first_job_warmup",
    "cancel",
    "deadline",
    "out_of_memory",
]


def gpu_check(*args: str, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "OUT"}
    environ.update(env)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=environ,
        check=False,
    )


def test_without_cuda_it_says_so_in_one_line_and_exits_0() -> None:
    done = gpu_check(timeout=120, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("\n") == 1
    assert done.stdout.startswith("gpu-check: no CUDA device here")
    assert "--cpu" in done.stdout


@pytest.mark.slow
def test_cpu_dry_run_passes_every_step_and_reports(tmp_path: Path) -> None:
    done = gpu_check("--cpu", "--out", str(tmp_path), timeout=600)
    log = (tmp_path / "gpu_check.log").read_text(errors="replace")[-3000:]
    assert done.returncode == 0, done.stdout[-3000:] + log

    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["bench"] == "gpu_check" and report["mode"] == "cpu dry run"
    assert report["ok"] is True and report["hard_limit_hit"] is False
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEPS
    assert {s["status"] for s in steps.values()} == {"passed"}
    assert report["environment"]["device"] == "cpu"

    suite = steps["test_suite"]["data"]
    assert suite["device"] == "cpu" and suite["exit_code"] == 0
    assert suite["passed"] == 4 and suite["failed"] == 0 and suite["missing_on_device"] == []
    for label in ("perf_tiny", "perf_full"):
        perf = steps[label]["data"]
        assert set(perf["cold_s"]) == {"ours", "server"}
        assert set(perf["warm"]) == {"ours", "server"}
        assert perf["warm"]["ours"]["n"] == perf["rounds"] == 2
        assert set(perf["ratios"]) == {"warm_server_over_ours", "cold_server_over_ours"}
        assert "vram_peak_gib" not in perf  # CUDA only
    first = steps["first_job_warmup"]["data"]
    assert first["with"]["warmup_s"] > 0 and "warmup_s" not in first["without"]
    assert first["with"]["first_job_s"] > 0 and first["without"]["first_job_s"] > 0
    assert steps["cancel"]["data"]["error"].startswith("cancelled: ")
    assert steps["deadline"]["data"]["error"].startswith("timeout: execution exceeded 1.5s")
    oom = steps["out_of_memory"]["data"]
    assert oom["expected"] == "execution_failed"  # the CPU allocator raises RuntimeError
    assert oom["error"].startswith("execution_failed: node 2 (TestAllocate)")
    for name in ("cancel", "deadline", "out_of_memory"):
        assert steps[name]["data"]["next_job_s"] > 0  # the job after the failure ran

    markdown = (tmp_path / "gpu_check.md").read_text()
    assert markdown.strip() in done.stdout  # printed at the end
    assert "| out_of_memory | passed |" in markdown
    assert "## First job of a fresh worker" in markdown
    # What the device tool brings back: at most 8 plain files, names of letters, digits,
    # '.', '_' and '-'.
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in tmp_path.iterdir())
    assert {"gpu_check.json", "gpu_check.md", "gpu_check.log", "pytest.log"} <= set(files)


def test_hard_time_limit_writes_the_report_and_exits_3(tmp_path: Path) -> None:
    """A step stuck past ``--time-limit``: the report says which, the rest are not run."""
    stuck = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(SCRIPT.parent)!r})
        import gpu_check
        gpu_check.RESERVE_S = 0  # else a limit this short leaves no step a budget
        gpu_check.STEPS["environment"] = lambda check, budget: time.sleep(60)
        sys.exit(gpu_check.main(sys.argv[1:]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", stuck, "--cpu", "--out", str(tmp_path), "--time-limit", "12"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 3, done.stdout + done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["hard_limit_hit"] is True and report["ok"] is False
    statuses = [(s["name"], s["status"]) for s in report["steps"]]
    assert statuses[0] == ("environment", "failed")
    assert [name for name, _ in statuses] == STEPS
    assert {status for _, status in statuses[1:]} == {"not_run"}
    assert "hard limit reached" in done.stdout


def test_full_size_layout_is_sd15_with_its_real_unet(executor: Executor) -> None:
    """What the GPU run builds (the dry run does not): ComfyUI detects it as SD1.5."""
    import tinymodel

    tinymodel.check_detected_as_sd15(full=True)
    full, tiny = tinymodel.parameter_count(full=True), tinymodel.parameter_count()
    assert full["unet"] == 859_520_964  # SD1.5's UNet
    assert full["vae"] == tiny["vae"] and full["clip"] == tiny["clip"]


def test_junit_summary_sets_device_packages_apart(tmp_path: Path) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    xml = tmp_path / "junit.xml"
    xml.write_text(
        """<testsuites><testsuite>
        <testcase classname="tests.test_pipeline" name="test_ok"/>
        <testcase classname="tests.test_pipeline" name="test_bucket">
          <error message="failed on setup">ModuleNotFoundError: No module named 'moto'</error>
        </testcase>
        <testcase classname="tests.test_serve" name="test_sdk">
          <failure message="ModuleNotFoundError: No module named 'runpod'">...</failure>
        </testcase>
        <testcase classname="tests.test_executor" name="test_bad">
          <failure message="AssertionError: assert 'cuda:0' == 'cpu'">...</failure>
        </testcase>
        <testcase classname="tests.test_serve" name="test_skip"><skipped message="x"/></testcase>
        </testsuite></testsuites>"""
    )
    summary = gpu_check.junit_summary(xml)
    assert (summary["tests"], summary["passed"], summary["failed"], summary["skipped"]) == (
        5,
        1,
        1,
        1,
    )
    assert summary["missing_on_device"] == [
        "tests.test_pipeline::test_bucket",
        "tests.test_serve::test_sdk",
    ]
    assert summary["failures"][0].startswith("tests.test_executor::test_bad")


def test_bundle_installs_only_the_versions_missing() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_bundle
    finally:
        sys.path.remove(str(SCRIPT.parent))
    manifest = {
        "wheels": {
            "av": "av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl",
            "transformers": "transformers-4.57.6-py3-none-any.whl",
            "torchsde": "torchsde-0.2.6-py3-none-any.whl",
        }
    }
    device = {"av": None, "transformers": "5.17.0", "torchsde": "0.2.6"}
    assert gpu_bundle.plan(manifest, device.get) == [
        "av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl",
        "transformers-4.57.6-py3-none-any.whl",
    ]
