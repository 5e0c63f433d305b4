"""ComfyUI's surface that the seam relies on, pinned in one place (a "drift" test).

The seam (``executor/boot.py``, ``runner.py``, ``progress.py``, ``checks.py``,
``outputs.py``) talks to ComfyUI through module globals, duck-typed objects and tuples, so a
ComfyUI upgrade that renames one of them fails late and far away (a job that never
finishes, an empty ``files`` list). Every test here names what the seam expects and the
function that uses it, so an upgrade fails here first and says what changed.

It reads the booted ComfyUI two ways: live, on the session's ``executor`` fixture (no new
boot, a few millisecond-sized jobs), and statically, with ``ast`` over the same tree's
source (``executor.comfy.location.path``), for what ComfyUI *might* touch but a small job
does not reach. It runs on every ComfyUI CI tests (``make test``: 0.3.75 and 0.33.0); where
they differ, the test detects the feature (an attribute, a source line), never a version.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workflows
from comfyui_runpod.executor import Comfy, Executor, RunResult
from comfyui_runpod.executor.boot import HeadlessServer

#: Names ComfyUI uses for its server object (``execute(server, …)``, ``ProgressHandler``).
SERVER_NAMES = frozenset({"server", "server_instance"})


@pytest.fixture(scope="module")
def comfy(executor: Executor) -> Comfy:
    return executor.comfy


@functools.cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def member(owner: Any, name: str, used_by: str) -> Any:
    """``owner.name``, or a failure naming the seam function that needs it."""
    label = getattr(owner, "__name__", type(owner).__name__)
    assert hasattr(owner, name), f"{used_by} uses {label}.{name}, which this ComfyUI lacks"
    return getattr(owner, name)


def accepts(func: Any, *args: Any, used_by: str, **kwargs: Any) -> None:
    """Fail, naming ``used_by``, unless ``func`` can be called the way the seam calls it."""
    try:
        inspect.signature(func).bind(*args, **kwargs)
    except TypeError as exc:
        shown = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
        pytest.fail(
            f"{used_by} calls {func.__qualname__}({shown}), but its signature is now "
            f"{inspect.signature(func)}: {exc}"
        )


def call_shape(parent: ast.AST | None, attribute: ast.Attribute) -> tuple[int, tuple[str, ...]]:
    """(positional count, keyword names) when ``attribute`` is called; (-1, ()) otherwise."""
    if not isinstance(parent, ast.Call) or parent.func is not attribute:
        return -1, ()
    if any(isinstance(a, ast.Starred) for a in parent.args) or any(
        k.arg is None for k in parent.keywords
    ):
        return -1, ()  # *args / **kwargs: cannot be checked statically
    return len(parent.args), tuple(k.arg for k in parent.keywords if k.arg is not None)


def server_uses(root: Path) -> Iterator[tuple[str, str, tuple[int, tuple[str, ...]]]]:
    """(attribute, "file:line", call shape) for each use of ComfyUI's server object.

    Matches ``server.X`` / ``server_instance.X`` where that name is a function parameter
    (``execution.execute``), ``self.server.X`` / ``self.server_instance.X`` and
    ``PromptServer.instance.X`` (nodes and ``comfy_api`` reach it that way).
    """
    files = [root / "execution.py", root / "nodes.py", root / "comfy" / "utils.py"]
    for folder in ("comfy_execution", "comfy_api", "comfy_extras", "app"):
        files += sorted((root / folder).rglob("*.py"))
    for path in files:
        if "server" not in path.read_text(encoding="utf-8").lower():
            continue  # most of comfy_extras: skip the parse (~1 s for the lot)
        tree = parse(path)
        parents = {id(c): p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        params: dict[int, set[str]] = {}  # attribute node id → server-ish parameter names
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = func.args
                named = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
                for node in ast.walk(func):
                    params.setdefault(id(node), set()).update(named & SERVER_NAMES)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            value = node.value
            on_param = isinstance(value, ast.Name) and value.id in params.get(id(node), ())
            on_self = (
                isinstance(value, ast.Attribute)
                and isinstance(value.value, ast.Name)
                and value.value.id == "self"
                and value.attr in SERVER_NAMES
            )
            on_instance = (
                isinstance(value, ast.Attribute)
                and value.attr == "instance"
                and (
                    (isinstance(value.value, ast.Name) and value.value.id == "PromptServer")
                    or (
                        isinstance(value.value, ast.Attribute)
                        and value.value.attr == "PromptServer"
                    )
                )
            )
            if on_param or on_self or on_instance:
                where = f"{path.relative_to(root)}:{node.lineno}"
                yield node.attr, where, call_shape(parents.get(id(node)), node)


# -- the server stand-in ----------------------------------------------------------------


def test_headless_server_has_everything_comfyui_reads_on_the_server(comfy: Comfy) -> None:
    uses = list(server_uses(comfy.location.path))
    found = {attr for attr, _, _ in uses}
    assert {"client_id", "send_sync", "last_node_id"} <= found, (
        f"the scan of ComfyUI's source for server.X found only {sorted(found)}: ComfyUI "
        "renamed its server parameter; fix server_uses() before trusting this test"
    )
    server, problems = comfy.server, dict[str, list[str]]()
    for attr, where, (positional, keywords) in uses:
        if not hasattr(server, attr):
            problems.setdefault(f"server.{attr} is missing", []).append(where)
        elif positional >= 0 and callable(method := getattr(server, attr)):
            try:
                inspect.signature(method).bind(*range(positional), **dict.fromkeys(keywords))
            except TypeError as exc:
                key = f"server.{attr} refuses {positional} positional args {keywords}: {exc}"
                problems.setdefault(key, []).append(where)
    assert not problems, (
        "ComfyUI uses PromptServer.instance / PromptExecutor.server in ways HeadlessServer "
        "(executor/boot.py) does not support:\n"
        + "\n".join(
            f"{what} (used at {', '.join(wheres[:3])})" for what, wheres in problems.items()
        )
    )


def test_headless_server_is_the_prompt_server_instance(comfy: Comfy) -> None:
    import server

    assert server.PromptServer.instance is comfy.server, (
        "boot.py:boot installs HeadlessServer as server.PromptServer.instance before custom "
        "nodes load; nodes (send_progress_text) and 0.33's comfy_api reach it there"
    )
    assert isinstance(comfy.server, HeadlessServer)


def test_node_replace_manager_matches_this_comfyui(comfy: Comfy) -> None:
    manager = member(comfy.server, "node_replace_manager", "runner.py:Executor._validate")
    try:
        from app.node_replace_manager import NodeReplaceManager
    except ImportError:  # ComfyUI < 0.33: no deprecated-node rewriting
        assert manager is None, "boot.py:HeadlessServer.__init__ sets None before 0.33"
        return
    assert isinstance(manager, NodeReplaceManager), (
        "boot.py:HeadlessServer.__init__ must build app.node_replace_manager's "
        "NodeReplaceManager: comfy_api registers replacements on it while nodes load"
    )
    replace = member(manager, "apply_replacements", "runner.py:_replace_deprecated_nodes")
    accepts(replace, {}, used_by="runner.py:_replace_deprecated_nodes (as ComfyUI's server does)")
    has = member(manager, "has_replacement", "runner.py:_replace_deprecated_nodes")
    assert has("ConditioningAverage ") and not has("ImageInvert"), (
        "runner.py:_replace_deprecated_nodes asks has_replacement(class_type) first; ComfyUI "
        "registers its own replacements (comfy_extras/nodes_replacements.py) while nodes load"
    )


# -- PromptExecutor and validate_prompt --------------------------------------------------


def cache_arg_keys(execution_py: Path) -> set[str]:
    """Keys ComfyUI reads from ``cache_args`` (``cache_args["ram"]``, ``.get("lru", 0)``)."""
    keys = set()
    for node in ast.walk(parse(execution_py)):
        target, key = None, None
        if isinstance(node, ast.Subscript):
            target, key = node.value, node.slice
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
        ):
            target, key = node.func.value, node.args[0]
        name = getattr(target, "id", None) or getattr(target, "attr", None)
        if name == "cache_args" and isinstance(key, ast.Constant) and isinstance(key.value, str):
            keys.add(key.value)
    return keys


def test_prompt_executor_takes_server_cache_type_and_cache_args(
    comfy: Comfy, executor: Executor
) -> None:
    used_by = "runner.py:Executor._make_prompt_executor"
    execution = comfy.execution
    classic = member(member(execution, "CacheType", used_by), "CLASSIC", used_by)
    prompt_executor_type = member(execution, "PromptExecutor", used_by)
    accepts(prompt_executor_type, comfy.server, cache_type=classic, cache_args={}, used_by=used_by)
    prompt_executor = executor._prompt_executor  # the one the runner built at boot
    assert type(prompt_executor) is prompt_executor_type and (
        prompt_executor.cache_type == classic
    ), f"{used_by} builds a classic-cache PromptExecutor"
    passed = set(prompt_executor.cache_args)
    read = cache_arg_keys(comfy.location.path / "execution.py")
    assert {"ram", "lru"} <= read, f"the cache_args scan found only {read}: fix cache_arg_keys()"
    assert read <= passed, (
        f"execution.py reads cache_args keys {sorted(read - passed)} that {used_by} does not "
        f"pass (it passes {sorted(passed)})"
    )


def validate(comfy: Comfy, prompt: dict[str, Any]) -> tuple[Any, ...]:
    # ComfyUI's validation touches no server state; the executor thread is idle between tests.
    return asyncio.run(comfy.execution.validate_prompt("contract", prompt, None))


def test_validate_prompt_is_async_and_returns_four_items(comfy: Comfy) -> None:
    used_by = "runner.py:Executor._validate"
    validate_prompt = member(comfy.execution, "validate_prompt", used_by)
    assert inspect.iscoroutinefunction(validate_prompt), f"{used_by} awaits validate_prompt"
    accepts(validate_prompt, "prompt-id", {}, None, used_by=used_by)  # partial_execution_list
    good = validate(comfy, workflows.invert())
    assert isinstance(good, tuple) and len(good) == 4, (
        f"{used_by} unpacks (ok, error, good_outputs, node_errors); got {good!r}"
    )
    ok, error, good_outputs, node_errors = good
    assert (ok, list(good_outputs), node_errors) == (True, ["3"], {}), f"{used_by}: {good}"

    broken = workflows.invert()
    del broken["3"]["inputs"]["images"]
    ok, error, good_outputs, node_errors = validate(comfy, broken)
    assert ok is False and list(good_outputs) == [], f"{used_by}: {ok}, {good_outputs}"
    assert {"type", "message", "details"} <= set(error), (
        f"checks.py:validation_error reads error['message'] and ['details']; got {error}"
    )
    assert set(node_errors) == {"3"}, f"node_errors must be keyed by node id: {node_errors}"
    entry = node_errors["3"]
    assert entry.get("class_type") == "SaveImage" and entry.get("errors"), (
        f"checks.py:validation_error reads node_errors[id]['class_type'] and ['errors']: {entry}"
    )
    assert {"type", "message", "details"} <= set(entry["errors"][0]), (
        f"checks.py:validation_error reads each error's 'message' and 'details': {entry}"
    )


def test_comfyuis_own_unknown_type_refusal_reads_as_one_line(comfy: Comfy) -> None:
    """checks.py:unknown_node_types refuses unknown class types before ComfyUI validates
    (naming every node, and a module that failed to import), so ComfyUI's own refusal, whose
    type differs (0.3.75 ``invalid_prompt``, 0.33 ``missing_node_type`` with extra_info),
    never reaches a job; were it to, checks.py:validation_error must still name the type."""
    from comfyui_runpod.executor import checks

    prompt = workflows.invert()
    prompt["2"]["class_type"] = "NoSuchNode"
    ok, error, _, node_errors = validate(comfy, prompt)
    assert ok is False and not node_errors and error.get("type"), error
    line = checks.validation_error(error, node_errors, prompt).message
    assert "NoSuchNode" in line and "#2" in line, line
    refused = checks.unknown_node_types(prompt, comfy.nodes.NODE_CLASS_MAPPINGS)
    assert refused is not None and refused.detail["unknown_node_types"] == {"2": "NoSuchNode"}


# -- a run: history_result, status_messages, events ---------------------------------------


@pytest.fixture
def sent(comfy: Comfy, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any, Any]]:
    """Every (event, data, sid) ComfyUI sends to HeadlessServer during the test."""
    events: list[tuple[str, Any, Any]] = []
    forward = comfy.server.send_sync

    def record(event: str, data: Any, sid: str | None = None) -> None:
        events.append((event, data, sid))
        forward(event, data, sid)

    monkeypatch.setattr(comfy.server, "send_sync", record)
    return events


def run(executor: Executor, prompt: dict[str, Any], **kwargs: Any) -> RunResult:
    workspace = executor.workspace("contract")
    try:
        return executor.run(prompt, workspace, **kwargs)
    finally:
        workspace.cleanup()


def status_messages(executor: Executor) -> dict[str, Any]:
    """The last prompt's ``status_messages`` as {event: data}, checking their shape."""
    messages = executor._prompt_executor.status_messages
    assert isinstance(messages, list) and all(
        isinstance(m, tuple) and len(m) == 2 for m in messages
    ), f"runner.py:_execution_error iterates status_messages as [(event, data)]: {messages}"
    return dict(messages)


