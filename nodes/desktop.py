"""Desktop "Queue on RunPod": the routes behind the frontend extension in ``web/``.

The browser sends the open graph here; this side holds the API key, collects the input
files the graph names, submits through :class:`RunPodClient`, watches each job in a
background task, relays status to the page (``runpod.job`` websocket events) and saves
the results into ``output/runpod/<job id>/``. The key never goes back to the browser.

Registered only inside a desktop ComfyUI with its real ``PromptServer`` (never in the
worker, ``run`` or ``serve``, whose stand-in server has no HTTP face).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import ipaddress
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
from aiohttp import web

from . import userconfig
from .lacks import lacking
from .pngtext import with_text
from .remote import offset_seeds
from .runpod_api import DEFAULT_BASE_URL, FINAL, RunPodAuthError, RunPodClient, RunPodError

log = logging.getLogger(__name__)

PREFIX = "/runpod"
JOBS_FILE = "comfyui-runpod-jobs.json"
MAX_JOBS = 200
MAX_COUNT = 16
#: RunPod's ``/run`` body limit; input files go inside it as base64.
RUN_LIMIT = 10 * 1024 * 1024
_ENDPOINT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")
#: The states a job can be retried from (a new job with the same graph).
RETRYABLE = frozenset({"FAILED", "TIMED_OUT", "CANCELLED"})
#: 404s in a row (2 s apart) after which a job the endpoint no longer knows is failed.
FORGOTTEN_AFTER = 3
#: The largest live preview kept (a ≤256 px JPEG is a few KiB as base64).
MAX_PREVIEW = 256 * 1024
#: At most this many marked nodes from a remote validation failure.
MAX_NODE_ERRORS = 100
SETTINGS_HINT = "Settings (gear) → RunPod"
#: What queueing without a key answers (a loopback base URL may need none: ``_is_loopback``).
NO_KEY = (
    f"No RunPod API key: set it in {SETTINGS_HINT} → API key (or RUNPOD_API_KEY, or "
    f"runpod_api_key in user/{userconfig.FILE_NAME})."
)


def is_desktop_server(instance: Any) -> bool:
    """True for ComfyUI's own ``PromptServer`` (HTTP + websocket + prompt queue) only.

    The executor's stand-in (``HeadlessServer``) has ``routes`` too, so that packs that
    register routes still load, but no queue, loop or sockets: nothing would serve them.
    """
    return (
        instance is not None
        and type(instance).__name__ == "PromptServer"
        and all(hasattr(instance, name) for name in ("routes", "app", "prompt_queue", "loop"))
    )


def install() -> bool:
    """Register the routes on the running desktop server; False (and nothing done) anywhere
    else. Reads ``server`` from ``sys.modules`` so that it never imports ComfyUI itself."""
    server_module = sys.modules.get("server")
    instance = getattr(getattr(server_module, "PromptServer", None), "instance", None)
    if not is_desktop_server(instance):
        return False
    desktop = Desktop(instance)
    for method, path, handler in desktop.routes():
        instance.routes.route(method, path)(handler)
    instance.app.on_startup.append(desktop.on_startup)
    instance.app.on_cleanup.append(desktop.on_cleanup)
    log.info("RunPod desktop routes ready under %s/", PREFIX)
    return True


class ApiProblem(web.HTTPException):
    """A JSON ``{"error", "code"}`` answer that the page turns into a toast."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status_code = status
        super().__init__(
            text=json.dumps({"error": message, "code": code}), content_type="application/json"
        )


