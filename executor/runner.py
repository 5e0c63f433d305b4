"""Run prompts on a booted ComfyUI: one dedicated thread, one prompt at a time.

The thread owns ComfyUI (and its event loop, which async nodes need), so callers may be
sync (``run``) or async (``run_async``) and never block each other's event loops.
Cancel and deadlines both use ComfyUI's own interrupt; the next prompt runs normally.

One prompt at a time is the invariant everything here rests on: ComfyUI keeps its
folders, progress hook and server stand-in in process globals, and each run sets them
for itself and resets them afterwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..nodes import jobcontext
from . import checks
from .boot import BootSettings, Comfy, boot
from .errors import JobError
from .outputs import OutputFile, collect, restore_prefixes
from .progress import ProgressCallback, ProgressTracker

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def plain_name(job_id: str) -> str:
    """``job_id`` as a single safe folder name (no separators, no leading dots); may be ''."""
    return _UNSAFE.sub("_", job_id).strip("._")


def _run_name(label: str) -> str:
    return f"{plain_name(label)[:64]}-{uuid.uuid4().hex[:8]}"


_UNHEALTHY_MARKERS = ("CUDA error", "device-side assert", "CUBLAS_STATUS", "cuDNN error")


@dataclass
class Workspace:
    """A run's own folders: its inputs (``LoadImage`` sees only these) and its outputs.

    ``name`` is unique per run, not per job: a retried job id must not find the previous
    run's cached save nodes (their files are gone) or overwrite its files.
    """

    name: str
    input_dir: Path
    output_dir: Path

    def cleanup(self) -> None:
        """Remove the run's folders. After delivery the output folder is empty, and one
        ``rmdir`` costs a tenth of ``rmtree``'s walk; most jobs bring no input folder."""
        for folder in (self.input_dir, self.output_dir):
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError:  # not empty: a failed run, or files nobody delivered
                shutil.rmtree(folder, ignore_errors=True)


@dataclass
class RunResult:
    prompt_id: str
    files: list[OutputFile] = field(default_factory=list)
    datas: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: JobError | None = None
    #: Output nodes ComfyUI left out because they did not validate (the rest ran).
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    #: The process should not take more jobs (e.g. a CUDA error left the device broken).
    unhealthy: bool = False


class RunHandle:
    """A submitted prompt: its future result, and a way to cancel it.

    ``future`` settles only once the executor thread is done with the prompt (finished,
    failed, interrupted or never started), so whoever owns its folders cleans them up
    after that, never while a node may still be writing there.
    """

    def __init__(self, executor: Executor, timeout_s: float | None) -> None:
        self.future: concurrent.futures.Future[RunResult] = concurrent.futures.Future()
        self.timeout_s = timeout_s
        self.cancelled = False
        self.timed_out = False
        self.running = False
        self._executor = executor
        self._timer: threading.Timer | None = None

    def cancel(self) -> None:
        """Stop the prompt: before it starts, or through ComfyUI's interrupt while it runs."""
        self.cancelled = True
        self._executor._interrupt_if_running(self)

    async def wait(self) -> RunResult:
        """The result; cancelling the awaiting task interrupts ComfyUI, then re-raises."""
        try:
            return await asyncio.shield(asyncio.wrap_future(self.future))
        except asyncio.CancelledError:
            self.cancel()
            raise

    def _expire(self) -> None:
        self.timed_out = True
        self._executor._interrupt_if_running(self)


@dataclass
class _Request:
    prompt: dict[str, Any]
    workspace: Workspace
    on_progress: ProgressCallback | None
    handle: RunHandle
    context: jobcontext.JobContext | None
    previews: bool = False


class ExecutorClosed(RuntimeError):
    """The executor was closed; ComfyUI boots once per process, so it cannot restart."""