def test_a_run_fills_history_result_and_status_messages(
    executor: Executor, sent: list[tuple[str, Any, Any]]
) -> None:
    used_by = "runner.py:Executor._run_one"
    execute_async = member(executor.comfy.execution.PromptExecutor, "execute_async", used_by)
    assert inspect.iscoroutinefunction(execute_async), f"{used_by} awaits execute_async"
    accepts(execute_async, None, {}, "prompt-id", {}, [], used_by=used_by)
    result = run(executor, workflows.invert(7))
    assert result.error is None, result.error

    history = executor._prompt_executor.history_result
    assert {"outputs", "meta"} <= set(history), (
        f"{used_by} reads history_result['outputs']; its keys are now {sorted(history)}"
    )
    [image] = history["outputs"]["3"]["images"]
    assert {"filename", "subfolder", "type"} <= set(image) and image["type"] == "output", (
        "outputs.py:collect expects SaveImage's ui {'images': [{filename, subfolder, type}]}"
        f"; got {history['outputs']['3']}"
    )
    assert image["subfolder"] == result.files[0].subfolder  # filename_prefix "ws/x" → "ws"

    messages = status_messages(executor)
    assert {"execution_start", "execution_cached", "execution_success"} <= set(messages), (
        f"progress.py:ProgressTracker.on_event and runner.py match these events: {messages}"
    )
    assert isinstance(messages["execution_cached"].get("nodes"), list), (
        "progress.py:ProgressTracker.on_event reads execution_cached['nodes']"
    )
    names = {event for event, _, _ in sent}
    assert {"execution_start", "execution_cached", "executing", "execution_success"} <= names, (
        f"progress.py:ProgressTracker.on_event matches these sent events; got {sorted(names)}"
    )
    executing = [data for event, data, _ in sent if event == "executing"]
    assert "3" in {data.get("node") for data in executing}, (
        f"progress.py:ProgressTracker.on_event reads executing['node']: {executing}"
    )
    client_id = executor._prompt_executor.server.client_id
    assert client_id is not None and {sid for _, _, sid in sent} == {client_id}, (
        "ComfyUI sends per-node events only to extra_data['client_id'] (runner.py:_extra_data)"
    )


