"""The one job pipeline: parse → execute → collect → deliver.

The serverless handler, ``comfyui-runpod serve`` and ``comfyui-runpod run`` all call
:meth:`Pipeline.run`; none of them talks to the executor or storage directly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..nodes.jobcontext import JobContext
from ..nodes.storage import BucketConfig, EndpointRefused, check_endpoint
from ..nodes.workflows import is_saved_format
from . import azureblob, compat, models, parity
from .apps import AppStore, build_prompt
from .convert import converter_for
from .delivery import DeliverySettings, deliver, moves_stay_on_one_filesystem
from .errors import JobError
from .inputs import MediaSettings, materialize
from .models import ModelCache, ModelSettings, ModelSpec, default_cache_dir
from .progress import ProgressCallback
from .request import JobRequest, parse_job
from .runner import Executor, Workspace
from .savedgraph import MAX_NODES

log = logging.getLogger(__name__)


@dataclass
class PipelineSettings:
    delivery: DeliverySettings
    media: MediaSettings = field(default_factory=MediaSettings)
    #: The apps folder (``{"app": ..., "params": ...}`` jobs); None: workflow jobs only.
    apps: AppStore | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    models: ModelSettings = field(default_factory=lambda: ModelSettings(default_cache_dir()))
    #: Results in another worker's shape (``compat.MODES``); None: this project's contract.
    compat: str | None = None
    #: Most nodes a saved (UI-format) workflow may expand to, subgraphs and group nodes
    #: counted per use (``--max-workflow-nodes``).
    max_workflow_nodes: int = MAX_NODES


class Pipeline:
    """Runs RunPod jobs against one :class:`Executor`."""

    def __init__(self, executor: Executor, settings: PipelineSettings) -> None:
        self.executor = executor
        self.settings = settings
        #: Blocking steps (input downloads, uploads, copies) run here, never on the caller's
        #: loop: a cross-filesystem move or an upload must not stall ``serve``'s ``/status``.
        self._threads = concurrent.futures.ThreadPoolExecutor(2, "comfyui-runpod-io")
        #: Whether local delivery is renames only (one filesystem); known on first use.
        self._renames: bool | None = None
        self._models: ModelCache | None = None

    @property
    def models(self) -> ModelCache:
        """The model cache (its folders are made on first use)."""
        if self._models is None:
            self._models = ModelCache(self.settings.models)
        return self._models

    def prefetch(self, specs: Sequence[ModelSpec]) -> None:
        """Fetch a boot manifest's models in parallel before the first job (each shows its
        progress: ``models.DownloadDisplay``), so that cold starts do not pay per-job
        downloads."""
        comfy = self.executor.comfy
        specs, _ = models.plan(specs, {}, comfy.nodes.NODE_CLASS_MAPPINGS, comfy.folder_paths)
        models.register(self.models, comfy.folder_paths, sorted({s.folder for s in specs}))

        def fetch(spec: ModelSpec) -> None:
            fresh = self.models.ensure(spec, trusted=True)
            log.info("model %s/%s %s", spec.folder, spec.name, "fetched" if fresh else "cached")

        with concurrent.futures.ThreadPoolExecutor(4, "comfyui-runpod-models") as pool:
            for future in [pool.submit(fetch, spec) for spec in specs]:
                future.result()

    def run_sync(self, job: Any, **kwargs: Any) -> dict[str, Any]:
        return asyncio.run(self.run(job, **kwargs))

    async def run(
        self,
        job: Any,
        *,
        on_progress: ProgressCallback | None = None,
        payload_limit: int | None = None,
    ) -> dict[str, Any]:
        """Run one job; the result is the contract's output, or ``{"error": ...}``.

        Never raises for a bad job. Cancelling the awaiting task interrupts ComfyUI and
        re-raises ``CancelledError`` (RunPod's per-job cancel); the run's folders are
        removed once nothing writes to them any more.
        """
        started = time.perf_counter()
        job_id = str(job.get("id", "?")) if isinstance(job, Mapping) else "?"
        timings: dict[str, float] = {}
        workspace: Workspace | None = None
        #: The step in flight; it may outlive a cancel (a thread, or ComfyUI's last node).
        busy: concurrent.futures.Future[Any] | None = None
        held = contextlib.ExitStack()  # model-cache locks the job holds
        try:
            if self.settings.compat == compat.WORKER_COMFYUI:
                job = compat.prepare_job(job)
            request = parse_job(
                job,
                self.settings.environ,
                allow_private_urls=self.settings.media.allow_private_urls,
            )
            if request.bucket is not None:
                await asyncio.to_thread(_check_bucket, request.bucket)
            if request.azure is not None:
                await asyncio.to_thread(azureblob.check_endpoint, request.azure)
            if not self.executor.booted:  # a worker's first job, taken during the boot
                mark = time.perf_counter()
                await asyncio.to_thread(self.executor.start)
                timings["boot_wait_s"] = time.perf_counter() - mark
            # Downloads end by then at the latest (the job's executionTimeout, if any).
            job_deadline = (
                None if request.timeout_s is None else time.monotonic() + request.timeout_s
            )
            max_nodes = self.settings.max_workflow_nodes
            found = parity.Sources()  # where a saved workflow's packs and models come from
            if request.workflow is not None and is_saved_format(request.workflow):
                # A saved (UI-format) file: converted as the frontend would, before anything
                # else sees it (overrides name the converted prompt's node ids). On a thread:
                # a large one takes a while, and /health, cancel and ttl must not wait.
                found = parity.sources(request.workflow)
                mark = time.perf_counter()
                convert = functools.partial(
                    converter_for(self.executor.comfy, max_nodes), strict=not request.check
                )
                try:
                    request.workflow = await asyncio.to_thread(convert, request.workflow)
                except JobError as exc:
                    if not request.check:
                        raise
                    report = parity.report({}, {}, None, found, [exc])
                    return self._finish(job_id, {"check": report}, timings, started)
                finally:
                    timings["convert_s"] = time.perf_counter() - mark
            workflow, media = request.workflow, request.media
            apps = self.settings.apps
            if request.app is not None and apps is not None and apps.saved:
                convert = converter_for(self.executor.comfy, max_nodes)
                await asyncio.to_thread(apps.convert_saved, convert)
            if request.app is not None or request.overrides:
                # Before ComfyUI's validation: an app's params are checked against the
                # schema its input nodes and the live node definitions give.
                nodes = self.executor.comfy.nodes.NODE_CLASS_MAPPINGS
                workflow, app_media = build_prompt(request, self.settings.apps, nodes)
                media = [*media, *app_media]
            if request.check:
                report = self._check(workflow, found)
                return self._finish(job_id, {"check": report}, timings, started)
            workspace = self.executor.workspace(request.job_id)  # names only: no thread hop
            named = self._named(request, workflow, found)
            needed, workflow = self._models_of(request, workflow, named)
            if needed:
                mark = time.perf_counter()
                held.enter_context(self.models.in_use(needed))  # until the run settles
                fetches = [
                    self._threads.submit(
                        self.models.ensure,
                        spec,
                        bucket=request.bucket,
                        on_progress=on_progress,
                        job_deadline=job_deadline,
                    )
                    for spec in needed
                ]
                await asyncio.gather(*map(asyncio.wrap_future, fetches))
                timings["models_s"] = time.perf_counter() - mark
            if media:
                mark = time.perf_counter()
                folder = workspace.input_dir
                busy = self._threads.submit(
                    materialize, media, folder, self.settings.media, request.bucket, job_deadline
                )
                await asyncio.wrap_future(busy)
                timings["inputs_s"] = time.perf_counter() - mark
            context = JobContext(request.job_id, request.bucket, workspace.output_dir)
            context.comfy_org_api_key = request.comfy_org_api_key
            handle = self.executor.submit(
                workflow,
                workspace,
                on_progress=on_progress,
                timeout_s=request.timeout_s,
                context=context,
                previews=request.previews,
            )
            busy = handle.future
            run = await handle.wait()
            timings.update(run.timings)
            if run.error is not None:
                result = run.error.to_result()
                if run.unhealthy:
                    result["refresh_worker"] = True
                return self._finish(job_id, result, timings, started)
            mark = time.perf_counter()
            step = functools.partial(
                deliver,
                request,
                run.files,
                settings=self.settings.delivery,
                job_dir=workspace.output_dir,
                node_uploads=context.uploads,
                payload_limit=payload_limit,
            )
            renames_only = request.output_format is None and request.destination == "local"
            if renames_only and self._local_moves_are_renames():
                delivered = step()  # a rename or two: cheaper than two thread hops
            else:
                busy = self._threads.submit(step)  # uploads, encodes, copies
                delivered = await asyncio.wrap_future(busy)
            timings["deliver_s"] = time.perf_counter() - mark
            result = {"files": delivered["files"], "datas": run.datas}
            result["file_info"] = delivered["file_info"]
            warnings = [*request.warnings, *delivered.get("warnings", ()), *run.warnings]
            if warnings:
                result["warnings"] = warnings
            return self._finish(job_id, result, timings, started)
        except JobError as exc:
            return self._finish(job_id, exc.to_result(), timings, started)
        except Exception as exc:  # a bug or a broken machine (disk full): still a coded line
            log.exception("job %s: internal error", job_id)
            error = JobError("internal_error", f"{type(exc).__name__}: {exc}")
            return self._finish(job_id, error.to_result(), timings, started)
        finally:
            held.close()
            if workspace is not None:
                _cleanup_when_settled(workspace, busy)

    def _check(self, workflow: dict[str, Any], found: parity.Sources) -> dict[str, Any]:
        """A check job's report; the cache's folders count as installed."""
        comfy = self.executor.comfy
        self._register_cached()
        nodes, folder_paths = comfy.nodes.NODE_CLASS_MAPPINGS, comfy.folder_paths
        return parity.report(workflow, nodes, folder_paths, found, [])

    def _named(
        self, request: JobRequest, workflow: dict[str, Any], found: parity.Sources
    ) -> list[ModelSpec]:
        """The missing models the saved workflow names with a URL, to fetch when the job
        asks (``fetch_models``); without it, an error naming them and the flag. No cost
        for a workflow that names no model URL."""
        if not found.models:
            return []
        comfy = self.executor.comfy
        self._register_cached()  # a model fetched by an earlier job is installed
        nodes, folder_paths = comfy.nodes.NODE_CLASS_MAPPINGS, comfy.folder_paths
        missing = parity.missing_models(workflow, nodes, folder_paths, found)
        missing = [item for item in missing if item["url"] is not None]
        if missing and not request.fetch_models:
            raise parity.not_fetched(missing)
        return parity.fetchable(missing, found, folder_paths.folder_names_and_paths)

    def _register_cached(self) -> None:
        """Make ComfyUI's loaders list the cache's folders that hold files."""
        folders = self.executor.comfy.folder_paths.folder_names_and_paths
        root = self.models.root
        held = [p.name for p in root.iterdir() if p.is_dir() and p.name in folders]
        models.register(self.models, self.executor.comfy.folder_paths, sorted(held))

    def _models_of(
        self, request: JobRequest, workflow: dict[str, Any], named: list[ModelSpec]
    ) -> tuple[list[ModelSpec], dict[str, Any]]:
        """The job's models (``input.models``, ``named`` from the saved workflow and URLs
        in ``workflow``'s loader inputs), with the cache registered for their folders, and
        the workflow to run (a copy that names the cached files); no models (and no cost)
        for the usual job."""
        if not request.models and not named and not models.mentions_url(workflow):
            return [], workflow
        comfy = self.executor.comfy
        nodes, folder_paths = comfy.nodes.NODE_CLASS_MAPPINGS, comfy.folder_paths
        explicit = [*request.models, *named]
        needed, workflow = models.plan(explicit, workflow, nodes, folder_paths)
        models.register(self.models, folder_paths, sorted({spec.folder for spec in needed}))
        return needed, workflow

    def _local_moves_are_renames(self) -> bool:
        if self._renames is None:
            output_dir = self.executor.comfy.output_dir
            self._renames = moves_stay_on_one_filesystem(self.settings.delivery, output_dir)
        return self._renames

    def _finish(
        self, job_id: str, result: dict[str, Any], timings: dict[str, float], started: float
    ) -> dict[str, Any]:
        timings["total_s"] = time.perf_counter() - started
        result["timings"] = {k: round(v, 4) for k, v in timings.items()}
        phases = " ".join(f"{k[:-2]}={v:.3f}s" for k, v in timings.items())
        if "error" in result:
            log.info("job %s FAILED %s: %s", job_id, phases, result["error"])
        else:
            log.info("job %s COMPLETED %s files=%d", job_id, phases, len(result.get("files", ())))
        if self.settings.compat == compat.WORKER_COMFYUI and "check" not in result:
            return compat.shape_result(result)
        return result


def _check_bucket(bucket: BucketConfig) -> None:
    """A job's own bucket on a private address is refused before anything runs."""
    try:
        check_endpoint(bucket)
    except EndpointRefused as exc:
        raise JobError(exc.code, str(exc)) from None


def _cleanup_when_settled(
    workspace: Workspace, busy: concurrent.futures.Future[Any] | None
) -> None:
    """Remove the run's folders now, or (after a cancel) once the step still in flight
    has settled: a save node finishing after its job was cancelled must not leave files."""
    if busy is None or busy.done():
        workspace.cleanup()
    else:
        busy.add_done_callback(lambda _: workspace.cleanup())


def default_local_dir() -> Path:
    """Where files go with neither a bucket nor base64 (``COMFYUI_RUNPOD_OUTPUT``)."""
    return Path(os.environ.get("COMFYUI_RUNPOD_OUTPUT", "runpod-output")).resolve()