class Desktop:
    """The job list, its watchers and the routes, bound to one desktop server."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._loaded = False

    def routes(self) -> list[tuple[str, str, Any]]:
        """(method, path, handler); ComfyUI also serves each under ``/api``."""
        return [
            ("POST", f"{PREFIX}/queue", self.queue),
            ("GET", f"{PREFIX}/jobs", self.list_jobs),
            ("GET", f"{PREFIX}/jobs/{{id}}", self.get_job),
            ("POST", f"{PREFIX}/jobs/{{id}}/cancel", self.cancel),
            ("POST", f"{PREFIX}/jobs/{{id}}/retry", self.retry),
            ("GET", f"{PREFIX}/settings", self.get_settings),
            ("POST", f"{PREFIX}/settings", self.post_settings),
        ]

    # -- lifecycle -------------------------------------------------------------------------

    async def on_startup(self, _app: web.Application) -> None:
        """Resume watching the jobs a previous desktop session left unfinished."""
        self._load()
        for job_id, record in self.jobs.items():
            if record["status"] not in FINAL:
                self._watch(job_id)

    async def on_cleanup(self, _app: web.Application) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        if self._session is not None:
            await self._session.close()

    # -- routes ----------------------------------------------------------------------------

    async def queue(self, request: web.Request) -> web.Response:
        self._load()
        body = await _json_body(request)
        prompt, workflow = body.get("prompt"), body.get("workflow")
        if not isinstance(prompt, dict) or not prompt:
            raise ApiProblem(400, "invalid", "the graph is empty: add nodes, then queue")
        count = body.get("count", 1)
        if not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            raise ApiProblem(400, "invalid", f"count must be 1..{MAX_COUNT}")
        workflow = workflow if isinstance(workflow, dict) else None
        ids = await self._submit(prompt, workflow, count)
        return web.json_response({"jobs": [_view(self.jobs[i]) for i in ids]})

    async def retry(self, request: web.Request) -> web.Response:
        """The same graph again, as a new job (the seeds it ran with, the inputs as they
        are now in ``input/``)."""
        record = self._record(request.match_info["id"])
        if record["status"] not in RETRYABLE or not isinstance(record.get("prompt"), dict):
            raise ApiProblem(
                409,
                "not_retryable",
                f"job {record['id']} is {record['status']}; only failed, timed out or "
                "cancelled jobs can be retried",
            )
        # "Fetch models and run": again with the models the failure named (nodes/lacks.py).
        fetch = request.can_read_body and (await _json_body(request)).get("fetchModels") is True
        models = record.get("fetchModels") if fetch else None
        if fetch and not models:
            raise ApiProblem(
                409, "nothing_to_fetch", f"job {record['id']} lacks no model it could fetch"
            )
        [job_id] = await self._submit(record["prompt"], record.get("workflow"), 1, models)
        self.jobs[job_id]["retryOf"] = record["id"]
        self._save()
        self._send(job_id)
        return web.json_response({"jobs": [_view(self.jobs[job_id])]})

    async def _submit(
        self,
        prompt: dict[str, Any],
        workflow: dict[str, Any] | None,
        count: int,
        models: list[dict[str, str]] | None = None,
    ) -> list[str]:
        """Submit ``count`` jobs of ``prompt`` (job i adds i to the seeds), with ``models``
        to fetch first (``input.models``); list and watch them; their ids."""
        client = self._client(require=True)
        if not client.has_key:  # a loopback serve: only one started without --api-key takes it
            await _check_keyless(client)
        remote_prompt, images = await asyncio.to_thread(collect_inputs, prompt, _input_dir())
        # previews: the row shows the sampler's latest latent preview while the job runs.
        job_input: dict[str, Any] = {"tobase64": True, "previews": True}
        if images:
            job_input["images"] = images
        if models:
            job_input["models"] = models
        try:
            ids = await asyncio.gather(
                *(
                    client.run({**job_input, "workflow": offset_seeds(remote_prompt, i)})
                    for i in range(count)
                )
            )
        except RunPodAuthError as exc:
            raise ApiProblem(401, "auth", f"API key rejected by {exc.url}") from None
        except RunPodError as exc:
            raise ApiProblem(502, "remote", str(exc)) from None
        now = time.time()
        for i, job_id in enumerate(ids):
            if not _JOB_ID.fullmatch(job_id):
                raise ApiProblem(502, "remote", f"{client.url} returned an odd job id {job_id!r}")
            self.jobs[job_id] = {
                "id": job_id,
                "endpoint": client.url,
                "status": "IN_QUEUE",
                "submittedAt": now,
                "finishedAt": None,
                "delayTime": None,
                "executionTime": None,
                "progress": None,
                "preview": None,
                "error": None,
                "nodeErrors": None,
                "files": [],
                # Kept until the job completes: its PNGs get the graph back as metadata,
                # and a failed, timed out or cancelled job can be retried with it.
                "prompt": offset_seeds(prompt, i),
                "workflow": workflow,
            }
        log.info("queued %s on %s", ", ".join(ids), client.url)
        self._trim()
        self._save()
        for job_id in ids:
            self._send(job_id)
            self._watch(job_id)
        return ids

    async def list_jobs(self, _request: web.Request) -> web.Response:
        self._load()
        return web.json_response({"jobs": [_view(r) for r in reversed(self.jobs.values())]})

    async def get_job(self, request: web.Request) -> web.Response:
        return web.json_response(_view(self._record(request.match_info["id"])))

    async def cancel(self, request: web.Request) -> web.Response:
        record = self._record(request.match_info["id"])
        if record["status"] in FINAL:
            return web.json_response(_view(record))
        client = self._client(require=True, endpoint=record["endpoint"])
        try:
            answer = await client.cancel(record["id"])
        except RunPodAuthError as exc:
            raise ApiProblem(401, "auth", f"API key rejected by {exc.url}") from None
        except RunPodError as exc:
            raise ApiProblem(502, "remote", str(exc)) from None
        if answer.get("status") in FINAL and record["status"] not in FINAL:
            record["status"] = answer["status"]
            record["finishedAt"] = time.time()
            self._finish(record)
            self._send(record["id"])
        return web.json_response(_view(record))

    async def get_settings(self, _request: web.Request) -> web.Response:
        return web.json_response(_settings_view())

    async def post_settings(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        updates: dict[str, str | None] = {}
        if "endpointId" in body:
            value = str(body["endpointId"] or "").strip()
            if value and not _ENDPOINT_ID.fullmatch(value):
                raise ApiProblem(400, "invalid", "endpoint id: 1-64 letters, digits, '_' or '-'")
            updates["runpod_endpoint_id"] = value
        if "baseUrl" in body:
            value = str(body["baseUrl"] or "").strip()
            if value and urlsplit(value).scheme not in ("http", "https"):
                raise ApiProblem(400, "invalid", "base URL must start with http:// or https://")
            updates["runpod_base_url"] = value
        if "apiKey" in body:  # write-only: stored here, answered only as "set" / "not set"
            updates["runpod_api_key"] = str(body["apiKey"] or "").strip()
        dropped = None
        if updates:
            dropped = await asyncio.to_thread(userconfig.save_endpoint, updates)
            log.info("RunPod settings updated: %s", ", ".join(sorted(updates)))
        view = _settings_view()
        if dropped:
            view["notice"] = (
                f"The saved API key was for {dropped} and is removed: enter the API key for "
                f"{view['apiKeyFor']} in {SETTINGS_HINT} → API key."
            )
        return web.json_response(view)

    # -- jobs ------------------------------------------------------------------------------

    def _record(self, job_id: str) -> dict[str, Any]:
        self._load()
        record = self.jobs.get(job_id)
        if record is None:  # only jobs this desktop queued: no open proxy to the endpoint
            raise ApiProblem(404, "not_found", f"no RunPod job {job_id!r} queued from here")
        return record

    def _client(self, *, require: bool, endpoint: str | None = None) -> RunPodClient:
        config = userconfig.desktop_endpoint()
        if not config.endpoint_id:
            raise ApiProblem(
                400,
                "no_endpoint",
                f"No RunPod endpoint id: set it in {SETTINGS_HINT} → Endpoint id "
                "(or COMFYUI_RUNPOD_ENDPOINT_ID).",
            )
        keyless = not config.api_key and _is_loopback(config.url)  # a local serve may need none
        if require and not config.api_key and not keyless:
            raise ApiProblem(400, "no_api_key", NO_KEY)
        if require and config.api_key and not config.key_fits:
            raise ApiProblem(400, "no_api_key", _key_elsewhere(config))
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        client = RunPodClient(
            config.endpoint_id,
            config.api_key if config.key_fits else None,
            config.url,
            session=self._session,
        )
        if endpoint is not None and client.url != endpoint:
            # The key belongs to the configured endpoint: never send it to an old one.
            raise ApiProblem(
                409,
                "endpoint_changed",
                f"this job ran on {endpoint}; the configured endpoint is now {client.url}",
            )
        return client

    def _watch(self, job_id: str) -> None:
        if job_id not in self.tasks:
            self.tasks[job_id] = asyncio.get_running_loop().create_task(self._poll(job_id))

    async def _poll(self, job_id: str) -> None:
        """Poll one job until it ends; save its files; tell the page at every change."""
        record = self.jobs[job_id]
        delay = 0.1
        unknown = 0  # status answers in a row saying the endpoint does not know the job
        try:
            while record["status"] not in FINAL:
                try:
                    client = self._client(require=True, endpoint=record["endpoint"])
                    status = await client.status(job_id)
                except ApiProblem as problem:
                    record["error"] = json.loads(problem.text)["error"]
                    self._save()
                    self._send(job_id)
                    return
                except RunPodAuthError as exc:
                    record["error"] = f"API key rejected by {exc.url}"
                    self._save()
                    self._send(job_id)
                    return
                except RunPodError as exc:  # the network or the API hiccuped: keep trying
                    unknown = unknown + 1 if exc.http_status == 404 else 0
                    if unknown >= FORGOTTEN_AFTER:
                        record["status"], record["error"] = "FAILED", _forgotten(job_id)
                        self._finish(record)
                        self._send(job_id)
                        return
                    record["error"] = f"cannot read the job's status, retrying: {exc}"
                    self._send(job_id)
                    await asyncio.sleep(2 if unknown else 5)
                    continue
                unknown = 0
                if await self._apply(client, record, status):
                    self._send(job_id)
                if record["status"] not in FINAL:
                    await asyncio.sleep(delay)
                    delay = min(delay * 1.5, 1.0)
        except Exception:
            log.exception("watching RunPod job %s failed", job_id)
            record["error"] = "internal error while watching this job (see the ComfyUI log)"
            self._send(job_id)
        finally:
            self.tasks.pop(job_id, None)

    async def _apply(self, client: RunPodClient, record: dict[str, Any], status: dict) -> bool:
        """Fold one status object into the record; True when the page should hear of it."""
        before = _view(record)
        state = status.get("status")
        output = status.get("output")
        for name in ("delayTime", "executionTime"):
            if isinstance(status.get(name), (int, float)):
                record[name] = status[name]
        if state in ("IN_QUEUE", "IN_PROGRESS"):
            record["status"] = state
            record["error"] = None
            if isinstance(output, dict) and isinstance(output.get("percent"), (int, float)):
                record["progress"] = {
                    "percent": output["percent"],
                    "node": output.get("node"),
                    "class": output.get("class"),
                }
            if isinstance(output, dict) and _is_preview(output.get("preview")):
                record["preview"] = output["preview"]
        elif state == "COMPLETED":
            record["error"] = None
            try:
                record["files"] = await self._save_files(client, record, output or {})
                if isinstance(output, dict) and output.get("error"):
                    record["error"] = str(output["error"])
                elif isinstance(output, dict) and output.get("warnings"):
                    record["error"] = _not_run(output["warnings"])
            except (RunPodError, OSError) as exc:  # paid for: say so rather than drop it
                record["error"] = f"the job finished but its results could not be saved: {exc}"
            record["progress"] = {"percent": 100}
            record["status"] = "COMPLETED"
            self._finish(record)
        elif state in FINAL:
            record["status"] = state
            error = status.get("error") or (output or {}).get("error")
            record["error"] = str(error) if error else state.lower().replace("_", " ")
            record["nodeErrors"] = _node_errors(output)
            record["lacks"], record["fetchModels"] = lacking(output, record.get("workflow"))
            self._finish(record)
        return _view(record) != before

    def _finish(self, record: dict[str, Any]) -> None:
        record["finishedAt"] = record["finishedAt"] or time.time()
        record["preview"] = None  # the files (or the error) say the rest
        if record["status"] not in RETRYABLE:
            record["prompt"] = record["workflow"] = None
        log.info("RunPod job %s %s", record["id"], record["status"])
        self._save()

    async def _save_files(
        self, client: RunPodClient, record: dict[str, Any], output: dict[str, Any]
    ) -> list[dict[str, str]]:
        """Every returned file into ``output/runpod/<job id>/``, under the worker's names;
        PNGs get the desktop graph (``prompt`` + ``workflow``) so they reload it."""
        files = [f for f in output.get("files", []) if isinstance(f, str)]
        infos = output.get("file_info") if isinstance(output.get("file_info"), list) else []
        root = Path(_output_dir()).resolve()
        folder = root / "runpod" / record["id"]
        texts = {"prompt": json.dumps(record["prompt"])}
        if record.get("workflow"):
            texts["workflow"] = json.dumps(record["workflow"])
        saved, taken = [], set()
        for index, entry in enumerate(files):
            info = infos[index] if index < len(infos) and isinstance(infos[index], dict) else {}
            name = _local_name(info.get("name") or _name_from(entry, index), taken)
            if entry.startswith(("http://", "https://")):
                data = await client.fetch(entry)
            else:
                try:
                    data = base64.b64decode(entry, validate=True)
                except ValueError:
                    log.warning("job %s: file %d is neither a URL nor base64", record["id"], index)
                    continue
            if name.lower().endswith(".png") and data.startswith(b"\x89PNG"):
                data = with_text(data, texts)
            path = folder / name
            await asyncio.to_thread(_write, path, data, 0o644)
            relative = path.parent.relative_to(root).as_posix()
            saved.append({"filename": path.name, "subfolder": relative, "type": "output"})
        return saved

    def _send(self, job_id: str) -> None:
        """Tell the page; ``rev`` orders the views (a websocket event may overtake the HTTP
        answer that carried an older one)."""
        record = self.jobs[job_id]
        # microseconds: still increasing after a desktop restart (a page may stay open)
        record["rev"] = max(record.get("rev", 0) + 1, time.time_ns() // 1000)
        self.server.send_sync("runpod.job", _view(record))

    # -- the job list in the user folder ---------------------------------------------------

    def _jobs_path(self) -> Path | None:
        path = userconfig.config_path()
        return None if path is None else path.with_name(JOBS_FILE)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        path = self._jobs_path()
        if path is None or not path.is_file():
            return
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
            for record in records:
                if isinstance(record, dict) and _JOB_ID.fullmatch(str(record.get("id", ""))):
                    self.jobs[record["id"]] = record
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring %s: %s", path, exc)

    def _trim(self) -> None:
        while len(self.jobs) > MAX_JOBS:
            oldest = next(iter(self.jobs))
            if self.jobs[oldest]["status"] not in FINAL:
                break
            del self.jobs[oldest]

    def _save(self) -> None:
        path = self._jobs_path()
        if path is not None:
            _write(path, json.dumps(list(self.jobs.values())).encode())


def collect_inputs(
    prompt: dict[str, Any], input_dir: Path
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The files the prompt names in the desktop's input folder, as job ``images``, and the
    prompt with those inputs renamed to the flat names the worker accepts.

    Any string input that names an existing file under ``input_dir`` counts (LoadImage,
    LoadImageMask, LoadAudio, ...), with subfolders and a trailing `` [input]``; nothing
    outside ``input_dir`` is ever read (``..``, absolute paths and symlinks out are refused).
    Together they must fit RunPod's request as base64 (:data:`RUN_LIMIT`): a file that
    would not is refused from its size, before it is read (``too_large``).
    """
    root = input_dir.resolve()
    result = copy.deepcopy(prompt)
    sent: dict[Path, str] = {}
    taken: set[str] = set()
    images: list[dict[str, str]] = []
    for node in result.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for key, value in inputs.items():
            path = _input_file(root, value)
            if path is None:
                continue
            if path not in sent:
                flat = value.strip().removesuffix(" [input]").replace("\\", "/").replace("/", "_")
                sent[path] = _local_name(flat, taken)
                used = sum(len(i["image"]) for i in images)
                data = _read_input(path, value.strip(), (RUN_LIMIT - used) // 4 * 3)
                images.append({"name": sent[path], "image": base64.b64encode(data).decode()})
            inputs[key] = sent[path]
    return result, images


def _read_input(path: Path, name: str, room: int) -> bytes:
    """``path`` whole if it fits in ``room`` bytes; its size is checked first and the read
    stops past ``room`` (a file may grow meanwhile), so a huge file is never loaded."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(room + 1) if size <= room else b""
    if size > room or len(data) > room:
        raise ApiProblem(
            400,
            "too_large",
            f"the input file {name} is {max(size, len(data)) / 2**20:.1f} MiB; the graph's "
            f"input files go to RunPod as base64 inside its {RUN_LIMIT // 2**20} MiB request "
            f"limit ({room / 2**20:.1f} MiB left for this one): use smaller inputs",
        )
    return data


def _input_file(root: Path, value: Any) -> Path | None:
    if not isinstance(value, str) or not value.strip() or len(value) > 1024:
        return None
    text = value.strip()
    if text.endswith("]"):
        text, _, tag = text.rpartition(" [")
        if tag != "input]":
            return None  # [output] / [temp]: not the input folder
    parts = text.replace("\\", "/").split("/")
    if Path(text).is_absolute() or any(p in ("", ".", "..") for p in parts):
        return None
    try:
        real = root.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(root) or not real.is_file():
        return None
    return real


def _local_name(name: str, taken: set[str]) -> str:
    """A plain file name the worker accepts (and that stays inside the job's folder)."""
    name = unquote(str(name)).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).strip(" .") or "file"
    name = name.replace("..", "_")
    if not name[0].isalnum():
        name = "f" + name
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    name = (stem[: 120 - len(ext)] + (f".{ext[:7]}" if ext else "")).strip() or "file"
    return _unique(name, taken)


def _unique(name: str, taken: set[str]) -> str:
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}_{n}" + (f".{ext}" if ext else "")
    taken.add(candidate)
    return candidate