def test_a_raising_node_gives_execution_error_with_its_details(executor: Executor) -> None:
    prompt = workflows.invert()
    prompt["2"] = {"class_type": "TestRaise", "inputs": {"image": ["1", 0], "message": "boom"}}
    result = run(executor, prompt)
    messages = status_messages(executor)
    assert "execution_error" in messages, f"runner.py:_execution_error looks for it: {messages}"
    data = messages["execution_error"]
    assert {"node_id", "node_type", "exception_message", "exception_type"} <= set(data), (
        f"runner.py:_execution_error reads these keys of execution_error: {sorted(data)}"
    )
    assert (data["node_id"], data["node_type"]) == ("2", "TestRaise"), data
    assert data["exception_type"].rsplit(".", 1)[-1] == "ValueError", data["exception_type"]
    assert data["exception_message"].strip() == "boom", data["exception_message"]
    assert result.error is not None and result.error.code == "execution_failed", result.error


def test_an_interrupt_gives_execution_interrupted(executor: Executor) -> None:
    result = run(executor, workflows.slow(steps=40, delay=0.05), timeout_s=0.3)
    messages = status_messages(executor)
    assert "execution_interrupted" in messages, (
        f"runner.py:_execution_error maps execution_interrupted to timeout/cancel: {messages}"
    )
    data = messages["execution_interrupted"]
    assert {"node_id", "node_type"} <= set(data), f"runner.py:_interrupted reads them: {data}"
    assert result.error is not None and result.error.code == "timeout", result.error