class Executor:
    """Owns one in-process ComfyUI: boot once, run many prompts, close once.

    ComfyUI's state is process-global, so an executor is one-shot: ``start`` boots (and
    is idempotent), ``close`` interrupts the running prompt, cancels the queued ones
    without running them and stops the thread; ``start`` or ``submit`` afterwards raise
    :class:`ExecutorClosed`. Use it as a context manager::

        with Executor(BootSettings(work_dir=Path("work"))) as executor:
            workspace = executor.workspace("job-1")
            result = executor.run(prompt, workspace)
    """

    def __init__(self, settings: BootSettings) -> None:
        self.settings = settings
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._comfy: Comfy | None = None
        self._boot_error: BaseException | None = None
        self._booted = threading.Event()
        self._current: RunHandle | None = None
        self._lock = threading.Lock()  # guards _current (the interrupt target)
        self._life = threading.Lock()  # guards _thread and _closed
        self._closed = False
        self._tracker: ProgressTracker | None = None
        #: Names of run folders made ahead of need (see :meth:`workspace`).
        self._spare: queue.SimpleQueue[str] = queue.SimpleQueue()

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Executor:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def begin(self) -> None:
        """Start booting ComfyUI on the executor thread and return at once (idempotent):
        the worker takes its first job meanwhile."""
        with self._life:
            if self._closed:
                raise ExecutorClosed("the executor is closed; start a new process to reboot")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._main, name="comfyui-executor", daemon=True
                )
                self._thread.start()

    @property
    def booted(self) -> bool:
        """Whether the boot has ended (well or not): ``start`` would not wait."""
        return self._booted.is_set()

    def start(self) -> Comfy:
        """Boot ComfyUI on the executor thread (idempotent), wait for it; raise if it cannot
        boot."""
        self.begin()
        self._booted.wait()
        if self._boot_error is not None:
            raise self._boot_error
        assert self._comfy is not None
        return self._comfy

    @property
    def comfy(self) -> Comfy:
        return self.start()

    def close(self) -> None:
        """Cancel queued prompts, interrupt the running one, and stop the thread."""
        with self._life:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        _cancel_queued(self._queue)
        with self._lock:
            current = self._current
        if current is not None:
            current.cancel()  # takes the lock itself
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout=60)
        if thread.is_alive():
            log.warning("the executor thread is still running a node that ignores interrupts")

    # -- jobs ------------------------------------------------------------------------------

    def workspace(self, job_id: str) -> Workspace:
        """Name the run's folders; whoever writes inputs creates ``input_dir``.

        The output folder is usually made already: the executor thread makes the next
        one while it is idle, since a mkdir (~0.1 ms on slow disks) is a tenth of a small
        job. The name is unique per run, the job id only a readable part of it.
        """
        comfy = self.start()
        try:
            name = self._spare.get_nowait()
        except queue.Empty:
            name = _run_name(job_id)  # its output folder is made by the first save
        return Workspace(name, comfy.job_inputs / name, comfy.output_dir / name)

    def submit(
        self,
        prompt: Mapping[str, Any],
        workspace: Workspace,
        *,
        on_progress: ProgressCallback | None = None,
        timeout_s: float | None = None,
        context: jobcontext.JobContext | None = None,
        previews: bool = False,
    ) -> RunHandle:
        """Queue a prompt; ``context`` is what the pack's nodes see as the running job;
        ``previews``: samplers make latent previews and progress events carry them."""
        self.start()
        handle = RunHandle(self, timeout_s)
        prompt = _own_copy(prompt)
        self._queue.put(_Request(prompt, workspace, on_progress, handle, context, previews))
        if self._closed:  # closed meanwhile: the thread may never read the queue again
            _cancel_queued(self._queue)
        return handle

    def run(self, prompt: Mapping[str, Any], workspace: Workspace, **kwargs: Any) -> RunResult:
        return self.submit(prompt, workspace, **kwargs).future.result()

    async def run_async(
        self, prompt: Mapping[str, Any], workspace: Workspace, **kwargs: Any
    ) -> RunResult:
        """Like ``run``; cancelling the awaiting task interrupts ComfyUI, then re-raises."""
        return await self.submit(prompt, workspace, **kwargs).wait()

    def _interrupt_if_running(self, handle: RunHandle) -> None:
        with self._lock:
            if self._current is handle and self._comfy is not None:
                self._comfy.nodes.interrupt_processing(True)

    # -- the executor thread ----------------------------------------------------------------

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._comfy = boot(self.settings, loop)
            self._install_hooks(self._comfy)
            self._prompt_executor = self._make_prompt_executor(self._comfy)
        except BaseException as exc:  # reported to every caller of start()
            log.exception("ComfyUI failed to boot")
            self._boot_error = exc
            self._booted.set()
            return
        self._booted.set()
        self._make_spare_folder()
        while (request := self._queue.get()) is not None:
            handle = request.handle
            if handle.cancelled:
                handle.future.set_result(
                    _failed("cancelled", "the job was cancelled before it started")
                )
                continue
            try:
                result = loop.run_until_complete(self._run_one(request))
            except BaseException as exc:  # never lose the thread
                log.exception("internal error while running a prompt")
                result = _failed("internal_error", f"{type(exc).__name__}: {exc}")
            handle.future.set_result(result)
            self._make_spare_folder()  # the result is out: this is idle time
        _cancel_queued(self._queue)
        while not self._spare.empty():
            (self._comfy.output_dir / self._spare.get_nowait()).rmdir()
        loop.close()

    def _make_spare_folder(self) -> None:
        """Have one run folder ready for the next :meth:`workspace`."""
        if not self._spare.empty():
            return
        assert self._comfy is not None
        name = _run_name("run")
        (self._comfy.output_dir / name).mkdir()
        self._spare.put(name)

    def _make_prompt_executor(self, comfy: Comfy) -> Any:
        cache_type = comfy.execution.CacheType.CLASSIC
        cache_args = {"lru": 0, "ram": 0, "ram_inactive": 0}  # all three: 0.3.75 and 0.33
        return comfy.execution.PromptExecutor(
            comfy.server, cache_type=cache_type, cache_args=cache_args
        )

    def _install_hooks(self, comfy: Comfy) -> None:
        import comfy.utils as comfy_utils

        try:
            from comfy_execution.progress import get_progress_state
        except ImportError:  # older ComfyUI: no per-node progress registry
            get_progress_state = None
        try:
            from comfy_execution.utils import get_executing_context
        except ImportError:
            get_executing_context = None
        throw_if_interrupted = comfy.model_management.throw_exception_if_processing_interrupted

        def hook(value, total, preview_image, prompt_id=None, node_id=None, **_: Any) -> None:
            # Interrupt checks happen here too, so cancel lands mid-sampler, not after it.
            throw_if_interrupted()
            if node_id is None and get_executing_context is not None:
                context = get_executing_context()
                node_id = context.node_id if context is not None else None
            node_id = node_id or comfy.server.last_node_id
            if get_progress_state is not None and node_id is not None:
                get_progress_state().update_progress(node_id, value, total, preview_image)
            if self._tracker is not None:
                self._tracker.on_step(value, total, node_id, preview_image)

        comfy_utils.set_progress_bar_global_hook(hook)
        _quiet_web_ui_progress(comfy.execution)

    async def _run_one(self, request: _Request) -> RunResult:
        comfy = self._comfy
        assert comfy is not None
        handle, ws, prompt = request.handle, request.workspace, request.prompt
        prompt_id = str(uuid.uuid4())
        result = RunResult(prompt_id)
        started = time.perf_counter()

        tracker = ProgressTracker(prompt, request.on_progress, request.previews)

        def listener(event: str, data: Any) -> None:
            if event == "execution_start" and (handle.cancelled or handle.timed_out):
                comfy.nodes.interrupt_processing(True)  # execute() cleared an earlier interrupt
            tracker.on_event(event, data)

        refused = checks.unsafe_file_names(prompt)  # before the prefixes are rewritten
        if refused is not None:
            result.error = refused
            return result
        prefixes = _isolate_outputs(prompt, ws.name)
        inputs = ws.input_dir if ws.input_dir.is_dir() else comfy.empty_input
        comfy.folder_paths.set_input_directory(str(inputs))
        comfy.server.listener, self._tracker = listener, tracker
        if handle.timeout_s is not None:
            handle._timer = threading.Timer(max(handle.timeout_s, 0.0), handle._expire)
            handle._timer.daemon = True
            handle._timer.start()
        with self._lock:
            self._current = handle
        # This run's ui outputs; stays None unless it executed (the executor's
        # ``history_result`` still holds the previous run's until then).
        ui_outputs: dict[str, Any] | None = None
        try:
            checked = await self._validate(comfy, prompt_id, prompt)
            result.timings["validate_s"] = time.perf_counter() - started
            if isinstance(checked, JobError):
                result.error = checked
                return result
            outputs, result.warnings = checked
            if handle.cancelled or handle.timed_out:
                result.error = _interrupted(handle, None)
                return result
            executed_at = time.perf_counter()
            with jobcontext.active(request.context), _preview_method(tracker.previews) as method:
                await self._prompt_executor.execute_async(
                    prompt, prompt_id, _extra_data(prompt_id, method, request.context), outputs
                )
            result.timings["execute_s"] = time.perf_counter() - executed_at
            ui_outputs = self._prompt_executor.history_result.get("outputs", {})
            result.error, result.unhealthy = _execution_error(
                self._prompt_executor.status_messages, prompt, handle
            )
            if result.error is None:
                result.files, result.datas = collect(
                    ui_outputs, prompt.keys(), {"output": comfy.output_dir}
                )
                restore_prefixes(result.files, prefixes)
            if result.error is not None and result.error.code == "out_of_memory":
                comfy.model_management.soft_empty_cache()
            return result
        finally:
            with self._lock:
                self._current = None
            if handle._timer is not None:
                handle._timer.cancel()
            comfy.nodes.interrupt_processing(False)
            comfy.server.listener, self._tracker = None, None
            comfy.folder_paths.set_input_directory(str(comfy.empty_input))
            if ui_outputs:
                _remove_temp_files(ui_outputs, comfy.temp_dir)

    async def _validate(
        self, comfy: Comfy, prompt_id: str, prompt: dict[str, Any]
    ) -> JobError | tuple[list[str], list[str]]:
        """ComfyUI's own validation: the output nodes to run and a line for each output it
        dropped as invalid (it runs the rest), or the error when none is valid."""
        known = comfy.nodes.NODE_CLASS_MAPPINGS
        replacer = getattr(comfy.server, "node_replace_manager", None)
        if replacer is not None:  # before the unknown-type check: replaced types are unknown
            _replace_deprecated_nodes(replacer, prompt, known)
        refused = checks.unknown_node_types(
            prompt, known, comfy.failed_modules
        ) or checks.escaping_files(prompt, known)
        if refused:
            return refused
        try:
            ok, error, good_outputs, node_errors = await comfy.execution.validate_prompt(
                prompt_id, prompt, None
            )
        except Exception as exc:  # malformed prompts can trip ComfyUI's validator itself
            return JobError("invalid_input", f"the workflow could not be validated: {exc}")
        if ok:
            return list(good_outputs), checks.skipped_outputs(node_errors, prompt)
        # ComfyUI reports a cycle as a bare "Prompt outputs failed validation", naming nothing
        # (0.3.75), or as ``dependency_cycle`` node errors (0.33): one message on both.
        cycle = checks.cycle_error(prompt) if checks.only_cycles(node_errors) else None
        return cycle or checks.validation_error(error, node_errors, prompt)


