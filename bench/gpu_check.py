"""``make gpu-check``: one prepared run on a CUDA machine, a few minutes, under a hard limit.

The worker exists to run on a GPU; a GPU machine is lent to only some sessions, for 15
minutes of device time in all, and reaches no network. This script is that session's
whole job: everything it needs is here or built at run time (the random SD1.5
checkpoints), what the machine's own Python lacks comes in a bundle made here (``make
gpu-bundle``, see ``bench/gpu_bundle.py``), and it writes its report where the device tool
brings files back (``$OUT``). Steps, in order, each timed and wrapped (a failure is
recorded and the rest go on), each under a soft time limit, the whole under ``--time-limit``:

1. ``environment``: torch, CUDA, the GPU and its memory, ComfyUI, what the bundle did;
2. ``test_suite``: the executor, pipeline, serve and tiny-model tests with their ComfyUI
   on CUDA (``COMFYUI_RUNPOD_TEST_DEVICE=gpu``), in a child pytest;
3. ``boot``: our in-process ComfyUI on CUDA;
4. ``models``: the tests' tiny SD1.5 checkpoint and a full-size one (the real SD1.5 UNet,
   ~1.07 G params, random weights; built in seconds);
5. ``server``: ComfyUI's own ``main.py`` server on the same GPU (what other workers run);
6. ``perf_tiny`` / ``perf_full``: per-job time, cold (the first job: load + run) and warm,
   our pipeline vs the server path, interleaved in the same run; VRAM peak
   (``torch.cuda.max_memory_allocated``, our process);
7. ``first_job_warmup``: fresh worker processes, the first job's time without and with the
   warmup workflow (``comfyui-runpod worker --warmup``) — full-size model;
8. ``cancel``: cancel mid-sampler, then the next job succeeds;
9. ``deadline``: ``policy.executionTimeout`` mid-sampler → ``timeout``, then the next job;
10. ``out_of_memory``: a job allocating past the GPU's memory → ``out_of_memory``, then
    the full-size model job succeeds (ComfyUI unloaded the models: it reloads them).

Without CUDA it says so in one line and exits 0 (CI runs it so). ``--cpu`` runs the same
steps on the CPU as a dry run: the tiny checkpoint stands in for the full-size one, and
the test suite runs a few tests only. Report: ``gpu_check.{json,md}`` plus logs under
``--out`` (default ``$OUT`` if set, else ``bench/results/gpu-check/``); the markdown is
printed at the end. Exit status: 0 all steps passed, 1 some did not, 3 the hard limit.

    python bench/gpu_check.py [--cpu] [--out DIR] [--time-limit 480] [--skip test_suite]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The hard limit counts from here: unpacking the bundle is part of the run.
STARTED = time.monotonic()
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TESTS = ROOT / "tests"
for _folder in (BENCH, TESTS):  # benchlib; tinymodel and workflows (last: shadow nothing)
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))

log = logging.getLogger("gpu_check")

#: The test files run with ``--gpu`` (their ComfyUI on CUDA).
TEST_FILES = ("test_executor.py", "test_pipeline.py", "test_serve.py", "test_diffusion.py")
#: The dry run's few tests: one per file, the tiny model among them.
CPU_TESTS = "boot_reports or base64_round_trip or payload_limits or tiny_model_renders"
#: Test failures that only say a package is missing on the device machine (S3 via moto
#: and boto3, the runpod SDK): reported apart, not as CUDA failures.
MISSING_ON_DEVICE = re.compile(r"No module named '(moto|boto3|botocore|runpod)\b")
#: Seconds kept back from every step's budget for the report and teardown.
RESERVE_S = 15.0
CHILD_MARK = "GPU_CHECK_CHILD "


@dataclass
class Plan:
    """What each step does: GPU defaults, and the dry run's (``--cpu``)."""

    cpu: bool
    full_size: int = 512
    full_steps: int = 20
    tiny_rounds: int = 10
    full_rounds: int = 5
    cancel_steps: int = 10_000  # far more than the sampler finishes before the cancel
    deadline_ms: int = 3000
    #: Soft limit (s) of each step; the hard limit caps the sum.
    budgets: dict[str, float] = field(
        default_factory=lambda: {
            "environment": 20,
            "test_suite": 120,
            "boot": 60,
            "models": 60,
            "server": 60,
            "perf_tiny": 40,
            "perf_full": 70,
            "first_job_warmup": 90,
            "cancel": 30,
            "deadline": 30,
            "out_of_memory": 40,
        }
    )

    @classmethod
    def for_device(cls, cpu: bool) -> Plan:
        if not cpu:
            return cls(cpu=False)
        plan = cls(
            cpu=True,
            full_size=64,
            full_steps=2,
            tiny_rounds=2,
            full_rounds=2,
            cancel_steps=500,
            deadline_ms=1500,
        )
        # A dry run checks that every step works, on whatever CPU is free: a shared
        # 2-core machine can be several times slower than a quiet one.
        plan.budgets = {name: 3 * seconds for name, seconds in plan.budgets.items()}
        return plan