def _name_from(entry: str, index: int) -> str:
    if entry.startswith(("http://", "https://")):
        return urlsplit(entry).path.rsplit("/", 1)[-1] or f"output_{index}"
    return f"output_{index}.png" if entry.startswith("iVBOR") else f"output_{index}.bin"


def _view(record: dict[str, Any]) -> dict[str, Any]:
    """What the page sees of a job (never the graph, never credentials)."""
    view = {k: v for k, v in record.items() if k not in ("prompt", "workflow", "fetchModels")}
    view["canFetch"] = bool(record.get("fetchModels"))  # the URLs stay here
    view["retryable"] = record["status"] in RETRYABLE and isinstance(record.get("prompt"), dict)
    return view


def _is_preview(value: Any) -> bool:
    """A live preview as the worker sends it: a JPEG ``data:`` URL (shown as an ``img``)."""
    return (
        isinstance(value, str)
        and value.startswith("data:image/jpeg;base64,")
        and len(value) <= MAX_PREVIEW
        and re.fullmatch(r"[A-Za-z0-9+/=]*", value[23:]) is not None
    )


def _forgotten(job_id: str) -> str:
    return (
        f"the endpoint no longer knows job {job_id}: RunPod keeps a job's status for a while "
        "after it ends (30 minutes for /run), and a local endpoint forgets its jobs when it "
        "restarts; Retry runs it again"
    )