def _own_copy(prompt: Mapping[str, Any]) -> dict[str, Any]:
    """The prompt with its own node and ``inputs`` dicts: what the run changes (output
    prefixes, ``_meta``, ComfyUI's converted input values) never reaches the caller's.
    Input values themselves are shared, as ComfyUI only reads them; a deep copy cost
    more than validating the prompt."""
    return {
        node_id: {**node, "inputs": dict(node["inputs"])}
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict)
        else node
        for node_id, node in prompt.items()
    }


def _replace_deprecated_nodes(replacer: Any, prompt: dict[str, Any], known: Mapping) -> None:
    """Rewrite node types ComfyUI replaced (``T2IAdapterLoader`` → ``ControlNetLoader``,
    a typo's old spelling …) as its HTTP server does before validating (ComfyUI >= 0.33).

    Only when some node needs it: the rewrite walks every node, and it re-points links in
    place, which would reach the caller's link lists (``_own_copy`` shares input values),
    so those nodes' links are copied first.
    """
    stale = [
        node
        for node in prompt.values()
        if isinstance(node, dict)
        and isinstance(class_type := node.get("class_type"), str)
        and class_type not in known
        and replacer.has_replacement(class_type)
    ]
    if not stale:
        return
    for node_id, node in prompt.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if isinstance(inputs, dict):  # ComfyUI skips nodes without inputs
            links = {k: list(v) if isinstance(v, list) else v for k, v in inputs.items()}
            # ComfyUI's rewrite copies each node's ``_meta``, which API workflows may omit.
            meta = {"title": node.get("class_type", "")}
            prompt[node_id] = {"_meta": meta, **node, "inputs": links}
    try:
        replacer.apply_replacements(prompt)
    except Exception:  # a malformed prompt: the checks that follow name what is wrong
        log.debug("node replacement skipped on a malformed workflow", exc_info=True)