def test_execute_async_clears_an_interrupt_before_execution_start(comfy: Comfy) -> None:
    source = inspect.getsource(comfy.execution.PromptExecutor.execute_async)
    clear = source.find("interrupt_processing(False)")
    start = source.find('"execution_start"')
    assert 0 <= clear < start, (
        "runner.py:Executor._run_one re-interrupts on execution_start because execute_async "
        "clears pending interrupts before sending it; that order changed"
    )


# -- module-level functions the seam calls -------------------------------------------------


def test_nodes_module(comfy: Comfy) -> None:
    nodes = comfy.nodes
    interrupt = member(nodes, "interrupt_processing", "runner.py (cancel, deadlines)")
    accepts(interrupt, True, used_by="runner.py:Executor._interrupt_if_running")
    init = member(nodes, "init_extra_nodes", "boot.py:boot")
    assert inspect.iscoroutinefunction(init), "boot.py:boot runs init_extra_nodes on its loop"
    accepts(init, init_custom_nodes=True, init_api_nodes=False, used_by="boot.py:boot")
    for name in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
        used_by = "boot.py:_register_own_nodes, checks.py"
        assert isinstance(member(nodes, name, used_by), dict), f"{used_by}: nodes.{name}"


def test_interrupt_flag_round_trip(comfy: Comfy) -> None:
    used_by = "runner.py:Executor._install_hooks (the progress hook)"
    model_management = comfy.model_management
    throw = member(model_management, "throw_exception_if_processing_interrupted", used_by)
    try:
        comfy.nodes.interrupt_processing(True)
        with pytest.raises(model_management.InterruptProcessingException):
            throw()
    finally:
        comfy.nodes.interrupt_processing(False)
    throw()  # cleared: runner.py:Executor._run_one clears it after every prompt