def _not_run(warnings: Any) -> str:
    """A completed job's outputs that did not validate (the rest ran), as one line."""
    lines = [str(w) for w in warnings] if isinstance(warnings, list) else [str(warnings)]
    return f"not every output ran: {' | '.join(lines)}"[:2000]


def _node_errors(output: Any) -> dict[str, Any] | None:
    """A remote ``validation_failed``'s per-node errors, in the shape ComfyUI's frontend
    marks nodes with (``{node id: {errors: [{type, message, details, extra_info}],
    class_type, dependent_outputs}}``); None for any other failure."""
    if not isinstance(output, dict) or output.get("error_code") != "validation_failed":
        return None
    details = output.get("details")
    found = details.get("node_errors") if isinstance(details, dict) else None
    if not isinstance(found, dict):
        return None
    marks: dict[str, Any] = {}
    for node_id, info in list(found.items())[:MAX_NODE_ERRORS]:
        if not isinstance(info, dict) or not isinstance(info.get("errors"), list):
            continue
        errors = []
        for item in info["errors"][:20]:
            if not isinstance(item, dict):
                continue
            extra = item.get("extra_info") if isinstance(item.get("extra_info"), dict) else {}
            errors.append(
                {
                    "type": str(item.get("type", ""))[:200],
                    "message": str(item.get("message", ""))[:1000],
                    "details": str(item.get("details", ""))[:1000],
                    "extra_info": {
                        k: v for k, v in extra.items() if k == "input_name" and isinstance(v, str)
                    },
                }
            )
        marks[str(node_id)] = {
            "errors": errors,
            "class_type": str(info.get("class_type") or ""),
            "dependent_outputs": [],
        }
    return marks or None


