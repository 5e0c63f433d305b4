"""HTTP face of the local endpoint: the hosted RunPod API under ``/v2/<endpoint id>/``.

Routes, request checks (auth, payload limits, JSON), and the status objects. Jobs live in
:mod:`.jobs`; webhooks in :mod:`.webhook`. Every error is a JSON ``{"error": ...}`` with
the hosted status code, so ``runpod.Endpoint`` and curl users see what production shows.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from hashlib import sha256
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from ...nodes.netguard import URLRefused
from ..delivery import RUN_LIMIT, RUNSYNC_LIMIT
from ..errors import JobError, mib
from ..node_imports import summary
from ..pipeline import Pipeline
from ..request import parse_policy
from .jobs import FINAL_CHUNK, IN_PROGRESS, IN_QUEUE, Job, JobQueue, NotRetryable
from .openapi import docs_page, openapi_document
from .settings import ServeSettings, origin_of
from .webhook import WebhookSender

log = logging.getLogger("comfyui_runpod.endpoint")

#: Read this much of an oversized body before answering 413, so that ordinary clients
#: (which send the whole body before reading) see the answer instead of a reset.
_DRAIN_LIMIT = 64 * 1024 * 1024
_dumps = functools.partial(json.dumps, default=str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LocalEndpoint:
    """The routes, bound to one pipeline and one :class:`JobQueue`."""

    def __init__(self, pipeline: Pipeline, settings: ServeSettings) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.webhooks = WebhookSender(
            attempts=settings.webhook_attempts,
            retry_delay_s=settings.webhook_retry_delay_s,
            timeout_s=settings.webhook_timeout_s,
            allow_private=settings.allow_private_urls,
        )
        self.jobs = JobQueue(
            pipeline,
            retention_s=settings.retention_s,
            sweep_interval_s=settings.sweep_interval_s,
            on_final=self._on_final,
        )
        #: Base of file URLs in webhooks (no request to take a host from); set on start.
        self.base_url = settings.public_url or f"http://{settings.host}:{settings.port}"

    def routes(self) -> list[web.RouteDef]:
        p = self.settings.prefix
        return [
            web.post(f"{p}/run", self.run, name="run"),
            web.post(f"{p}/runsync", self.runsync, name="runsync"),
            web.get(f"{p}/status/{{id}}", self.status),
            web.post(f"{p}/status/{{id}}", self.status),
            web.get(f"{p}/stream/{{id}}", self.stream),
            web.post(f"{p}/stream/{{id}}", self.stream),
            web.post(f"{p}/cancel/{{id}}", self.cancel),
            web.post(f"{p}/retry/{{id}}", self.retry),
            web.post(f"{p}/purge-queue", self.purge_queue),
            web.get(f"{p}/health", self.health),
            web.get(f"{p}/openapi.json", self.openapi),
            web.get(f"{p}/docs", self.docs),
            web.get(f"{p}/files/{{id}}/{{name:.+}}", self.file, name="file"),
        ]

    # -- routes ----------------------------------------------------------------------------

    async def run(self, request: web.Request) -> web.Response:
        job = await self._submit(request, RUN_LIMIT, sync=False)
        return _json({"id": job.id, "status": job.status})

    async def runsync(self, request: web.Request) -> web.Response:
        wait_ms = self._wait_ms(request)
        job = await self._submit(request, RUNSYNC_LIMIT, sync=True)
        await self.jobs.wait(job, wait_ms / 1000)
        # The job itself, not a fresh look-up: at shutdown (or ttl) it may be gone from the
        # queue, and the caller still gets its last state rather than a 404.
        return _json(self._status_object(job, self._base(request)))

    async def status(self, request: web.Request) -> web.Response:
        job = self._job(request.match_info["id"])
        return _json(self._status_object(job, self._base(request)))

    async def stream(self, request: web.Request) -> web.Response:
        """Progress events since the last poll, then the final output, each once (what
        ``runpod`` clients' ``stream()`` expects: it stops at a final state with no chunks)."""
        job = self._job(request.match_info["id"])
        chunks = []
        while job.stream:
            chunk = job.stream.popleft()
            output = self._output(job, self._base(request)) if chunk is FINAL_CHUNK else chunk
            chunks.append({"output": output})
        return _json({"id": job.id, "status": job.status, "stream": chunks})

    async def cancel(self, request: web.Request) -> web.Response:
        job = self.jobs.cancel(request.match_info["id"])
        if job is None:
            raise _not_found(request.match_info["id"])
        return _json({"id": job.id, "status": job.status})

    async def retry(self, request: web.Request) -> web.Response:
        try:
            job = self.jobs.retry(request.match_info["id"])
        except NotRetryable as exc:
            raise ApiError(400, str(exc)) from None
        if job is None:
            raise _not_found(request.match_info["id"])
        return _json({"id": job.id, "status": job.status})

    async def purge_queue(self, request: web.Request) -> web.Response:
        return _json({"removed": self.jobs.purge(), "status": "completed"})

    async def health(self, request: web.Request) -> web.Response:
        """The hosted ``jobs``/``workers`` counts, plus (an extra) the booted ComfyUI and
        the node modules that failed to import."""
        comfy = self.pipeline.executor.comfy
        nodes = summary(comfy.failed_modules, comfy.nodes.NODE_CLASS_MAPPINGS)
        return _json(
            {**self.jobs.health(), "comfyui": {"version": comfy.location.version, **nodes}}
        )

    async def openapi(self, request: web.Request) -> web.Response:
        """The apps' contract (OpenAPI 3.1), from the live node definitions."""
        document = openapi_document(
            self.pipeline.settings.apps,
            self.pipeline.executor.comfy.nodes.NODE_CLASS_MAPPINGS,
            server_url=f"{self._base(request)}{self.settings.prefix}",
        )
        if self.settings.api_key is not None:
            document["security"] = [{"bearer": []}]
        return _json(document)

    async def docs(self, request: web.Request) -> web.Response:
        """The same contract as a page for people: apps, parameters, a curl example."""
        page = docs_page(
            self.pipeline.settings.apps,
            self.pipeline.executor.comfy.nodes.NODE_CLASS_MAPPINGS,
            server_url=f"{self._base(request)}{self.settings.prefix}",
        )
        return web.Response(text=page, content_type="text/html")

    async def file(self, request: web.Request) -> web.StreamResponse:
        """A local output file. Only names the job recorded are served, so no request
        path can reach anything else."""
        job_id, name = request.match_info["id"], request.match_info["name"]
        job = self.jobs.get(job_id)
        if job is None or name not in job.local_files.values():
            raise ApiError(404, f"no file {name!r} for job {job_id}")
        key = self.settings.api_key
        if key is not None and not _authorized(request, key):
            token = _file_token(key, job_id, name)
            if not hmac.compare_digest(request.query.get("token", ""), token):
                raise ApiError(401, "a valid API key or file token is required")
        return web.FileResponse(self.jobs.folder(job_id) / name)

    # -- lifecycle -------------------------------------------------------------------------

    async def on_startup(self, app: web.Application) -> None:
        self.jobs.start()

    async def on_shutdown(self, app: web.Application) -> None:
        """Runs before aiohttp waits for open requests: interrupting the running job and
        waking every ``/runsync`` waiter lets them finish at once."""
        await self.jobs.close()
        await self.webhooks.close()

    # -- helpers ---------------------------------------------------------------------------

    async def _submit(self, request: web.Request, limit: int, *, sync: bool) -> Job:
        body = await _read_json(request, limit)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        if not isinstance(body.get("input"), dict):
            raise ApiError(400, 'the request has no "input" object')
        webhook = _webhook(body.get("webhook"))
        if webhook is not None:
            try:
                await self.webhooks.check(webhook)
            except URLRefused as exc:
                raise ApiError(400, str(exc)) from None
        try:
            ttl_s = parse_policy(body.get("policy")).ttl_s
        except JobError as exc:
            raise ApiError(400, exc.message) from None
        return self.jobs.submit(body, sync=sync, ttl_s=ttl_s, webhook=webhook)

    def _wait_ms(self, request: web.Request) -> int:
        raw = request.query.get("wait")
        if raw is None:
            return min(self.settings.default_wait_ms, self.settings.max_wait_ms)
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(400, f"wait must be milliseconds, not {raw!r}") from None
        return min(max(value, 0), self.settings.max_wait_ms)

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise _not_found(job_id)
        return job

    def _base(self, request: web.Request) -> str:
        """Where this client reached us: file URLs must work from its machine."""
        return self.settings.public_url or f"{request.scheme}://{request.host}"

    def _status_object(self, job: Job, base: str) -> dict[str, Any]:
        body: dict[str, Any] = {"id": job.id, "status": job.status}
        if job.delay_ms is not None:
            body["delayTime"] = job.delay_ms
        if job.execution_ms is not None:
            body["executionTime"] = job.execution_ms
        if job.status == IN_PROGRESS and job.progress is not None:
            body["output"] = dict(job.progress)
        elif job.status not in (IN_QUEUE, IN_PROGRESS):
            if job.output is not None:
                body["output"] = self._output(job, base)
            if job.error is not None:
                body["error"] = job.error
        return body

    def _output(self, job: Job, base: str) -> dict[str, Any] | None:
        """The job's output with local file paths replaced by URLs this server serves."""
        if job.output is None or not job.local_files:
            return job.output
        files = list(job.output["files"])
        for index, name in job.local_files.items():
            files[index] = self._file_url(base, job.id, name)
        return {**job.output, "files": files}

    def _file_url(self, base: str, job_id: str, name: str) -> str:
        url = f"{base.rstrip('/')}{self.settings.prefix}/files/{job_id}/{quote(name)}"
        if self.settings.api_key is not None:
            url += f"?token={_file_token(self.settings.api_key, job_id, name)}"
        return url

    def _on_final(self, job: Job) -> None:
        if job.webhook is not None:
            self.webhooks.send(job.webhook, job.id, self._status_object(job, self.base_url))


def make_app(pipeline: Pipeline, settings: ServeSettings) -> web.Application:
    """The aiohttp application; jobs start and stop with it (startup/shutdown signals)."""
    endpoint = LocalEndpoint(pipeline, settings)
    app = web.Application(
        middlewares=[_browsers(settings), _json_errors(settings.prefix), _auth(settings.api_key)]
    )
    app[ENDPOINT] = endpoint
    app.add_routes(endpoint.routes())
    app.on_startup.append(endpoint.on_startup)
    app.on_shutdown.append(endpoint.on_shutdown)
    return app


ENDPOINT = web.AppKey("endpoint", LocalEndpoint)


class Server:
    """A running endpoint on a TCP port; start and stop it from any event loop."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)

    async def start(self) -> str:
        """Bind and serve; returns the base URL (``http://host:port``, real port)."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.port = port
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        endpoint = self.app[ENDPOINT]
        if endpoint.settings.public_url is None:
            endpoint.base_url = url
        return url

    async def stop(self) -> None:
        await self._runner.cleanup()


def serve(pipeline: Pipeline, settings: ServeSettings) -> None:
    """Serve until SIGINT/SIGTERM; then interrupt the running job and return."""
    asyncio.run(_serve(pipeline, settings))


async def _serve(pipeline: Pipeline, settings: ServeSettings) -> None:
    server = Server(make_app(pipeline, settings), settings.host, settings.port)
    url = await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
    except NotImplementedError:  # Windows: Ctrl-C arrives as KeyboardInterrupt instead
        signals = ()
    if not settings.loopback and settings.api_key is None:
        log.warning(
            "listening on %s without an API key: anyone who can reach it may run jobs",
            settings.host,
        )
    log.info("serving the RunPod API at %s%s (Ctrl-C stops)", url, settings.prefix)
    try:
        await stop.wait()
        log.info("stopping (a running job is interrupted)")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)  # a second Ctrl-C then stops at once
        await server.stop()


# -- request plumbing ------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _json_errors(prefix: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Every error is JSON, aiohttp's own too (wrong method; an unknown route names the
    endpoint's real routes: ``GET /`` or another endpoint id is a newcomer's first try)."""
    hint = f"this server's endpoint is {prefix}/ (POST {prefix}/runsync, GET {prefix}/health)"

    @web.middleware
    async def answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return web.json_response({"error": exc.message}, status=exc.status)
        except web.HTTPNotFound:
            line = f"no route {request.method} {request.path}: {hint}"
            return web.json_response({"error": line}, status=404)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return web.json_response({"error": exc.reason}, status=exc.status, headers=allow)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return web.json_response({"error": "internal server error"}, status=500)

    return answer


#: Routes whose POST always carries a JSON body (other POSTs only when they have a body).
_JSON_ROUTES = {"run", "runsync"}
_PREFLIGHT = {
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


def _browsers(settings: ServeSettings) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Keep other web pages out: any site a developer visits can POST to a local port.

    A browser marks its requests with ``Origin`` / ``Sec-Fetch-Site``: a foreign one is
    refused (403) unless ``--allow-origin`` lists it, and bodies must be sent as
    ``application/json`` (415), which a page cannot do across sites without a CORS
    preflight. On a loopback address the Host must be a loopback name too, so a
    rebinding DNS name cannot make a page's requests look same-origin. Output files
    (``<img>`` sources, with their own token) are left alone. Non-browser clients
    (curl, the runpod SDK) send none of these headers and pass.
    """
    allowed = set(settings.allow_origins)
    public = origin_of(settings.public_url) if settings.public_url else None

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        listed = origin is not None and _origin_or_none(origin) in allowed
        if request.match_info.route.name != "file" and not listed:
            refusal = _foreign(request, settings, origin, public)
            if refusal is not None:
                return web.json_response({"error": refusal}, status=403)
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if listed else {}
        if request.method == "OPTIONS" and listed:
            return web.Response(status=204, headers={**cors, **_PREFLIGHT})
        if _needs_json(request) and request.content_type != "application/json":
            line = (
                "send the body as JSON with Content-Type: application/json "
                f"(got {request.content_type})"
            )
            return web.json_response({"error": line}, status=415, headers=cors)
        response = await handler(request)
        response.headers.update(cors)
        return response

    return check