def test_model_management(comfy: Comfy) -> None:
    import torch

    model_management = comfy.model_management
    device = member(model_management, "get_torch_device", "boot.py:boot")()
    assert isinstance(device, torch.device), f"boot.py:boot reports it: {device!r}"
    member(model_management, "soft_empty_cache", "runner.py:_run_one (out_of_memory)")()


def test_folder_paths(comfy: Comfy) -> None:
    folder_paths = comfy.folder_paths
    for name in ("output", "temp", "input", "user"):
        setter = member(folder_paths, f"set_{name}_directory", "boot.py:boot")
        accepts(setter, "/folder", used_by="boot.py:boot, runner.py:Executor._run_one")
    add = member(folder_paths, "add_model_folder_path", "boot.py:boot, tests/conftest.py")
    accepts(add, "custom_nodes", "/folder", used_by="boot.py:boot")
    get = member(folder_paths, "get_directory_by_type", "outputs.py:collect via runner.py")
    roots = {kind: get(kind) for kind in ("output", "temp", "input")}
    assert roots == {
        "output": str(comfy.output_dir),
        "temp": str(comfy.temp_dir),
        "input": str(comfy.empty_input),
    }, f"outputs.py:collect resolves ui file entries against these: {roots}"
    assert get("no-such-type") is None, "outputs.py:collect skips unknown types by None"
    custom = [Path(p) for p in folder_paths.get_folder_paths("custom_nodes")]
    assert Path(__file__).parent / "custom_nodes" in custom, (
        "boot.py:boot adds node packs with add_model_folder_path('custom_nodes', dir)"
    )
    import utils.extra_config

    load = member(utils.extra_config, "load_extra_path_config", "boot.py:boot")
    accepts(load, "extra_model_paths.yaml", used_by="boot.py:boot")


def test_cli_args_the_seam_sets_and_reads() -> None:
    from comfy.cli_args import args

    member(args, "cpu", "boot.py:boot (set before model_management loads)")
    member(args, "preview_method", "runner.py:_preview_method")