def _is_loopback(url: str) -> bool:
    """Whether ``url`` is on this machine (``127.0.0.1``, ``::1``, ``localhost``): there a
    ``comfyui-runpod serve`` started without ``--api-key`` takes jobs without a key."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _check_keyless(client: RunPodClient) -> None:
    """Ask the loopback endpoint's ``health`` without a key before any input file goes to
    it: a 401 means it was started with a key, and the notice says where to enter it."""
    try:
        await client.health()
    except RunPodAuthError:
        raise ApiProblem(
            400, "no_api_key", f"{NO_KEY} {client.url} asks for one: it is a `comfyui-runpod "
            "serve` started with --api-key (or COMFYUI_RUNPOD_API_KEY), so enter that key."
        ) from None  # fmt: skip
    except RunPodError as exc:
        raise ApiProblem(502, "remote", str(exc)) from None


def _key_elsewhere(config: userconfig.EndpointConfig) -> str:
    """Why a key that is set is not sent: it was entered for another origin."""
    here = userconfig.origin(config.url)
    if config.api_key_source == "env":
        return (
            f"RUNPOD_API_KEY is for {config.api_key_origin}, not {here} (the base URL in "
            f"{SETTINGS_HINT}): set RUNPOD_ENDPOINT_BASE_URL to that base URL too, or unset "
            "RUNPOD_API_KEY and enter the key for it in the settings."
        )
    return (
        f"The saved RunPod API key is for {config.api_key_origin}, not {here}: enter the API "
        f"key for {here} in {SETTINGS_HINT} → API key."
    )


def _settings_view() -> dict[str, Any]:
    config = userconfig.desktop_endpoint()
    return {
        "endpointId": config.endpoint_id or "",
        "endpointSource": config.endpoint_source,
        "baseUrl": config.base_url or "",
        "baseUrlSource": config.base_url_source,
        "defaultBaseUrl": DEFAULT_BASE_URL,
        "apiKeySet": config.key_fits,
        "apiKeySource": config.api_key_source,
        # the origin the key goes to: a base URL elsewhere needs the key entered again
        "apiKeyFor": userconfig.origin(config.url),
        # loopback: a `comfyui-runpod serve` started without --api-key takes jobs without one
        "apiKeyOptional": not config.api_key and _is_loopback(config.url),
        "apiKeyProblem": None if config.key_fits or not config.api_key else _key_elsewhere(config),
        "configFile": f"user/{userconfig.FILE_NAME}",
    }


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiProblem(400, "invalid", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiProblem(400, "invalid", "the body must be a JSON object")
    return body


def _input_dir() -> Path:
    import folder_paths

    return Path(folder_paths.get_input_directory())


def _output_dir() -> str:
    import folder_paths

    return folder_paths.get_output_directory()


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write atomically: a half-written result or job list never shows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
