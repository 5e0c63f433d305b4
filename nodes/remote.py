"""RunPod Remote Submit: run a workflow on a RunPod endpoint from desktop ComfyUI.

``count`` jobs go out in parallel (job *i* adds *i* to every seed), so a batch fans out
over as many RunPod workers; their images come back as one IMAGE batch. Remote progress
drives the node's progress bar; ComfyUI's cancel button cancels every job in flight.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from pathlib import Path
from typing import Any

from . import jobcontext, userconfig
from .imaging import PREVIEW_SIZE, encode_image, preview_image
from .runpod_api import RunPodClient, RunPodError
from .workflows import is_saved_format

log = logging.getLogger(__name__)

SEED_INPUTS = ("seed", "noise_seed")


class RemoteSubmit:
    CATEGORY = "RunPod/remote"
    DESCRIPTION = (
        "Sends an API-format workflow to a RunPod endpoint (or `comfyui-runpod serve`) and "
        "returns its images. With `app` set it sends {app, params} instead: the endpoint runs "
        "its own copy of that workflow app. API key: RUNPOD_API_KEY or "
        "user/comfyui-runpod.json; base URL: RUNPOD_ENDPOINT_BASE_URL."
    )
    FUNCTION = "submit"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("images", "datas", "job_ids")
    OUTPUT_TOOLTIPS = (
        "Every image the jobs returned, as one batch (job order, then file order).",
        "JSON object: job id → that job's datas.",
        "The RunPod job ids, one per line.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "endpoint_id": ("STRING", {"default": "", "tooltip": "RunPod endpoint id."}),
                "workflow": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "Workflow JSON (API format, or the workflow file ComfyUI "
                        "saves: the worker converts it), or the path of a .json file. Unused "
                        "when app is set.",
                    },
                ),
                "count": (
                    "INT",
                    {
                        "default": 1,
                        "min": 1,
                        "max": 64,
                        "tooltip": "Jobs to run in parallel; job i adds i to every seed.",
                    },
                ),
                "timeout_s": (
                    "INT",
                    {"default": 600, "min": 1, "max": 86400, "tooltip": "Give up after this."},
                ),
            },
            "optional": {
                "images": (
                    "IMAGE",
                    {"tooltip": "Sent as input_0.png, input_1.png... for the remote LoadImage."},
                ),
                "overrides": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": 'JSON {"<node id>.<input>": value} applied to the workflow.',
                    },
                ),
                "app": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "An app the endpoint serves (its --apps folder): sends "
                        "{app, params} instead of the workflow.",
                    },
                ),
                "params": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "The app's parameters as JSON, e.g. "
                        '{"prompt": "a cat", "seed": 7}; job i adds i to seed.',
                    },
                ),
            },
        }

    async def submit(
        self,
        endpoint_id: str,
        workflow: str,
        count: int,
        timeout_s: int,
        images: Any = None,
        overrides: str = "",
        app: str = "",
        params: str = "",
    ) -> dict[str, Any]:
        job_input: dict[str, Any] = {"tobase64": True}
        if jobcontext.current() is None:  # someone watches this node: show live previews
            job_input["previews"] = True
        if app.strip():
            base_params = load_params(params)
            if overrides.strip():
                job_input["overrides"] = json.loads(overrides)

            def job_for(i: int) -> dict[str, Any]:
                return {**job_input, "app": app.strip(), "params": offset_params(base_params, i)}
        elif is_saved_format(saved := load_workflow(workflow)):
            # A saved (UI-format) workflow goes as it is: the worker converts it with its
            # own node definitions, then applies the overrides to the converted prompt.
            if overrides.strip():
                job_input["overrides"] = json.loads(overrides)
            if count > 1:
                log.warning("a saved (UI-format) workflow: the %d jobs keep its seeds", count)

            def job_for(i: int) -> dict[str, Any]:
                return {**job_input, "workflow": saved}
        else:
            base = apply_overrides(saved, overrides)

            def job_for(i: int) -> dict[str, Any]:
                return {**job_input, "workflow": offset_seeds(base, i)}

        if images is not None:
            job_input["images"] = [
                {"name": f"input_{i}.png", "image": base64.b64encode(encode_image(image)).decode()}
                for i, image in enumerate(images)
            ]
        progress = _Progress(count)
        async with RunPodClient(endpoint_id, userconfig.runpod_api_key()) as client:
            ids = await asyncio.gather(*(client.run(job_for(i)) for i in range(count)))
            log.info("submitted %s to %s", ", ".join(ids), client.url)
            try:
                finals = await asyncio.gather(
                    *(
                        client.wait(job_id, timeout_s=timeout_s, on_status=progress.watch(job_id))
                        for job_id in ids
                    )
                )
            except BaseException:  # interrupted, failed or timed out: stop the others
                await asyncio.gather(*(client.cancel(i) for i in ids), return_exceptions=True)
                raise
            pictures = [await _decode(client, entry) for final in finals for entry in _files(final)]
        for job_id, final in zip(ids, finals, strict=True):
            for line in (final.get("output") or {}).get("warnings") or []:
                log.warning("RunPod job %s: %s", job_id, line)  # an output that did not run
        datas = {
            job_id: (final.get("output") or {}).get("datas", {})
            for job_id, final in zip(ids, finals, strict=True)
        }
        return {
            "ui": {"job_ids": ids},
            "result": (
                _batch([p for p in pictures if p is not None]),
                json.dumps(datas),
                "\n".join(ids),
            ),
        }


def load_workflow(text: str) -> dict[str, Any]:
    """Workflow JSON (API or saved UI format), or the path of a file holding it."""
    text = text.strip()
    if not text:
        raise ValueError("workflow is empty: paste API-format JSON or give a .json path")
    if not text.startswith("{"):
        if jobcontext.current() is not None:  # a worker must not read its own disk for a job
            raise ValueError("inside a RunPod job the workflow must be JSON text, not a path")
        path = Path(text).expanduser()
        if not path.is_file():
            raise ValueError(f"workflow file {path} does not exist")
        text = path.read_text(encoding="utf-8")
    workflow = json.loads(text)
    if not isinstance(workflow, dict):
        raise ValueError("workflow must be a JSON object (API or saved UI format)")
    return workflow


def load_params(text: str) -> dict[str, Any]:
    """An app's params: a JSON object (empty: the app's defaults)."""
    if not text.strip():
        return {}
    params = json.loads(text)
    if not isinstance(params, dict):
        raise ValueError('params must be a JSON object {"<name>": value}')
    return params


def offset_params(params: dict[str, Any], offset: int) -> dict[str, Any]:
    """Job ``offset`` of a fan-out: an integer ``seed``/``noise_seed`` param plus ``offset``."""
    return {
        name: value + offset
        if name in SEED_INPUTS and isinstance(value, int) and not isinstance(value, bool)
        else value
        for name, value in params.items()
    }


def apply_overrides(workflow: dict[str, Any], overrides: str) -> dict[str, Any]:
    if not overrides.strip():
        return workflow
    changes = json.loads(overrides)
    if not isinstance(changes, dict):
        raise ValueError('overrides must be a JSON object {"<node id>.<input>": value}')
    result = json.loads(json.dumps(workflow))
    for target, value in changes.items():
        node_id, _, name = target.partition(".")
        if node_id not in result or not name:
            raise ValueError(f"override {target!r}: no node {node_id!r} in the workflow")
        result[node_id].setdefault("inputs", {})[name] = value
    return result


def offset_seeds(workflow: dict[str, Any], offset: int) -> dict[str, Any]:
    """Job ``offset`` of a fan-out: every literal seed input plus ``offset``."""
    result = json.loads(json.dumps(workflow))
    for node in result.values():
        for name in SEED_INPUTS:
            value = node.get("inputs", {}).get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                node["inputs"][name] = value + offset
    return result


class _Progress:
    """Sums the remote jobs' percentages into the node's ComfyUI progress bar."""

    def __init__(self, count: int) -> None:
        import comfy.utils

        self._bar = comfy.utils.ProgressBar(100 * count)
        self._percent: dict[str, float] = {}
        self._preview: str | None = None

    def watch(self, job_id: str):
        def on_status(status: dict[str, Any]) -> None:
            output = status.get("output") if isinstance(status.get("output"), dict) else {}
            if status.get("status") == "COMPLETED":
                self._percent[job_id] = 100.0
            elif isinstance(output.get("percent"), (int, float)):
                self._percent[job_id] = float(output["percent"])
            preview = None
            if output.get("preview") and output["preview"] != self._preview:
                self._preview = output["preview"]  # a new live preview: the node shows it
                image = preview_image(self._preview)
                preview = None if image is None else ("JPEG", image, PREVIEW_SIZE)
            # Raises InterruptProcessingException once the user pressed cancel.
            self._bar.update_absolute(int(sum(self._percent.values())), preview=preview)

        return on_status


def _files(status: dict[str, Any]) -> list[str]:
    output = status.get("output") or {}
    return [f for f in output.get("files", []) if isinstance(f, str)]


async def _decode(client: RunPodClient, entry: str) -> Any:
    """One returned file as a [H, W, 3] float tensor, or None when it is not an image."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    data = (
        await client.fetch(entry)
        if entry.startswith(("http://", "https://"))
        else base64.b64decode(entry)
    )
    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError):
        return None  # audio, video, meshes...: their datas/URLs are still reported
    return torch.from_numpy(array)


def _batch(pictures: list[Any]) -> Any:
    import torch

    if not pictures:
        log.warning("the remote jobs returned no images")
        return torch.zeros((1, 64, 64, 3))
    sizes = {tuple(p.shape) for p in pictures}
    if len(sizes) > 1:
        raise RunPodError(f"the remote images differ in size ({sorted(sizes)}); cannot batch them")
    return torch.stack(pictures)
