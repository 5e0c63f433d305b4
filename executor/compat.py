"""Serve clients written for RunPod's official ComfyUI worker (runpod-workers/worker-comfyui
5.x) unchanged: ``--compat worker-comfyui`` gives results in that worker's shape.

Its requests already parse here (``workflow``, ``images``, ``api_key_comfy_org``). Its
results differ from this project's contract::

    {"images": [{"filename": "ComfyUI_00001_.png", "type": "base64" | "s3_url",
                 "data": "<base64 or URL>"}], "errors"?: ["<line>"]}  success
    {"status": "success_no_images", "images": []}                  no image output
    {"error": "<message>", "details": ["<line>", ...]}             failure

It returns only the ``images`` ui outputs (SaveImage, and video nodes, which ComfyUI
reports under ``images`` too), base64 unless a bucket applies (it has no local paths).
docs/worker-comfyui.md maps every field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

WORKER_COMFYUI = "worker-comfyui"
#: The ``--compat`` choices.
MODES = (WORKER_COMFYUI,)


def prepare_job(job: Any) -> Any:
    """worker-comfyui never returns local paths: without a bucket (or the job's own
    ``toUrls`` or ``toazure``), files come as base64."""
    if not isinstance(job, Mapping) or not isinstance(job.get("input"), Mapping):
        return job  # the parser reports what is wrong
    job_input = job["input"]
    if any(name in job_input for name in ("tobase64", "toUrls", "toazure")):
        return job
    return {**job, "input": {**job_input, "tobase64": True}}


def shape_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """This project's result (or error) in worker-comfyui's shape."""
    if "error" in result:
        shaped: dict[str, Any] = {"error": result["error"], "details": _detail_lines(result)}
        if result.get("refresh_worker"):
            shaped["refresh_worker"] = True
        return shaped
    images = [
        {
            "filename": info["name"].rsplit("/", 1)[-1],
            "type": "s3_url" if info.get("delivered") in ("bucket", "urls", "azure") else "base64",
            "data": entry,
        }
        for entry, info in zip(result["files"], result["file_info"], strict=True)
        if info.get("kind") == "images"
    ]
    shaped = {"images": images} if images else {"status": "success_no_images", "images": []}
    if result.get("warnings"):  # outputs that did not validate: that worker's ``errors``
        shaped["errors"] = list(result["warnings"])
    return shaped


def _detail_lines(result: Mapping[str, Any]) -> list[str]:
    """``details`` as worker-comfyui has it: lines a person reads (node errors first)."""
    details = result.get("details") or {}
    lines = []
    for node_id, info in (details.get("node_errors") or {}).items():
        for error in info.get("errors") or []:
            text = error.get("message", "")
            if error.get("details"):
                text = f"{text}: {error['details']}"
            lines.append(f"Node {node_id} ({info.get('class_type')}): {text}")
    return lines or [str(result["error"])]