def test_per_prompt_preview_method_is_passed_where_comfyui_resets_it(comfy: Comfy) -> None:
    """ComfyUI 0.33 sets the preview method from each prompt's extra_data (None: its start-up
    default); runner.py:_extra_data passes the run's method where that hook exists."""
    import latent_preview
    from comfyui_runpod.executor.runner import _extra_data

    source = inspect.getsource(comfy.execution.PromptExecutor.execute_async)
    if not hasattr(latent_preview, "set_preview_method"):
        assert "preview_method" not in source, "execute_async reads a preview method"
        assert "preview_method" not in _extra_data("p", "latent2rgb", None)
        return
    assert 'set_preview_method(extra_data.get("preview_method"))' in source, (
        "runner.py:_extra_data passes extra_data['preview_method'] for execute_async to read"
    )
    assert _extra_data("p", "latent2rgb", None)["preview_method"] == "latent2rgb"


# -- progress: the runner's hook and ComfyUI's progress registry ---------------------------


def test_progress_bar_calls_the_runners_global_hook(comfy: Comfy) -> None:
    import comfy.utils as comfy_utils

    used_by = "runner.py:Executor._install_hooks"
    member(comfy_utils, "set_progress_bar_global_hook", used_by)
    hook = member(comfy_utils, "PROGRESS_BAR_HOOK", used_by)
    assert hook is not None and "_install_hooks" in hook.__qualname__, (
        f"{used_by} sets comfy.utils' global progress hook once, at boot: {hook!r}"
    )
    bar = comfy_utils.ProgressBar(2)
    assert bar.hook is hook, f"{used_by} relies on ProgressBar taking the global hook"
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    bar.hook = lambda *args, **kwargs: calls.append((args, kwargs))
    bar.update(1)
    bar.update_absolute(2)
    assert calls, "ProgressBar.update no longer calls its hook"
    for args, kwargs in calls:  # today (value, total, preview, node_id=…)
        accepts(hook, *args, **kwargs, used_by="comfy.utils.ProgressBar (the runner's hook)")


def test_progress_registry_and_executing_context() -> None:
    from comfy_execution import progress, utils

    used_by = "runner.py:Executor._install_hooks (degrades silently without them)"
    get_context = member(utils, "get_executing_context", used_by)
    assert get_context() is None, "no node runs outside a prompt"
    assert "node_id" in member(utils, "ExecutionContext", used_by)._fields, used_by
    registry = member(progress, "get_progress_state", used_by)()
    accepts(registry.update_progress, "1", 1.0, 2.0, None, used_by=used_by)


def test_progress_events_name_the_running_node(executor: Executor) -> None:
    events: list[dict[str, Any]] = []
    run(executor, workflows.slow(steps=3, delay=0), on_progress=events.append)
    steps = [e for e in events if e["event"] == "step"]
    assert steps and {e["node"] for e in steps} == {"2"}, (
        "runner.py:_install_hooks resolves the node of a ProgressBar update (node_id=, the "
        f"executing context or server.last_node_id): {steps}"
    )


def test_web_ui_progress_handler_is_replaced_by_the_quiet_one(comfy: Comfy) -> None:
    used_by = "runner.py:_quiet_web_ui_progress"
    handler = member(comfy.execution, "WebUIProgressHandler", used_by)
    assert getattr(handler, "_headless", False), f"{used_by} swaps WebUIProgressHandler"
    base = handler.__mro__[1]
    accepts(base._send_progress_state, None, "prompt-id", {}, used_by=used_by)
    assert "self._send_progress_state(" in inspect.getsource(base), (
        f"ComfyUI's WebUIProgressHandler no longer sends through _send_progress_state: the "
        f"override in {used_by} does nothing"
    )
    source = inspect.getsource(comfy.execution.PromptExecutor.execute_async)
    assert "WebUIProgressHandler(self.server)" in source, (
        f"execute_async must build the handler by its module-global name for {used_by} to work"
    )


# -- what the lazy boot relies on (executor/nodeindex.py, executor/dynamic_vram.py) --------


def _function(tree: ast.Module, name: str) -> ast.AsyncFunctionDef | ast.FunctionDef:
    found = [
        node
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name
    ]
    assert found, f"nodes.py has no {name}"
    return found[0]