@dataclass
class Model:
    label: str
    checkpoint: str  # file name in the run's checkpoints folder
    size: int
    steps: int
    rounds: int
    describe: str


class StepFailed(Exception):
    """An expectation of a step did not hold; ``data`` is still reported."""

    def __init__(self, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.data = data or {}


def expect(condition: bool, message: str, data: dict[str, Any] | None = None) -> None:
    if not condition:
        raise StepFailed(message, data)


class Check:
    """One run: shared state of the steps, the report, and the hard time limit."""

    def __init__(self, args: argparse.Namespace, prepared: dict[str, Any]) -> None:
        self.args = args
        self.plan = Plan.for_device(args.cpu)
        self.cpu: bool = args.cpu
        self.out: Path = args.out
        self.prepared = prepared
        self.started = STARTED
        self.deadline = self.started + args.time_limit
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.checkpoints = self.work / "checkpoints"
        self.steps: list[dict[str, Any]] = []
        self.current: str | None = None
        self.info: dict[str, Any] = {}
        self.models: dict[str, Model] = {}
        self.executor: Any = None
        self.pipeline: Any = None
        self.loop = asyncio.new_event_loop()
        self.server: Any = None
        self.session: Any = None
        self.yaml: Path | None = None
        self.children: set[subprocess.Popen[Any]] = set()
        self._report_lock = threading.Lock()

    # -- time ----------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    # -- steps ---------------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[[Check, float], dict[str, Any]]) -> None:
        budget = min(self.plan.budgets[name], self.remaining() - RESERVE_S)
        record: dict[str, Any] = {"name": name, "status": "skipped", "seconds": 0.0}
        record["budget_s"] = round(max(budget, 0.0), 1)
        if name in self.args.skip:
            record["summary"] = "skipped (--skip)"
        elif budget < 5:
            record["summary"] = "not run: out of time (--time-limit)"
            record["status"] = "not_run"
        else:
            self.current = name
            began = time.monotonic()
            try:
                data = fn(self, budget)
                record["status"] = "passed"
            except StepFailed as exc:
                data = exc.data
                record["status"] = "failed"
                record["error"] = str(exc)
            except Exception as exc:
                data = {}
                record["status"] = "failed"
                record["error"] = f"{type(exc).__name__}: {exc}"
                record["traceback"] = traceback.format_exc()[-3000:]
                log.exception("step %s failed", name)
            record["seconds"] = round(time.monotonic() - began, 2)
            record["summary"] = data.pop("summary", "") if isinstance(data, dict) else ""
            record["data"] = data
            if record["seconds"] > record["budget_s"]:
                record["over_budget"] = True
            self.current = None
        self.steps.append(record)
        self.write()
        line = record.get("error") or record["summary"]
        print(f"[{self.elapsed():6.1f} s] {name}: {record['status']} — {line}", flush=True)

    # -- report --------------------------------------------------------------------------------

    def report(self, interrupted: str | None = None) -> dict[str, Any]:
        steps = list(self.steps)
        if interrupted:
            steps.append(
                {
                    "name": interrupted,
                    "status": "failed",
                    "seconds": None,
                    "error": f"hard time limit ({self.args.time_limit:g} s) reached",
                }
            )
            done = {s["name"] for s in steps}
            steps += [
                {"name": name, "status": "not_run", "seconds": 0.0, "summary": "hard limit"}
                for name in STEPS
                if name not in done
            ]
        statuses = [s["status"] for s in steps]
        return {
            "mode": "cpu dry run" if self.cpu else "cuda",
            "time_limit_s": self.args.time_limit,
            "elapsed_s": round(self.elapsed(), 1),
            "ok": "passed" in statuses and set(statuses) <= {"passed", "skipped"},
            "hard_limit_hit": interrupted is not None,
            "environment": self.info,
            "steps": steps,
        }

    def write(self, interrupted: str | None = None) -> dict[str, Any]:
        from benchlib import write_report

        with self._report_lock:
            report = self.report(interrupted)
            path = write_report("gpu_check", report, self.out)
            report = json.loads(path.read_text())
            (self.out / "gpu_check.md").write_text(render(report) + "\n")
            return report

    # -- hard limit ----------------------------------------------------------------------------

    def arm(self) -> threading.Timer:
        timer = threading.Timer(max(self.remaining(), 0.0), self._hard_limit)
        timer.daemon = True
        timer.start()
        return timer

    def _hard_limit(self) -> None:
        name = self.current or "(between steps)"
        log.error("hard time limit reached during %s", name)
        for child in list(self.children):
            with contextlib.suppress(Exception):
                child.kill()
        with contextlib.suppress(Exception):
            if self.server is not None:
                self._keep_server_log()
                self.server.stop()
        try:
            report = self.write(interrupted=name)
            print(render(report), flush=True)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
            os._exit(3)

    # -- jobs ----------------------------------------------------------------------------------

    def ours(self, workflow: dict[str, Any], job_id: str, timeout_s: float) -> dict[str, Any]:
        """One job through our ``Pipeline.run``; returns its result (files removed)."""
        policy = {"executionTimeout": max(int(timeout_s * 1000), 1)}
        job = {"id": job_id, "input": {"workflow": workflow}, "policy": policy}
        try:
            return self.loop.run_until_complete(self.pipeline.run(job))
        finally:
            shutil.rmtree(self.work / "delivered" / job_id, ignore_errors=True)

    def ours_ok(self, workflow: dict[str, Any], job_id: str, timeout_s: float) -> float:
        began = time.perf_counter()
        result = self.ours(workflow, job_id, timeout_s)
        elapsed = time.perf_counter() - began
        expect("error" not in result and len(result["files"]) == 1, f"job {job_id}: {result}")
        return elapsed

    def theirs_ok(self, workflow: dict[str, Any], timeout_s: float) -> float:
        from benchlib import output_files, remove_files, server_job

        began = time.perf_counter()
        call = server_job(self.session, self.server.base_url, workflow, timeout_s=timeout_s)
        outputs = self.loop.run_until_complete(call)
        elapsed = time.perf_counter() - began
        files = output_files(outputs, self.server.output_dir)
        remove_files(files)
        expect(len(files) == 1, f"server job: {outputs}")
        return elapsed

    def workflow(self, model: Model, seed: int, steps: int | None = None) -> dict[str, Any]:
        from workflows import tiny_sd

        steps = model.steps if steps is None else steps
        return tiny_sd(
            model.checkpoint, seed=seed, steps=steps, prefix=model.label, size=model.size
        )

    # -- teardown ------------------------------------------------------------------------------

    def _keep_server_log(self) -> None:
        if self.server is not None and self.server.log_path.is_file():
            shutil.copyfile(self.server.log_path, self.out / "server.log")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.session is not None:
                self.loop.run_until_complete(self.session.close())
        with contextlib.suppress(Exception):
            self._keep_server_log()
            if self.server is not None:
                self.server.stop()
        with contextlib.suppress(Exception):
            if self.executor is not None:
                self.executor.close()
        with contextlib.suppress(Exception):
            self.loop.close()
        shutil.rmtree(self.work, ignore_errors=True)


# -- the steps -----------------------------------------------------------------------------------


def step_environment(check: Check, budget: float) -> dict[str, Any]:
    import platform

    import torch
    from comfyui_runpod.executor import find_comfyui

    expect("error" not in check.prepared, f"preparing failed: {check.prepared.get('error')}")
    data: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "prepared": check.prepared,
        "comfyui": find_comfyui().describe(),
    }
    for name in ("transformers", "av", "torchsde", "aiohttp", "numpy"):
        data[name] = _version(name)
    if check.cpu:
        data["device"] = "cpu"
        data["memory_gib"] = round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        )
    else:
        props = torch.cuda.get_device_properties(0)
        data.update(
            device=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            device_count=torch.cuda.device_count(),
        )
        with contextlib.suppress(Exception):
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            data["driver"] = smi.stdout.strip() or None
    check.info.update(data)
    data["summary"] = f"{data['device']}, {data['memory_gib']} GiB; torch {data['torch']}"
    return data