def _quiet_web_ui_progress(execution: Any) -> None:
    """Stop ComfyUI's web-UI progress handler from sending every node's state.

    ``PromptExecutor`` adds it to each prompt; on every node start, step and finish it
    builds a dict over *all* nodes for a browser, which is O(n²) per prompt (a workflow of
    10 000 output nodes spent a minute there). Nothing here reads those events.
    """
    base = getattr(execution, "WebUIProgressHandler", None)
    if base is None or getattr(base, "_headless", False):
        return

    class HeadlessProgressHandler(base):  # type: ignore[misc, valid-type]
        _headless = True

        def _send_progress_state(self, prompt_id: str, nodes: Any) -> None:
            pass

    execution.WebUIProgressHandler = HeadlessProgressHandler


@contextlib.contextmanager
def _preview_method(previews: bool) -> Iterator[str]:
    """The run's latent preview method (its name): none unless the job asked for previews
    (samplers then decode nothing), else the configured one or ``latent2rgb``, which needs
    no model. 0.3.75 reads ``args.preview_method`` when a sampler starts; 0.33 sets it from
    ``extra_data["preview_method"]`` per prompt. The configured method is restored after."""
    from comfy.cli_args import LatentPreviewMethod, args

    configured = args.preview_method
    if not previews:
        method = LatentPreviewMethod.NoPreviews
    elif configured == LatentPreviewMethod.NoPreviews:
        method = LatentPreviewMethod.Latent2RGB
    else:
        method = configured
    args.preview_method = method
    try:
        yield getattr(method, "value", str(method))
    finally:
        args.preview_method = configured


