"""Boot a real ComfyUI inside this process — no HTTP server, no websocket.

Order matters and follows ComfyUI's own ``main.py``:
CLI args before ``comfy.model_management`` is imported, ``utils.extra_config`` before
``nodes``, the server stand-in installed before custom nodes load.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from . import dynamic_vram, nodeindex, packs, readahead
from .deferred_imports import deferring, lazily
from .locate import ComfyLocation, find_comfyui, is_comfyui_tree, read_version
from .node_imports import FailedModule, ImportReport

log = logging.getLogger(__name__)

Listener = Callable[[str, Any], None]
#: What ComfyUI's ``server`` imports for its HTTP server alone (0.33: the assets database,
#: SQLAlchemy, Alembic): stand-ins until first use, as this process serves no ComfyUI HTTP.
SERVER_ONLY = ("app.assets",)
#: What ComfyUI imports at start for model families and features a job may never use —
#: its model architectures and text encoders, and the third-party modules only they or a
#: compile need (torch._dynamo alone is ~1 s) — as (names, prefixes): each module's code
#: runs on first use (executor/deferred_imports.py ``lazily``).
LAZY_MODULES = (
    ("torch._dynamo", "torchvision", "scipy.stats", "comfy.sd1_clip", "comfy.sdxl_clip"),
    ("comfy.text_encoders.", "comfy.ldm."),
)


@dataclass
class BootSettings:
    """How to boot ComfyUI. Every field has a working default."""

    work_dir: Path
    comfyui_path: Path | None = None
    #: None: CUDA when torch sees a GPU, CPU otherwise.
    cpu: bool | None = None
    #: Extra ComfyUI CLI flags by attribute name, e.g. {"lowvram": True, "fp16_vae": True}.
    comfy_args: Mapping[str, Any] = field(default_factory=dict)
    extra_model_paths: tuple[Path, ...] = ()
    #: Folders scanned for custom nodes besides ComfyUI's own ``custom_nodes/``.
    custom_node_dirs: tuple[Path, ...] = ()
    load_custom_nodes: bool = True
    #: ComfyUI's partner (API) nodes (``comfy_api_nodes/``), on as in ComfyUI's server;
    #: ``comfy_args={"disable_api_nodes": True}`` turns them off too, as in ``main.py``.
    load_api_nodes: bool = True
    #: Import each of ComfyUI's built-in node modules when a type of it is first asked
    #: for (executor/nodeindex.py), once an index of them exists, and its model families
    #: on first use (``LAZY_MODULES``); False imports everything at boot, as ComfyUI's
    #: server does (and rebuilds the index).
    lazy: bool = True
    #: Where the node index is cached (default: ``~/.cache/comfyui-runpod/node-index``).
    node_index_dir: Path | None = None
    #: Model file names (the warmup's) to read into memory while ComfyUI imports.
    read_ahead: tuple[str, ...] = ()


@dataclass
class Comfy:
    """Handles on the booted ComfyUI modules that the runner uses."""

    location: ComfyLocation
    device: str
    boot_s: float
    server: HeadlessServer
    execution: ModuleType
    nodes: ModuleType
    folder_paths: ModuleType
    model_management: ModuleType
    output_dir: Path
    temp_dir: Path
    #: ComfyUI's input folder between jobs and for jobs without input media: always empty.
    empty_input: Path
    #: Parent of the per-job input folders.
    job_inputs: Path
    #: Node modules (ComfyUI's own and custom packs) that failed to import at boot, or
    #: on first use.
    failed_modules: list[FailedModule]
    #: Which model patcher loads models: DynamicVRAM's where ComfyUI's ``main.py`` uses it.
    model_patcher: str = "ModelPatcher"
    #: The node index this boot read or wrote (None: it could not be saved).
    node_index: Path | None = None


class HeadlessServer:
    """What ``PromptExecutor`` and nodes touch on ComfyUI's ``PromptServer``, minus HTTP.

    Events go to ``listener`` (the runner's per-job progress tap) instead of a websocket.
    ``routes`` exists so that custom nodes that register HTTP routes at import still load.
    """

    def __init__(self) -> None:
        from aiohttp import web

        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict[str, Any] = {}
        self.supports: list[str] = []
        self.routes = web.RouteTableDef()
        self.app = web.Application()
        self.listener: Listener | None = None
        try:  # ComfyUI >= 0.33: deprecated node types are rewritten before validation
            from app.node_replace_manager import NodeReplaceManager

            self.node_replace_manager = NodeReplaceManager()
        except ImportError:
            self.node_replace_manager = None

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        if self.listener is not None:
            self.listener(event, data)

    def send_progress_text(self, text: str, node_id: str, sid: str | None = None) -> None:
        self.send_sync("progress_text", {"node": node_id, "text": text}, sid)

    def queue_updated(self) -> None:
        pass


def _resolve(settings: BootSettings) -> ComfyLocation:
    if settings.comfyui_path is None:
        return find_comfyui()
    path = settings.comfyui_path.expanduser().resolve()
    if not is_comfyui_tree(path):
        from .locate import ComfyUINotFound

        raise ComfyUINotFound(f"{path} is not a ComfyUI folder")
    return ComfyLocation(path, "settings", read_version(path))


def boot(settings: BootSettings, loop: asyncio.AbstractEventLoop) -> Comfy:
    """Import and initialise ComfyUI once; ``loop`` runs its async node loading."""
    started = time.perf_counter()
    location = _resolve(settings)
    log.info("booting %s", location.describe())
    if str(location.path) not in sys.path:
        sys.path.insert(0, str(location.path))

    import torch
    from comfy.cli_args import args

    cpu = settings.cpu if settings.cpu is not None else not torch.cuda.is_available()
    args.cpu = cpu
    for name, value in settings.comfy_args.items():
        if not hasattr(args, name):
            raise ValueError(f"unknown ComfyUI flag {name!r}")
        setattr(args, name, value)

    import folder_paths
    import utils.extra_config  # before `nodes`: it puts comfy/ first on sys.path

    work = settings.work_dir.resolve()
    dirs = {name: work / name for name in ("output", "temp", "input", "job-inputs", "user")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(dirs["output"]))
    folder_paths.set_temp_directory(str(dirs["temp"]))
    folder_paths.set_input_directory(str(dirs["input"]))
    folder_paths.set_user_directory(str(dirs["user"]))
    for yaml_path in settings.extra_model_paths:
        utils.extra_config.load_extra_path_config(str(yaml_path))
    for custom_dir in settings.custom_node_dirs:
        folder_paths.add_model_folder_path("custom_nodes", str(Path(custom_dir).resolve()))
        packs.add_requirement_paths(custom_dir)  # `nodes install` put them beside the packs
    _drop_missing_node_folders(folder_paths)
    readahead.start(folder_paths, settings.read_ahead)

    dynamic_vram.init_early(args)
    with lazily(*LAZY_MODULES if settings.lazy else ((), ())) as unused:
        import comfy.model_management as model_management
        import execution

        patcher = dynamic_vram.init_devices(args, model_management)
        import nodes

    with deferring(SERVER_ONLY) as deferred:
        import server
    log.debug("deferred until first use: %s", ", ".join(deferred()) or "nothing")
    log.debug("not run until first use: %s", ", ".join(unused()) or "nothing")

    headless = HeadlessServer()
    server.PromptServer.instance = headless
    _register_own_nodes(nodes)
    api_nodes = settings.load_api_nodes and not getattr(args, "disable_api_nodes", False)
    index_file, failed = _load_nodes(nodes, location, settings, api_nodes, loop)
    _redact_api_request_logs()
    # ~0.5 M long-lived objects now exist: keep them out of every later full collection
    # (130-460 ms each) and out of interpreter teardown (1.5 s at `run` exit).
    gc.collect()
    gc.freeze()
    device = str(model_management.get_torch_device())
    elapsed = time.perf_counter() - started
    mappings = nodes.NODE_CLASS_MAPPINGS
    pending = len(mappings) - dict.__len__(mappings)
    log.info(
        "ComfyUI %s ready on %s in %.1fs: %d node types%s%s",
        location.version,
        device,
        elapsed,
        len(mappings),
        f" ({pending} of them imported on first use)" if pending else "",
        f", {len(failed)} node modules failed to import (above)" if failed else "",
    )
    return Comfy(
        location=location,
        device=device,
        boot_s=elapsed,
        server=headless,
        execution=execution,
        nodes=nodes,
        folder_paths=folder_paths,
        model_management=model_management,
        output_dir=dirs["output"],
        temp_dir=dirs["temp"],
        empty_input=dirs["input"],
        job_inputs=dirs["job-inputs"],
        failed_modules=failed,
        model_patcher=patcher,
        node_index=index_file,
    )


def _load_nodes(
    nodes: ModuleType,
    location: ComfyLocation,
    settings: BootSettings,
    api_nodes: bool,
    loop: asyncio.AbstractEventLoop,
) -> tuple[Path | None, list[FailedModule]]:
    """ComfyUI's ``init_extra_nodes``, minus the built-in node modules when an index of
    them exists: those then load on first use. Returns the index file and the node modules
    that failed (a list that grows if one fails on first use)."""
    key = nodeindex.index_key(location.path, api_nodes)
    directory = settings.node_index_dir or nodeindex.cache_dir()
    index = nodeindex.load(key, directory) if settings.lazy else None
    report = ImportReport(location.path)
    if index is None:
        with report.capturing(), nodeindex.recording(nodes, key) as make_index:
            loop.run_until_complete(
                nodes.init_extra_nodes(
                    init_custom_nodes=settings.load_custom_nodes, init_api_nodes=api_nodes
                )
            )
        return nodeindex.save(make_index(report.failed), directory), report.failed
    failed = list(index.failed)
    for module in failed:
        log.warning("node module failed to import: %s", module.line)

    def load(provider: nodeindex.Provider, final: bool) -> bool:
        """One try; a failure is reported only when ``final`` (a retry may follow)."""
        first_use = ImportReport(location.path)
        with first_use.capturing(report=final):
            nodeindex.run_now(nodes.load_custom_node(provider.path, module_parent=provider.parent))
        _redact_api_request_logs()  # a partner-node module may have brought the logger
        if final:
            failed.extend(first_use.failed)
        return not first_use.failed

    nodes.NODE_CLASS_MAPPINGS = nodeindex.LazyNodeClasses(
        nodes.NODE_CLASS_MAPPINGS, index.providers, load
    )
    for name, title in index.display_names.items():
        nodes.NODE_DISPLAY_NAME_MAPPINGS.setdefault(name, title)
    with report.capturing():
        loop.run_until_complete(nodes.init_public_apis())
        for provider in index.at_boot:
            loop.run_until_complete(
                nodes.load_custom_node(provider.path, module_parent=provider.parent)
            )
        if settings.load_custom_nodes:
            loop.run_until_complete(nodes.init_external_custom_nodes())
    failed.extend(report.failed)
    return directory / f"{key}.json", failed


def _register_own_nodes(nodes: ModuleType) -> None:
    """Make this pack's nodes available even when it is not in ``custom_nodes/``."""
    from ..nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    for name, cls in NODE_CLASS_MAPPINGS.items():
        nodes.NODE_CLASS_MAPPINGS.setdefault(name, cls)
    for name, title in NODE_DISPLAY_NAME_MAPPINGS.items():
        nodes.NODE_DISPLAY_NAME_MAPPINGS.setdefault(name, title)


#: Request headers that carry a Comfy.org credential (``comfy_api_nodes/util/_helpers.py``).
_SECRET_HEADERS = frozenset({"authorization", "x-api-key"})


def _redact_api_request_logs() -> None:
    """ComfyUI's API client writes every partner-node request to ``<temp>/api_logs``;
    before 0.33 with its headers as sent, the job's Comfy.org key among them. Redact them
    on every version (0.33 already does: redacting twice changes nothing)."""
    logger = sys.modules.get("comfy_api_nodes.util.request_logger")
    write = getattr(logger, "log_request_response", None)
    if write is None or getattr(write, "redacts_headers", False):
        return

    def redacted(*args: Any, **kwargs: Any) -> Any:
        headers = kwargs.get("request_headers")
        if headers:
            kwargs["request_headers"] = {
                k: "***" if k.lower() in _SECRET_HEADERS else v for k, v in headers.items()
            }
        return write(*args, **kwargs)

    redacted.redacts_headers = True  # type: ignore[attr-defined]
    logger.log_request_response = redacted  # type: ignore[union-attr]


def _drop_missing_node_folders(folder_paths: ModuleType) -> None:
    """ComfyUI lists every custom-node folder unchecked and its loader stops the whole
    boot on one that does not exist: a tree without ``custom_nodes/`` (a copy made without
    git's placeholder files, like CI's upstream tree) would not boot at all."""
    folders, extensions = folder_paths.folder_names_and_paths["custom_nodes"]
    present = [folder for folder in folders if Path(folder).is_dir()]
    for folder in folders:
        if folder not in present:
            log.info("no custom node folder at %s: skipped", folder)
    folder_paths.folder_names_and_paths["custom_nodes"] = (present, extensions)
