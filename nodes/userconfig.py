"""Desktop settings for the nodes: environment first, then a JSON file in ComfyUI's user
folder (``<ComfyUI>/user/comfyui-runpod.json``). Secrets live here, never in widgets —
widget values are saved into every PNG and every shared workflow.

File format::

    {"bucket": {"endpointUrl": "...", "accessId": "...", "accessSecret": "...",
                "bucketName": "..."},
     "runpod_api_key": "..."}
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .storage import BucketConfig

log = logging.getLogger(__name__)

FILE_NAME = "comfyui-runpod.json"


def config_path() -> Path | None:
    try:
        import folder_paths
    except ImportError:  # not inside ComfyUI
        return None
    return Path(folder_paths.get_user_directory()) / FILE_NAME


def load() -> dict[str, Any]:
    path = config_path()
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def desktop_bucket() -> BucketConfig | None:
    """``BUCKET_*`` env, else the config file's ``bucket``; None when neither is set."""
    from_env = BucketConfig.from_env(os.environ)
    if from_env is not None:
        return from_env
    bucket = load().get("bucket")
    return None if bucket is None else BucketConfig.from_contract(bucket, FILE_NAME)


def runpod_api_key() -> str | None:
    return os.environ.get("RUNPOD_API_KEY") or load().get("runpod_api_key") or None