def _extra_data(
    prompt_id: str, preview_method: str, context: jobcontext.JobContext | None
) -> dict[str, Any]:
    extra: dict[str, Any] = {"client_id": f"comfyui-runpod-{prompt_id}"}
    if context is not None and context.comfy_org_api_key:
        extra["api_key_comfy_org"] = context.comfy_org_api_key  # as the frontend sends it
    import latent_preview

    if hasattr(latent_preview, "set_preview_method"):  # 0.33 resets it per prompt
        extra["preview_method"] = preview_method
    return extra


def _isolate_outputs(prompt: dict[str, Any], folder: str) -> dict[str, tuple[str, Any]]:
    """Prefix every ``filename_prefix`` with the run's folder: files land in its workspace.

    It also changes the save nodes' inputs, so an identical re-submitted workflow (even under
    the same job id) re-runs its save nodes and returns files, while upstream stays cached.
    Returns each changed node's (prefix given to ComfyUI, the user's value), so that the
    files' metadata can say what the user wrote.
    """
    changed: dict[str, tuple[str, Any]] = {}
    for node_id, node in prompt.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict) or "filename_prefix" not in inputs:
            continue
        prefix = inputs["filename_prefix"]
        if isinstance(prefix, list):  # a link: its value only exists at run time ...
            prefix = _app_text(prompt, prefix)
            if prefix is None:
                continue
        # A literal that is not a string is str()-ed by ComfyUI's validation: do it first.
        parts = str(prefix).replace("\\", "/").split("/")
        kept = [p for p in parts if p not in ("", ".", "..")] or ["ComfyUI"]
        if not isinstance(inputs["filename_prefix"], list):
            changed[str(node_id)] = ("/".join([folder, *kept]), inputs["filename_prefix"])
        inputs["filename_prefix"] = "/".join([folder, *kept])
    return changed