def _version(name: str) -> str | None:
    from gpu_bundle import installed_version

    return installed_version(name)


def step_test_suite(check: Check, budget: float) -> dict[str, Any]:
    xml = check.work / "pytest.xml"
    command = [sys.executable, "-m", "pytest", *(f"tests/{f}" for f in TEST_FILES)]
    command += ["-q", "-rfE", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    if check.cpu:
        command += ["-k", CPU_TESTS]
    env = {**os.environ, "COMFYUI_RUNPOD_TEST_DEVICE": "cpu" if check.cpu else "gpu"}
    env["PYTHONUNBUFFERED"] = "1"
    with open(check.out / "pytest.log", "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        check.children.add(process)
        try:
            code = process.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = None
        finally:
            check.children.discard(process)
    data = junit_summary(xml) if xml.is_file() else {"tests": 0}
    data["exit_code"] = code
    data["device"] = env["COMFYUI_RUNPOD_TEST_DEVICE"]
    counts = ", ".join(f"{data.get(k, 0)} {k}" for k in ("passed", "failed", "skipped"))
    missing = data.get("missing_on_device", [])
    data["summary"] = counts + (
        f", {len(missing)} need a package the device lacks" if missing else ""
    )
    expect(code is not None, f"pytest ran past its {budget:.0f} s budget", data)
    expect(data["tests"] > 0, f"pytest ran no tests (exit {code}); see pytest.log", data)
    expect(data["failed"] == 0, f"{data['failed']} tests failed: {data['failures'][:5]}", data)
    return data


def junit_summary(xml: Path) -> dict[str, Any]:
    """Counts from pytest's JUnit XML; failures that only lack a device package apart."""
    failures, missing, counts = [], [], {"passed": 0, "failed": 0, "skipped": 0}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = [c for c in case if c.tag in ("failure", "error")]
        if any(c.tag == "skipped" for c in case):
            counts["skipped"] += 1
        elif bad:
            text = " ".join((c.get("message") or "") + (c.text or "") for c in bad)
            if MISSING_ON_DEVICE.search(text):
                missing.append(name)
            else:
                counts["failed"] += 1
                failures.append(f"{name}: {(bad[0].get('message') or '').splitlines()[:1]}")
        else:
            counts["passed"] += 1
    return {
        "tests": sum(counts.values()) + len(missing),
        **counts,
        "failures": failures,
        "missing_on_device": missing,
    }


def step_boot(check: Check, budget: float) -> dict[str, Any]:
    from benchlib import boot_executor
    from comfyui_runpod.executor.delivery import DeliverySettings
    from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings

    check.executor = boot_executor(
        check.work / "comfy", cpu=check.cpu, custom_node_dirs=(TESTS / "custom_nodes",)
    )
    comfy = check.executor.comfy
    settings = PipelineSettings(DeliverySettings(local_dir=check.work / "delivered"), environ={})
    check.pipeline = Pipeline(check.executor, settings)
    data = {
        "boot_s": round(comfy.boot_s, 2),
        "device": comfy.device,
        "comfyui": comfy.location.describe(),
        "node_types": len(comfy.nodes.NODE_CLASS_MAPPINGS),
        "failed_modules": [f.line for f in comfy.failed_modules],
        "model_patcher": comfy.model_patcher,
    }
    data["summary"] = (
        f"ComfyUI {comfy.location.version} on {comfy.device} in {comfy.boot_s:.1f} s; "
        f"models load with {comfy.model_patcher}"
    )
    expect(
        comfy.device.startswith("cpu" if check.cpu else "cuda"), f"booted on {comfy.device}", data
    )
    expect("TestAllocate" in comfy.nodes.NODE_CLASS_MAPPINGS, "test node pack not loaded", data)
    return data


def step_models(check: Check, budget: float) -> dict[str, Any]:
    import tinymodel
    import utils.extra_config
    from benchlib import checkpoint_yaml

    plan = check.plan
    check.checkpoints.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    began = time.perf_counter()
    tiny = tinymodel.tiny_sd15_path()
    _place(tiny, check.checkpoints / tiny.name)
    data["tiny"] = {
        "file": tiny.name,
        "mb": round(tiny.stat().st_size / 1e6, 1),
        "params_m": _millions(tinymodel.parameter_count(full=False)),
        "ready_s": round(time.perf_counter() - began, 2),
    }
    check.models["tiny"] = Model(
        "tiny", tiny.name, 64, 2, plan.tiny_rounds, "tiny SD1.5, 64×64, 2 steps"
    )
    if check.cpu:
        # The tiny file under a second name: loaded as a model of its own, so its first
        # job is a real cold one (load + run), as the full-size model's is on the GPU.
        stand_in = _place(tiny, check.checkpoints / "tiny-standing-in-for-full.safetensors")
        data["full"] = {"stand_in": f"{tiny.name} (dry run: the full-size model is not built)"}
        check.models["full"] = Model(
            "full",
            stand_in.name,
            plan.full_size,
            plan.full_steps,
            plan.full_rounds,
            f"tiny SD1.5 standing in for full size, {plan.full_size}², {plan.full_steps} steps",
        )
    else:
        began = time.perf_counter()
        path = tinymodel.build_tiny_sd15(
            check.checkpoints / "full-sd15-random.safetensors", full=True
        )
        data["full"] = {
            "file": path.name,
            "mb": round(path.stat().st_size / 1e6, 1),
            "params_m": _millions(tinymodel.parameter_count(full=True)),
            "build_s": round(time.perf_counter() - began, 2),
        }
        check.models["full"] = Model(
            "full",
            path.name,
            plan.full_size,
            plan.full_steps,
            plan.full_rounds,
            f"full-size SD1.5 (random), {plan.full_size}², {plan.full_steps} steps",
        )
    check.yaml = checkpoint_yaml(check.work, check.checkpoints)
    utils.extra_config.load_extra_path_config(str(check.yaml))
    full = data["full"]
    data["summary"] = f"tiny {data['tiny']['mb']} MB; full " + (
        f"{full['mb']} MB, {full['params_m']} M params in {full['build_s']} s"
        if "build_s" in full
        else "stood in by tiny (dry run)"
    )
    return data


def _place(source: Path, path: Path) -> Path:
    """``source`` in the run's checkpoints folder as ``path`` (a link, else a copy)."""
    try:
        path.symlink_to(source)
    except OSError:
        shutil.copyfile(source, path)
    return path


def _millions(counts: dict[str, int]) -> dict[str, float]:
    return {
        part: round(n / 1e6, 1) for part, n in {**counts, "total": sum(counts.values())}.items()
    }


def step_server(check: Check, budget: float) -> dict[str, Any]:
    import aiohttp
    from benchlib import ComfyServer

    expect(check.yaml is not None, "no checkpoints (the models step failed)")
    server = ComfyServer(check.executor.comfy.location.path, [check.yaml], cpu=check.cpu)
    check.server = server
    server.spawn()
    assert server.process is not None
    check.children.add(server.process)
    server.wait_ready(timeout_s=budget)

    async def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    check.session = check.loop.run_until_complete(session())
    return {"ready_s": round(server.ready_s, 2), "summary": f"ready in {server.ready_s:.1f} s"}


def perf(check: Check, budget: float, label: str) -> dict[str, Any]:
    import torch
    from benchlib import summarize

    model = check.models.get(label)
    expect(model is not None, "no checkpoint (the models step failed)")
    assert model is not None
    end = time.monotonic() + budget
    server = check.session is not None
    cuda = not check.cpu
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def left() -> float:
        return max(end - time.monotonic(), 1.0)

    seed = 1000 * (1 + list(check.models).index(label))
    cold = {"ours": check.ours_ok(check.workflow(model, seed), f"{label}-cold", left())}
    if server:
        cold["server"] = check.theirs_ok(check.workflow(model, seed + 1), left())
    contenders: dict[str, Callable[[int], float]] = {
        "ours": lambda s: check.ours_ok(check.workflow(model, s), f"{label}-{s}", left())
    }
    if server:
        contenders["server"] = lambda s: check.theirs_ok(check.workflow(model, s), left())
    warm: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    last_round = sum(cold.values())  # a cold round bounds a warm one
    for round_ in range(model.rounds):
        if round_ and time.monotonic() + last_round > end:
            break  # the soft limit: no round that would end past it
        began = time.monotonic()
        shift = round_ % len(names)
        for offset, name in enumerate(names[shift:] + names[:shift]):
            warm[name].append(contenders[name](seed + 10 + round_ * 2 + offset))
        last_round = time.monotonic() - began
    data: dict[str, Any] = {
        "model": model.describe,
        "size": model.size,
        "steps": model.steps,
        "cold_s": {k: round(v, 3) for k, v in cold.items()},
        "warm": {name: summarize(v) for name, v in warm.items()},
        "rounds": len(warm["ours"]),
        "rounds_planned": model.rounds,
    }
    ratios = {}
    if server:
        ratios["warm_server_over_ours"] = (
            data["warm"]["server"]["median_ms"] / data["warm"]["ours"]["median_ms"]
        )
        ratios["cold_server_over_ours"] = cold["server"] / cold["ours"]
    data["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    if cuda:
        data["vram_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        data["vram_reserved_peak_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    ours_ms = data["warm"]["ours"]["median_ms"]
    summary = f"cold {cold['ours']:.2f} s, warm {ours_ms:.0f} ms"
    if server:
        summary += (
            f"; server cold {cold['server']:.2f} s, warm "
            f"{data['warm']['server']['median_ms']:.0f} ms (server/ours "
            f"{ratios['warm_server_over_ours']:.2f})"
        )
    if cuda:
        summary += f"; VRAM peak {data['vram_peak_gib']} GiB"
    data["summary"] = summary
    expect(server, "no server path to compare with (the server step failed)", data)
    return data


def step_perf_tiny(check: Check, budget: float) -> dict[str, Any]:
    return perf(check, budget, "tiny")


def step_perf_full(check: Check, budget: float) -> dict[str, Any]:
    return perf(check, budget, "full")


def step_first_job_warmup(check: Check, budget: float) -> dict[str, Any]:
    model = check.models.get("full")
    expect(model is not None and check.yaml is not None, "no checkpoint (the models step failed)")
    assert model is not None
    end = time.monotonic() + budget
    runs = {}
    for mode in ("without", "with"):
        spec = {
            "cpu": check.cpu,
            "yaml": str(check.yaml),
            "work": str(check.work / f"child-{mode}"),
            "workflow": check.workflow(model, 77),
            "warmup": warmup_workflow(check.workflow(model, 7, steps=1))
            if mode == "with"
            else None,
        }
        runs[mode] = first_job_process(check, spec, max(end - time.monotonic(), 5.0))
    data: dict[str, Any] = {"model": model.describe, **runs}
    ratio = runs["without"]["first_job_s"] / runs["with"]["first_job_s"]
    data["first_job_without_over_with"] = round(ratio, 2)
    data["summary"] = (
        f"first job {runs['without']['first_job_s']:.2f} s without warmup, "
        f"{runs['with']['first_job_s']:.2f} s after it "
        f"(warmup took {runs['with']['warmup_s']:.2f} s)"
    )
    return data


def warmup_workflow(workflow: dict[str, Any]) -> dict[str, Any]:
    """A warmup like a deployment's: the same model and size, one step, its own prompt."""
    workflow["6"]["inputs"]["text"] = "warm-up"
    return workflow


def first_job_process(check: Check, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--first-job", json.dumps(spec)]
    began = time.perf_counter()
    with open(check.out / "first_job.log", "ab") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=err)
        check.children.add(process)
        try:
            line = _read_mark(process, timeout_s)
            elapsed = time.perf_counter() - began
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            check.children.discard(process)
    expect(line is not None, f"the child exited with {process.returncode} and no result")
    assert line is not None
    result = json.loads(line)
    expect(result.get("error") is None, f"child: {result.get('error')}", result)
    result["process_to_result_s"] = round(elapsed, 2)
    return result


def _read_mark(process: subprocess.Popen[bytes], timeout_s: float) -> str | None:
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            text = raw.decode(errors="replace")
            if text.startswith(CHILD_MARK):
                found.append(text[len(CHILD_MARK) :])
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    return found[0] if found else None


def first_job_child(spec: dict[str, Any]) -> int:
    """A fresh worker process: boot, [warmup workflow], then one timed job; one JSON line."""
    from benchlib import boot_executor
    from comfyui_runpod.executor.delivery import DeliverySettings
    from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings
    from comfyui_runpod.executor.worker import warm_up

    work = Path(spec["work"])
    result: dict[str, Any] = {"error": None}
    executor = boot_executor(work / "comfy", [Path(spec["yaml"])], cpu=spec["cpu"])
    try:
        result["boot_s"] = round(executor.comfy.boot_s, 2)
        settings = PipelineSettings(DeliverySettings(local_dir=work / "delivered"), environ={})
        pipeline = Pipeline(executor, settings)
        if spec["warmup"] is not None:
            warmup_file = work / "warmup.json"
            warmup_file.write_text(json.dumps(spec["warmup"]))
            began = time.perf_counter()
            warm_up(pipeline, warmup_file)  # what `comfyui-runpod worker --warmup` runs
            result["warmup_s"] = round(time.perf_counter() - began, 2)
        began = time.perf_counter()
        job = pipeline.run_sync({"id": "first", "input": {"workflow": spec["workflow"]}})
        result["first_job_s"] = round(time.perf_counter() - began, 3)
        result["timings"] = job.get("timings")
        if "error" in job:
            result["error"] = job["error"]
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    sys.stdout.write(CHILD_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    executor.close()
    shutil.rmtree(work, ignore_errors=True)
    return 0


def step_cancel(check: Check, budget: float) -> dict[str, Any]:
    model = check.models.get("full")
    expect(model is not None, "no checkpoint (the models step failed)")
    assert model is not None
    executor = check.executor
    stepping = threading.Event()
    steps_seen: list[int] = []

    def on_progress(event: dict[str, Any]) -> None:
        if event["event"] == "step" and event["node"] == "3":
            steps_seen.append(event["step"])
            if event["step"] >= 2:
                stepping.set()

    workspace = executor.workspace("gpu-check-cancel")
    workflow = check.workflow(model, 31, steps=check.plan.cancel_steps)
    handle = executor.submit(workflow, workspace, on_progress=on_progress, timeout_s=budget)
    try:
        expect(stepping.wait(budget / 2), "the sampler never reported a step")
        asked_at_step = steps_seen[-1]
        began = time.perf_counter()
        handle.cancel()
        result = handle.future.result(timeout=budget / 2)
        latency = time.perf_counter() - began
    finally:
        handle.cancel()
        workspace.cleanup()
    error = result.error
    data: dict[str, Any] = {
        "cancelled_at_step": asked_at_step,
        "of_steps": check.plan.cancel_steps,
        "cancel_to_result_s": round(latency, 3),
        "error": error.line if error else None,
    }
    expect(
        error is not None and error.code == "cancelled",
        f"expected cancelled, got {data['error']}",
        data,
    )
    assert error is not None
    expect("node 3 (KSampler)" in error.message, "the error does not name the sampler", data)
    data["next_job_s"] = round(
        check.ours_ok(check.workflow(model, 32), "after-cancel", budget / 2), 3
    )
    data["summary"] = (
        f"cancelled at step {asked_at_step}/{check.plan.cancel_steps} in "
        f"{latency * 1000:.0f} ms; next job ok in {data['next_job_s']:.2f} s"
    )
    return data


def step_deadline(check: Check, budget: float) -> dict[str, Any]:
    model = check.models.get("full")
    expect(model is not None, "no checkpoint (the models step failed)")
    assert model is not None
    limit_s = check.plan.deadline_ms / 1000
    workflow = check.workflow(model, 41, steps=check.plan.cancel_steps)
    began = time.perf_counter()
    result = check.ours(workflow, "deadline", limit_s)
    took = time.perf_counter() - began
    data: dict[str, Any] = {
        "execution_timeout_ms": check.plan.deadline_ms,
        "returned_after_s": round(took, 3),
        "error": result.get("error"),
    }
    expect(result.get("error_code") == "timeout", f"expected timeout, got {result}", data)
    expect(took < limit_s + 10, f"returned {took:.1f} s after a {limit_s:g} s deadline", data)
    data["next_job_s"] = round(
        check.ours_ok(check.workflow(model, 42), "after-deadline", budget / 2), 3
    )
    data["summary"] = (
        f"timeout after {took:.2f} s (limit {limit_s:g} s); "
        f"next job ok in {data['next_job_s']:.2f} s"
    )
    return data


def step_out_of_memory(check: Check, budget: float) -> dict[str, Any]:
    import torch
    from workflows import invert

    model = check.models.get("full")
    expect(model is not None, "no checkpoint (the models step failed)")
    assert model is not None
    if check.cpu:
        # No CPU machine has 2**62 bytes: refused at once, nothing allocated. torch's CPU
        # allocator raises RuntimeError, not OutOfMemoryError, so this is execution_failed.
        gib, expected = float(2**32), "execution_failed"
    else:
        # Twice the card: cudaMalloc (through torch's caching allocator) refuses at once.
        gib = 2 * torch.cuda.get_device_properties(0).total_memory / 2**30
        expected = "out_of_memory"
    workflow = invert(0, size=8, prefix="oom")
    workflow["2"] = {"class_type": "TestAllocate", "inputs": {"image": ["1", 0], "gib": gib}}
    result = check.ours(workflow, "oom", budget / 2)
    data: dict[str, Any] = {
        "asked_gib": round(gib, 1),
        "expected": expected,
        "error": result.get("error"),
    }
    expect(result.get("error_code") == expected, f"expected {expected}, got {result}", data)
    data["next_job_s"] = round(check.ours_ok(check.workflow(model, 51), "after-oom", budget / 2), 3)
    data["summary"] = (
        f"{result.get('error_code')} for {gib:,.0f} GiB; next {model.label} job ok in "
        f"{data['next_job_s']:.2f} s"
    )
    return data


STEPS: dict[str, Callable[[Check, float], dict[str, Any]]] = {
    "environment": step_environment,
    "test_suite": step_test_suite,
    "boot": step_boot,
    "models": step_models,
    "server": step_server,
    "perf_tiny": step_perf_tiny,
    "perf_full": step_perf_full,
    "first_job_warmup": step_first_job_warmup,
    "cancel": step_cancel,
    "deadline": step_deadline,
    "out_of_memory": step_out_of_memory,
}


# -- the report ----------------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    """The markdown report (what is printed at the end)."""
    from benchlib import table

    env = report.get("environment") or {}
    steps = report["steps"]
    passed = sum(s["status"] == "passed" for s in steps)
    title = "CPU dry run" if report["mode"] != "cuda" else env.get("device", "CUDA")
    lines = [
        f"# GPU check: {title}",
        "",
        f"{report.get('time', '')}: {passed}/{len(steps)} steps passed in "
        f"{report['elapsed_s']:.0f} s (hard limit {report['time_limit_s']:g} s)"
        + (" — **hard limit reached**" if report.get("hard_limit_hit") else "")
        + f"; torch {env.get('torch', '?')}, CUDA {env.get('torch_cuda') or '—'}, "
        f"{env.get('memory_gib', '?')} GiB, {env.get('comfyui', 'ComfyUI ?')}.",
        "",
        table(
            ["step", "status", "s", "summary"],
            [
                (
                    s["name"],
                    s["status"] if s["status"] == "passed" else f"**{s['status']}**",
                    s["seconds"] if s["seconds"] is not None else "—",
                    s.get("error") or s.get("summary", ""),
                )
                for s in steps
            ],
        ),
    ]
    perf_rows = []
    for step in steps:
        if step["name"].startswith("perf_") and step.get("data", {}).get("warm"):
            d = step["data"]
            for path in d["warm"]:
                row = d["warm"][path]
                perf_rows.append(
                    (
                        d["model"] if path == "ours" else "",
                        "ours (Pipeline.run)" if path == "ours" else "ComfyUI server + ws",
                        d["cold_s"].get(path, "—"),
                        row["median_ms"],
                        row["p90_ms"],
                        row["n"],
                        d.get("vram_peak_gib", "—") if path == "ours" else "",
                    )
                )
    if perf_rows:
        lines += [
            "",
            "## Per-job time, our pipeline vs ComfyUI's own server (same run, same device)",
            "",
            table(
                ["model", "path", "cold s", "warm median ms", "warm p90 ms", "n", "VRAM peak GiB"],
                perf_rows,
            ),
        ]
        for step in steps:
            ratios = step.get("data", {}).get("ratios")
            if step["name"].startswith("perf_") and ratios:
                lines.append("")
                lines.append(
                    f"{step['name']}: " + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items())
                )
    warm = next((s for s in steps if s["name"] == "first_job_warmup" and s.get("data")), None)
    if warm and "with" in warm["data"]:
        d = warm["data"]
        lines += [
            "",
            f"## First job of a fresh worker, {d['model']}",
            "",
            table(
                ["worker", "boot s", "warmup s", "first job s", "process start → result s"],
                [
                    (
                        "without --warmup",
                        d["without"]["boot_s"],
                        "—",
                        d["without"]["first_job_s"],
                        d["without"]["process_to_result_s"],
                    ),
                    (
                        "with --warmup",
                        d["with"]["boot_s"],
                        d["with"]["warmup_s"],
                        d["with"]["first_job_s"],
                        d["with"]["process_to_result_s"],
                    ),
                ],
            ),
        ]
    failed = [s for s in steps if s["status"] not in ("passed", "skipped")]
    if failed:
        lines += ["", "## Failures", ""]
        for s in failed:
            lines.append(f"- **{s['name']}**: {s.get('error') or s.get('summary')}")
            for failure in (s.get("data") or {}).get("failures", [])[:10]:
                lines.append(f"  - {failure}")
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------


def default_out() -> Path:
    """``$OUT`` (the folder the device tool brings back) if set, else ``bench/results/``."""
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else BENCH / "results" / "gpu-check"


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--cpu", action="store_true", help="dry run: the same steps on the CPU")
    cli.add_argument("--out", type=Path, default=None, help="report folder (default $OUT)")
    cli.add_argument("--time-limit", type=float, default=480.0, help="hard limit, seconds")
    cli.add_argument(
        "--skip",
        type=lambda v: [s for s in v.split(",") if s],
        default=[],
        help="comma-separated steps to leave out: " + ",".join(STEPS),
    )
    cli.add_argument("--first-job", help=argparse.SUPPRESS)  # the child of first_job_warmup
    return cli


def no_cuda_line() -> str | None:
    """One line when there is no CUDA to check, else None."""
    try:
        import torch
    except ImportError:
        return "gpu-check: torch is not installed, so there is no CUDA to check (--cpu: dry run)"
    if not torch.cuda.is_available():
        return (
            f"gpu-check: no CUDA device here (torch {torch.__version__}): nothing to check; "
            "--cpu runs the same steps on the CPU"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.first_job:
        from gpu_bundle import ensure_package

        ensure_package()
        return first_job_child(json.loads(args.first_job))
    if not args.cpu and (line := no_cuda_line()):
        print(line)
        return 0
    unknown = set(args.skip) - set(STEPS)
    if unknown:
        parser().error(f"unknown step(s): {', '.join(sorted(unknown))}")
    args.out = (args.out or default_out()).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    _log_to(args.out / "gpu_check.log")

    from gpu_bundle import activate

    began = time.perf_counter()
    try:
        prepared = activate()
    except Exception as exc:  # reported by the environment step; the steps say the rest
        log.exception("preparing the interpreter failed")
        prepared = {"error": f"{type(exc).__name__}: {exc}"}
    prepared["seconds"] = round(time.perf_counter() - began, 1)
    check = Check(args, prepared)
    print(f"gpu-check ({'cpu dry run' if args.cpu else 'cuda'}): report in {args.out}", flush=True)
    timer = check.arm()
    try:
        for name, fn in STEPS.items():
            check.step(name, fn)
    finally:
        timer.cancel()
        check.close()
    report = check.write()
    print(render(report), flush=True)
    return 0 if report["ok"] else 1


def _log_to(path: Path) -> None:
    """Logging, and everything written to stderr (tqdm bars, ComfyUI's prints, children's
    tracebacks), go to ``path``; stdout keeps one line per step and the report."""
    stream = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    os.dup2(stream.fileno(), 2)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


if __name__ == "__main__":
    sys.exit(main())