def _foreign(
    request: web.Request, settings: ServeSettings, origin: str | None, public: str | None
) -> str | None:
    """Why a browser request comes from another site, or None when it does not."""
    hint = "serve --allow-origin ORIGIN (env COMFYUI_RUNPOD_ALLOW_ORIGINS) allows a web app"
    own = _origin_or_none(f"{request.scheme}://{request.host}")
    if (
        settings.loopback
        and not _loopback_name(request.url.host)
        and (own is None or own != public)
    ):
        return f"Host {request.host} is not a name of this loopback server"
    if origin is not None and _origin_or_none(origin) not in {own, public} - {None}:
        return f"a page at {origin} may not call this endpoint; {hint}"
    if origin is None and request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return f"a page on another site may not call this endpoint; {hint}"
    return None


def _loopback_name(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _needs_json(request: web.Request) -> bool:
    """POSTs that carry a body; ``run`` and ``runsync`` always do."""
    if request.method != "POST":
        return False
    return request.match_info.route.name in _JSON_ROUTES or request.body_exists


def _origin_or_none(value: str) -> str | None:
    try:
        return origin_of(value)
    except ValueError:
        return None  # "null" (a sandboxed page, a file://), or garbage: nobody's origin


def _auth(api_key: str | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Files may instead carry their own token (their URLs go to browsers, <img> ...).
        is_file = request.match_info.route.name == "file"
        if api_key is None or is_file or _authorized(request, api_key):
            return await handler(request)
        raise ApiError(401, "missing or wrong API key (Authorization: Bearer …)")

    return check


def _authorized(request: web.Request, api_key: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    given = token.strip() if scheme.lower() == "bearer" else header.strip()
    return hmac.compare_digest(given.encode(), api_key.encode())


def _file_token(api_key: str, job_id: str, name: str) -> str:
    return hmac.new(api_key.encode(), f"{job_id}/{name}".encode(), sha256).hexdigest()[:32]


async def _read_json(request: web.Request, limit: int) -> Any:
    """The body as JSON, or 413 over ``limit`` bytes / 400 when it is not JSON."""
    if request.content_length is not None and request.content_length > limit:
        await _drain(request, _DRAIN_LIMIT)
        raise _too_large(request.content_length, limit)
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            size += await _drain(request, _DRAIN_LIMIT - size)
            raise _too_large(size, limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        if len(raw) > 1 << 20:  # parsing megabytes would stall every other request
            return await asyncio.to_thread(json.loads, raw)
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # "[[[[…" thousands deep
        raise ApiError(400, "the request body is JSON nested too deeply to parse") from None


async def _drain(request: web.Request, budget: int) -> int:
    read = 0
    while read < budget:
        chunk = await request.content.readany()
        if not chunk:
            break
        read += len(chunk)
    return read


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request body is {mib(size)}, over the {mib(limit)} limit of this route; "
        "send inputs as URLs or upload them to a bucket",
    )


def _webhook(value: Any) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ApiError(400, "webhook must be an http(s) URL")
    return value


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, f"job {job_id} not found (unknown, expired or purged)")


def _json(data: Any) -> web.Response:
    return web.json_response(data, dumps=_dumps)