def _app_text(prompt: Mapping[str, Any], link: list[Any]) -> str | None:
    """... unless it comes from an app's text input node, whose value is known now."""
    source = prompt.get(str(link[0])) if len(link) == 2 else None
    if isinstance(source, dict) and source.get("class_type") == "RunPodInputString":
        value = source.get("inputs", {}).get("value")
        return value if isinstance(value, str) else None
    return None


def _execution_error(
    messages: list[tuple[str, dict[str, Any]]], prompt: Mapping[str, Any], handle: RunHandle
) -> tuple[JobError | None, bool]:
    for event, data in messages:
        if event == "execution_interrupted":
            return _interrupted(handle, data), False
        if event == "execution_error":
            node_id = str(data.get("node_id"))
            class_type = data.get("node_type") or prompt.get(node_id, {}).get("class_type")
            kind = str(data.get("exception_type", "Exception"))
            text = str(data.get("exception_message", "")).strip().splitlines()
            where = f"node {node_id} ({class_type})"
            detail = {"node_id": node_id, "class_type": class_type, "exception_type": kind}
            unhealthy = any(marker in " ".join(text) for marker in _UNHEALTHY_MARKERS)
            if "OutOfMemoryError" in kind:
                line = f"{where} ran out of memory; models were unloaded, try smaller sizes"
                return JobError("out_of_memory", line, detail), unhealthy
            first = text[0] if text else ""
            line = f"{where} raised {kind.rsplit('.', 1)[-1]}: {first}"
            return JobError("execution_failed", line, detail), unhealthy
    return None, False


def _interrupted(handle: RunHandle, data: Mapping[str, Any] | None) -> JobError:
    where = ""
    if data and data.get("node_id") is not None:
        where = f" at node {data['node_id']} ({data.get('node_type')})"
    if handle.timed_out:
        return JobError(
            "timeout", f"execution exceeded {handle.timeout_s:g}s and was stopped{where}"
        )
    return JobError("cancelled", f"the job was cancelled{where}")


def _failed(code: str, message: str) -> RunResult:
    return RunResult(prompt_id="", error=JobError(code, message))


def _cancel_queued(requests: queue.Queue[_Request | None]) -> None:
    """Settle every queued prompt as cancelled, without running it (a stop marker met
    on the way goes back, for the thread to stop on)."""
    stop = False
    while True:
        try:
            request = requests.get_nowait()
        except queue.Empty:
            break
        if request is None:
            stop = True
        elif not request.handle.future.done():
            result = _failed("cancelled", "the executor closed before the job started")
            request.handle.future.set_result(result)
    if stop:
        requests.put(None)


def _remove_temp_files(ui_outputs: Mapping[str, Any], temp_root: Path) -> None:
    """Previews are not outputs: delete those this prompt wrote (``temp_root`` is
    resolved at boot)."""
    for ui in ui_outputs.values():
        for value in (ui or {}).values():
            if not isinstance(value, list):
                continue
            for item in value:
                if isinstance(item, dict) and item.get("type") == "temp" and "filename" in item:
                    path = (temp_root / item.get("subfolder", "") / item["filename"]).resolve()
                    if path.is_relative_to(temp_root):
                        path.unlink(missing_ok=True)
