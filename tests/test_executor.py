"""The in-process executor on a real ComfyUI (CPU): outputs, errors, isolation."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import workflows
from comfyui_runpod.executor import ComfyLocation, Executor
from PIL import Image


def pixels(path: Path) -> set[tuple[int, int, int]]:
    with Image.open(path) as image:
        return {color for _, color in image.convert("RGB").getcolors(maxcolors=1 << 24)}


def assert_still_works(executor: Executor) -> None:
    """After any failure, the same executor must run a good job."""
    result = executor.run(workflows.invert(0), executor.workspace("after-failure"))
    assert result.error is None
    assert pixels(result.files[0].path) == {(255, 255, 255)}


def test_boot_reports_comfyui_and_loads_node_packs(
    executor: Executor, test_device: str, comfyui_under_test: ComfyLocation
) -> None:
    comfy = executor.comfy
    assert comfy.location.version == comfyui_under_test.version
    assert comfy.device.startswith("cuda" if test_device == "gpu" else "cpu")
    mappings = comfy.nodes.NODE_CLASS_MAPPINGS
    assert "RunPodCaptureData" in mappings  # this pack
    assert "TestSlowSteps" in mappings  # a pack from an extra custom_nodes folder
    assert len(mappings) > 350


def test_invert_saves_the_inverted_pixels(executor: Executor) -> None:
    ws = executor.workspace("invert")
    result = executor.run(workflows.invert(0x102030, size=16), ws)
    assert result.error is None
    [output] = result.files
    assert (output.node_id, output.kind) == ("3", "images")
    assert output.path.parent == ws.output_dir
    assert pixels(output.path) == {(0xFF - 0x10, 0xFF - 0x20, 0xFF - 0x30)}
    with Image.open(output.path) as image:
        assert image.size == (16, 16)


def test_batch_of_three_gives_three_files_in_order(executor: Executor) -> None:
    result = executor.run(workflows.invert(0, batch=3), executor.workspace("batch"))
    assert result.error is None
    assert [f.filename for f in result.files] == [
        "inv_00001_.png",
        "inv_00002_.png",
        "inv_00003_.png",
    ]


def test_preview_is_not_an_output_and_leaves_no_temp_file(executor: Executor) -> None:
    prompt = workflows.invert(0)
    prompt["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    result = executor.run(prompt, executor.workspace("preview"))
    assert result.error is None
    assert [f.node_id for f in result.files] == ["3"]
    assert "4" not in result.datas
    assert list(executor.comfy.temp_dir.rglob("*.png")) == []


def test_two_output_nodes_and_datas_in_node_order(executor: Executor) -> None:
    prompt = workflows.invert(0, prefix="first")
    prompt["4"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["1", 0], "filename_prefix": "second"},
    }
    prompt["5"] = {"class_type": "RunPodCaptureData", "inputs": {"value": ["1", 0], "key": "img"}}
    result = executor.run(prompt, executor.workspace("two-outputs"))
    assert result.error is None
    assert [(f.node_id, f.filename) for f in result.files] == [
        ("3", "first_00001_.png"),
        ("4", "second_00001_.png"),
    ]
    assert pixels(result.files[1].path) == {(0, 0, 0)}
    assert result.datas == {
        "5": {"img": [{"type": "Tensor", "shape": [1, 8, 8, 3], "dtype": "torch.float32"}]}
    }


def test_load_image_reads_the_job_input(executor: Executor) -> None:
    ws = executor.workspace("load")
    ws.input_dir.mkdir()
    Image.new("RGB", (4, 4), (12, 34, 56)).save(ws.input_dir / "in.png")
    result = executor.run(workflows.load_and_save("in.png"), ws)
    assert result.error is None
    assert pixels(result.files[0].path) == {(12, 34, 56)}


def test_a_replaced_node_type_runs_as_its_replacement(executor: Executor) -> None:
    """ComfyUI >= 0.33 rewrites node types it replaced (server.node_replace_manager) before
    validating; the unknown-type check must come after, and the caller's workflow stays
    as it was sent (the rewrite re-points links in place)."""
    manager = getattr(executor.comfy.server, "node_replace_manager", None)
    if manager is None:
        pytest.skip("this ComfyUI has no node replacements (app.node_replace_manager: 0.33+)")
    from comfy_api.latest import io

    manager.register(  # outputs (MASK, IMAGE) before; ImageInvert's IMAGE is output 0
        io.NodeReplace(
            new_node_id="ImageInvert",
            old_node_id="TestRetiredInvert",
            input_mapping=[{"new_id": "image", "old_id": "pixels"}],
            output_mapping=[{"old_idx": 1, "new_idx": 0}],
        )
    )
    prompt = workflows.invert(10)
    prompt["2"] = {"class_type": "TestRetiredInvert", "inputs": {"pixels": ["1", 0]}}
    prompt["3"]["inputs"]["images"] = ["2", 1]
    sent = json.loads(json.dumps(prompt))
    result = executor.run(prompt, executor.workspace("replaced"))
    assert result.error is None, result.error
    assert pixels(result.files[0].path) == {(255, 255, 245)}  # color 10 is RGB (0, 0, 10)
    assert prompt == sent


def test_identical_resubmission_still_returns_files(executor: Executor) -> None:
    first = executor.run(workflows.invert(7), executor.workspace("same-1"))
    second = executor.run(workflows.invert(7), executor.workspace("same-2"))
    assert first.error is None and second.error is None
    assert len(second.files) == 1 and second.files[0].path.is_file()
    assert second.files[0].path != first.files[0].path


def test_jobs_are_isolated_and_cleanup_leaves_nothing(executor: Executor) -> None:
    spaces = [executor.workspace("iso-a"), executor.workspace("iso-b")]
    colors = [(255, 0, 0), (0, 0, 255)]
    results = []
    for ws, color in zip(spaces, colors, strict=True):
        ws.input_dir.mkdir()
        Image.new("RGB", (4, 4), color).save(ws.input_dir / "same.png")
        results.append(executor.run(workflows.load_and_save("same.png", prefix="same"), ws))
    for result, ws, color in zip(results, spaces, colors, strict=True):
        assert result.error is None
        assert result.files[0].path.parent == ws.output_dir
        assert pixels(result.files[0].path) == {color}

    # A job cannot reach another job's input by name.
    thief = executor.workspace("iso-thief")
    stolen = executor.run(workflows.load_and_save(f"../{spaces[0].name}/same.png"), thief)
    assert stolen.error is not None and stolen.error.code == "validation_failed"
    assert executor.run(workflows.load_and_save("same.png"), thief).error is not None

    for ws in [*spaces, thief]:
        ws.cleanup()
        assert not ws.input_dir.exists() and not ws.output_dir.exists()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p["2"].update(class_type="NoSuchNode"), "node 2 ('NoSuchNode')"),
        (lambda p: p["1"]["inputs"].pop("width"), "node 1 (EmptyImage): Required input is missing"),
        (
            lambda p: p["1"]["inputs"].update(width=-5),
            "node 1 (EmptyImage): Value -5 smaller than min of 1",
        ),
        (lambda p: p["2"]["inputs"].update(image=["99", 0]), "node 2 (ImageInvert)"),
        (lambda p: p["2"]["inputs"].update(image=["1", 7]), "node 2 (ImageInvert)"),
    ],
    ids=["unknown-class", "missing-input", "out-of-range", "missing-link", "bad-output-index"],
)
def test_validation_errors_name_the_node(executor: Executor, mutate, expected: str) -> None:
    prompt = workflows.invert(0)
    mutate(prompt)
    result = executor.run(prompt, executor.workspace("invalid"))
    assert result.error is not None
    assert result.error.code == "validation_failed"
    assert expected in result.error.message
    assert result.files == []
    assert_still_works(executor)


def test_no_output_node_is_a_validation_error(executor: Executor) -> None:
    prompt = workflows.invert(0)
    del prompt["3"]
    result = executor.run(prompt, executor.workspace("no-output"))
    assert result.error is not None and result.error.code == "validation_failed"
    assert "no outputs" in result.error.message.lower()


def test_node_exception_is_reported_and_worker_continues(executor: Executor) -> None:
    prompt = workflows.invert(0)
    prompt["2"] = {"class_type": "TestRaise", "inputs": {"image": ["1", 0], "message": "kaput"}}
    result = executor.run(prompt, executor.workspace("raise"))
    assert result.error is not None
    assert result.error.code == "execution_failed"
    assert result.error.message == "node 2 (TestRaise) raised ValueError: kaput"
    assert result.error.detail["node_id"] == "2"
    assert not result.unhealthy
    assert_still_works(executor)


def test_out_of_memory_is_reported_and_worker_continues(executor: Executor) -> None:
    prompt = workflows.invert(0)
    prompt["2"] = {"class_type": "TestOutOfMemory", "inputs": {"image": ["1", 0]}}
    result = executor.run(prompt, executor.workspace("oom"))
    assert result.error is not None and result.error.code == "out_of_memory"
    assert "node 2 (TestOutOfMemory)" in result.error.message
    assert_still_works(executor)


def test_cancel_interrupts_a_running_prompt(executor: Executor) -> None:
    started = threading.Event()

    def on_progress(event: dict) -> None:
        if event["event"] == "step":
            started.set()

    handle = executor.submit(
        workflows.slow(steps=200, delay=0.05), executor.workspace("cancel"), on_progress=on_progress
    )
    assert started.wait(10)
    began = time.perf_counter()
    handle.cancel()
    result = handle.future.result(timeout=10)
    assert time.perf_counter() - began < 2  # not the remaining ~10 s
    assert result.error is not None and result.error.code == "cancelled"
    assert "node 2 (TestSlowSteps)" in result.error.message
    assert_still_works(executor)


def test_deadline_stops_the_prompt_with_timeout(executor: Executor) -> None:
    began = time.perf_counter()
    result = executor.run(
        workflows.slow(steps=200, delay=0.05), executor.workspace("deadline"), timeout_s=0.5
    )
    assert time.perf_counter() - began < 3
    assert result.error is not None and result.error.code == "timeout"
    assert result.error.message.startswith("execution exceeded 0.5s")
    assert_still_works(executor)


def test_cancel_before_start_never_runs(executor: Executor) -> None:
    blocker = executor.submit(workflows.slow(steps=10, delay=0.02), executor.workspace("blocker"))
    queued = executor.submit(workflows.invert(0), executor.workspace("queued"))
    queued.cancel()
    assert blocker.future.result(timeout=10).error is None
    result = queued.future.result(timeout=10)
    assert result.error is not None and result.error.code == "cancelled"
    assert result.files == []


def test_async_caller_cancel_interrupts_comfyui(executor: Executor) -> None:
    async def scenario() -> None:
        task = asyncio.create_task(
            executor.run_async(workflows.slow(steps=200, delay=0.05), executor.workspace("acancel"))
        )
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    began = time.perf_counter()
    asyncio.run(scenario())
    assert time.perf_counter() - began < 3
    assert_still_works(executor)


def test_progress_events_follow_the_run(executor: Executor) -> None:
    events: list[dict] = []
    result = executor.run(
        workflows.slow(steps=3, delay=0), executor.workspace("progress"), on_progress=events.append
    )
    assert result.error is None
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    nodes = [(e["node"], e["class"]) for e in events if e["event"] == "node"]
    assert ("2", "TestSlowSteps") in nodes and ("3", "SaveImage") in nodes
    steps = [(e["step"], e["max"]) for e in events if e["event"] == "step"]
    if progress_is_throttled():  # intermediate steps within 100 ms are not reported
        assert steps[0] == (1, 3) and steps[-1] == (3, 3) and steps == sorted(set(steps))
    else:
        assert steps == [(1, 3), (2, 3), (3, 3)]
    assert events[-1]["percent"] == 100.0


def test_previews_are_small_jpegs_at_most_one_a_second() -> None:
    from comfyui_runpod.executor.progress import ProgressTracker
    from comfyui_runpod.nodes.imaging import preview_image

    events: list[dict] = []
    tracker = ProgressTracker({"3": {"class_type": "KSampler"}}, events.append, previews=True)
    big = Image.new("RGB", (1024, 512), (200, 10, 10))
    for step in range(1, 11):  # ten fast steps: one preview
        tracker.on_step(step, 10, "3", ("JPEG", big, 512))
    previews = [e["preview"] for e in events if "preview" in e]
    assert len(previews) == 1 and len(events) == 10
    image = preview_image(previews[0])
    assert image.size == (256, 128) and image.getpixel((5, 5))[0] > 150
    assert preview_image("data:image/png;base64,AAAA") is None  # only JPEG comes back
    silent: list[dict] = []
    ProgressTracker({"3": {}}, silent.append).on_step(1, 2, "3", ("JPEG", big, 512))
    assert "preview" not in silent[0]  # not asked for: not even encoded


def test_the_preview_method_is_set_per_run_and_restored(executor: Executor) -> None:
    from comfy.cli_args import LatentPreviewMethod, args
    from comfyui_runpod.executor.runner import _preview_method

    before = args.preview_method
    with _preview_method(True) as name:
        assert (name, args.preview_method) == ("latent2rgb", LatentPreviewMethod.Latent2RGB)
    with _preview_method(False) as name:
        assert (name, args.preview_method) == ("none", LatentPreviewMethod.NoPreviews)
    assert args.preview_method == before


def progress_is_throttled() -> bool:
    """ComfyUI 0.33's ProgressBar calls the hook for the first and the last step, and in
    between at most every PROGRESS_THROTTLE_MIN_INTERVAL seconds (0.3.75: every step)."""
    import comfy.utils

    return hasattr(comfy.utils, "PROGRESS_THROTTLE_MIN_INTERVAL")


@pytest.mark.parametrize(
    "name", ["../iso-x/same.png", "/etc/hostname", "same_00001_.png [output]", "x.png [temp]"]
)
def test_file_inputs_cannot_leave_the_job_inputs(executor: Executor, name: str) -> None:
    result = executor.run(workflows.load_and_save(name), executor.workspace("escape"))
    assert result.error is not None and result.error.code == "validation_failed"
    assert "outside the job's input files" in result.error.message


def test_a_validation_failure_leaves_the_previous_runs_files_alone(executor: Executor) -> None:
    """Cleanup reads only what the current run produced: a job that fails validation
    must not act on the previous job's outputs (ComfyUI still holds them)."""
    prompt = workflows.invert(0)
    prompt["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    assert executor.run(prompt, executor.workspace("preview-first")).error is None
    previous = executor._prompt_executor.history_result["outputs"]["4"]["images"][0]
    temp_file = executor.comfy.temp_dir / previous["subfolder"] / previous["filename"]
    assert not temp_file.exists()  # the first run removed its own preview
    temp_file.write_bytes(b"a file that is not this job's")
    broken = workflows.invert(0)
    broken["2"]["inputs"]["image"] = ["9", 0]  # no node 9: fails validation
    result = executor.run(broken, executor.workspace("invalid-second"))
    assert result.error is not None and result.error.code == "validation_failed"
    assert temp_file.exists()
    temp_file.unlink()


def test_the_job_context_belongs_to_its_own_thread() -> None:
    """Two jobs' contexts never mix: each thread sees the context it made current."""
    from comfyui_runpod.nodes import jobcontext

    barrier = threading.Barrier(2)
    seen: dict[str, str | None] = {}

    def job(name: str) -> None:
        with jobcontext.active(jobcontext.JobContext(name)):
            barrier.wait()  # both contexts are now active at once
            current = jobcontext.current()
            seen[name] = current.job_id if current else None
            barrier.wait()  # neither leaves (and restores) before both have looked

    threads = [threading.Thread(target=job, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert seen == {"a": "a", "b": "b"}
    assert jobcontext.current() is None


def test_closed_executor_cancels_its_queue_and_cannot_restart(tmp_path: Path) -> None:
    """``close`` cancels queued prompts without running them and the executor is one-shot.
    A process of its own: closing the session's executor would end every other test."""
    script = textwrap.dedent(
        """
        import json, sys, threading
        from pathlib import Path
        sys.path.insert(0, sys.argv[2])
        import workflows
        from comfyui_runpod.executor import BootSettings, Executor
        from comfyui_runpod.executor.runner import ExecutorClosed

        work = Path(sys.argv[1])
        custom = (Path(sys.argv[2]) / "custom_nodes",)
        with Executor(BootSettings(work, cpu=True, custom_node_dirs=custom)) as executor:
            started = threading.Event()
            running = executor.submit(
                workflows.slow(200, 0.05), executor.workspace("running"),
                on_progress=lambda event: started.set(),
            )
            queued = [executor.submit(workflows.invert(i), executor.workspace(f"q{i}"))
                      for i in range(3)]
            started.wait(30)
        outputs = Path(work, "output")
        report = {
            "running": running.future.result(5).error.code,
            "queued": [q.future.result(5).error.code for q in queued],
            "queued_files": sorted(p.name for p in outputs.rglob("inv_*")),
        }
        for call in (executor.start, lambda: executor.submit({}, None)):
            try:
                call()
                report.setdefault("restart", []).append("started")
            except ExecutorClosed as exc:
                report.setdefault("restart", []).append(str(exc))
        print(json.dumps(report))
        """
    )
    tests = Path(__file__).resolve().parent
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(tests)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["running"] == "cancelled"
    assert report["queued"] == ["cancelled"] * 3
    assert report["queued_files"] == []
    assert len(report["restart"]) == 2
    assert all("closed" in line for line in report["restart"])


def test_no_core_node_module_fails_with_the_projects_set_up(executor: Executor) -> None:
    """The torch trio brings torchaudio: every module of ComfyUI's own imports."""
    core = [module.line for module in executor.comfy.failed_modules if module.core]
    assert core == []
    assert {"LoadAudio", "SaveAudio", "SaveAudioOpus", "SaveVideo", "CreateVideo"} <= set(
        executor.comfy.nodes.NODE_CLASS_MAPPINGS
    )


def test_a_pack_that_fails_to_import_is_named_with_its_error(executor: Executor) -> None:
    [broken] = [m for m in executor.comfy.failed_modules if m.name.endswith("broken_pack")]
    assert not broken.core
    assert broken.error == (
        "ImportError: broken_pack needs libmissing, which this worker lacks (a test pack)"
    )
    assert broken.node_types == {"TestBrokenPackNode"}
    prompt = workflows.invert(0)
    prompt["4"] = {"class_type": "TestBrokenPackNode", "inputs": {}}
    prompt["5"] = {"class_type": "NoSuchNode", "inputs": {}}
    result = executor.run(prompt, executor.workspace("broken-pack"))
    assert result.error is not None and result.error.code == "validation_failed"
    message = result.error.message
    assert "node 4 ('TestBrokenPackNode')" in message and "node 5 ('NoSuchNode')" in message
    assert "TestBrokenPackNode comes from " in message
    assert "which failed to import at boot (ImportError: broken_pack needs libmissing" in message
    assert result.error.detail["failed_modules"] == {"TestBrokenPackNode": broken.line}


def test_comfyui_nodes_lists_types_and_failed_modules_in_one_line_each() -> None:
    """`comfyui nodes` boots ComfyUI: one log line per failed module, no traceback wall."""
    custom = Path(__file__).resolve().parent / "custom_nodes"
    command = ["comfyui", "nodes", "--cpu", "--json", "--custom-nodes", str(custom), "--strict"]
    done = subprocess.run(
        [sys.executable, "-m", "comfyui_runpod", *command],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1, done.stderr[-2000:]  # --strict: a module failed
    report = json.loads(done.stdout)
    assert "SaveImage" in report["types"] and "TestSlowSteps" in report["types"]
    assert report["nodeTypes"] == len(report["types"])
    assert [f["module"].endswith("broken_pack") for f in report["failed"]] == [True]
    assert "Traceback" not in done.stderr
    [line] = [x for x in done.stderr.splitlines() if "node module failed to import" in x]
    assert line.endswith(
        "broken_pack: ImportError: broken_pack needs libmissing, which this "
        "worker lacks (a test pack)"
    )