def test_init_extra_nodes_is_the_four_steps_the_lazy_boot_replays(comfy: Comfy) -> None:
    """boot.py:_load_nodes replaces ``init_extra_nodes`` by its own steps minus the two
    built-in ones: a new step here would be skipped by every lazy boot."""
    tree = parse(comfy.location.path / "nodes.py")
    calls = [
        node.value.func.id
        for node in ast.walk(_function(tree, "init_extra_nodes"))
        if isinstance(node, ast.Await)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
    ]
    assert calls == [
        "init_public_apis",
        "init_builtin_extra_nodes",
        "init_builtin_api_nodes",
        "init_external_custom_nodes",
    ], f"boot.py:_load_nodes: init_extra_nodes now awaits {calls}"
    load = member(comfy.nodes, "load_custom_node", "boot.py:_load_nodes, nodeindex.recording")
    assert inspect.iscoroutinefunction(load)
    accepts(load, "/m.py", module_parent="comfy_extras", used_by="boot.py:_load_nodes")


def test_custom_packs_cannot_take_a_built_in_name(comfy: Comfy) -> None:
    """The ignore set is read from ``NODE_CLASS_MAPPINGS.keys()``, which lists the types
    not imported yet: a pack cannot shadow one, as with the server."""
    tree = parse(comfy.location.path / "nodes.py")
    source = ast.unparse(_function(tree, "init_external_custom_nodes"))
    assert "base_node_names = set(NODE_CLASS_MAPPINGS.keys())" in source
    assert "load_custom_node(module_path, base_node_names" in source


def test_comfyui_reads_the_node_classes_through_the_nodes_module() -> None:
    """Replacing ``nodes.NODE_CLASS_MAPPINGS`` reaches every reader only if none holds
    the original dict: no ComfyUI module may ``from nodes import NODE_CLASS_MAPPINGS``."""
    from comfyui_runpod.executor import find_comfyui

    root = find_comfyui().path
    files = [root / name for name in ("execution.py", "server.py", "main.py")]
    for folder in ("comfy", "comfy_execution", "comfy_api", "comfy_extras", "app"):
        files += sorted((root / folder).rglob("*.py"))
    holders = [
        f"{path.relative_to(root)}:{node.lineno}"
        for path in files
        if "NODE_CLASS_MAPPINGS" in path.read_text(encoding="utf-8")
        for node in ast.walk(parse(path))
        if isinstance(node, ast.ImportFrom)
        and node.module == "nodes"
        and any(alias.name == "NODE_CLASS_MAPPINGS" for alias in node.names)
    ]
    assert holders == [], f"boot.py:_load_nodes: these keep the original dict: {holders}"


#: ``main.py``'s DynamicVRAM steps (``ast.dump`` digests, line numbers left out), as
#: executor/dynamic_vram.py repeats them. When this fails, read the new code in main.py,
#: make dynamic_vram.py do the same, then record the new digests here.
MAIN_DYNAMIC_VRAM = {
    "if enables_dynamic_vram(): ...control.init": "50b7a21aa567c55b",
    "def dynamic_vram_supported": "8dbd3fd4b6cc68ea",
    "if args.enable_dynamic_vram or ...: ...init_devices": "5dc8a3aa9b20186c",
}


def test_dynamic_vram_boots_as_main_py_does(comfy: Comfy, test_device: str) -> None:
    import hashlib

    from comfy import cli_args

    if not hasattr(cli_args, "enables_dynamic_vram"):
        assert comfy.model_patcher.startswith("ModelPatcher (this ComfyUI has no")
        return
    tree = parse(comfy.location.path / "main.py")
    steps = [
        node
        for node in tree.body
        if (isinstance(node, ast.If) and "enables_dynamic_vram" in ast.unparse(node.test))
        or (isinstance(node, ast.FunctionDef) and node.name == "dynamic_vram_supported")
    ]
    digests = [hashlib.sha256(ast.dump(node).encode()).hexdigest()[:16] for node in steps]
    assert digests == list(MAIN_DYNAMIC_VRAM.values()), (
        "main.py changed how it starts DynamicVRAM: update executor/dynamic_vram.py"
    )
    imports = {
        alias.name: node.lineno
        for node in tree.body
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert steps[0].lineno < imports["execution"] < steps[-1].lineno, (
        "dynamic_vram.init_early runs before the model code is imported, init_devices after"
    )
    expected = "ModelPatcherDynamic" if test_device == "gpu" else "ModelPatcher (DynamicVRAM"
    assert comfy.model_patcher.startswith(expected), comfy.model_patcher
