"""Desktop settings for the nodes: environment first, then a JSON file in ComfyUI's user
folder (``<ComfyUI>/user/comfyui-runpod.json``). Secrets live here, never in widgets —
widget values are saved into every PNG and every shared workflow.

File format::

    {"bucket": {"endpointUrl": "...", "accessId": "...", "accessSecret": "...",
                "bucketName": "..."},
     "runpod_api_key": "...", "runpod_api_key_origin": "https://api.runpod.ai:443",
     "runpod_endpoint_id": "...", "runpod_base_url": "..."}

The desktop "Queue on RunPod" settings dialog writes the ``runpod_*`` keys through the
pack's routes (:func:`save_endpoint`); the API key never goes back to the browser. The key
is bound to the origin (scheme, host, port) it was entered for: a base URL on another
origin needs the key entered again, so that whoever can change the base URL cannot have
the key sent to their own host.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .runpod_api import DEFAULT_BASE_URL
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


KEY_ORIGIN = "runpod_api_key_origin"


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``, the port spelled out (``https://h`` is
    ``https://h:443``): what a key is bound to. A malformed URL is an origin of its own."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower(), 0)
    except ValueError:
        return url.strip()
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"


@dataclass(frozen=True)
class EndpointConfig:
    """Where desktop jobs go. ``*_source``: ``"env"``, ``"file"`` or None (unset), so the
    settings dialog can say where a value comes from (and that env wins).
    ``api_key_origin``: the origin the key was entered for (an env key: the env base
    URL's, else RunPod's; a file key saved before keys were bound: the base URL's)."""

    endpoint_id: str | None
    base_url: str | None
    api_key: str | None
    endpoint_source: str | None
    base_url_source: str | None
    api_key_source: str | None
    api_key_origin: str | None = None

    @property
    def url(self) -> str:
        return self.base_url or DEFAULT_BASE_URL

    @property
    def key_fits(self) -> bool:
        """Whether the key may go to :attr:`url` (it was entered for that origin)."""
        return bool(self.api_key) and self.api_key_origin == origin(self.url)


def _pick(env_name: str, file_value: Any) -> tuple[str | None, str | None]:
    if os.environ.get(env_name):
        return os.environ[env_name], "env"
    if isinstance(file_value, str) and file_value.strip():
        return file_value.strip(), "file"
    return None, None


def desktop_endpoint() -> EndpointConfig:
    """Env ``COMFYUI_RUNPOD_ENDPOINT_ID`` / ``RUNPOD_ENDPOINT_BASE_URL`` / ``RUNPOD_API_KEY``,
    else the config file (which the settings dialog writes)."""
    data = load()
    endpoint, endpoint_source = _pick("COMFYUI_RUNPOD_ENDPOINT_ID", data.get("runpod_endpoint_id"))
    base, base_source = _pick("RUNPOD_ENDPOINT_BASE_URL", data.get("runpod_base_url"))
    key, key_source = _pick("RUNPOD_API_KEY", data.get("runpod_api_key"))
    if key_source == "env":
        bound = origin(os.environ.get("RUNPOD_ENDPOINT_BASE_URL") or DEFAULT_BASE_URL)
    elif key_source == "file":
        stored = data.get(KEY_ORIGIN)
        bound = stored if isinstance(stored, str) and stored else origin(base or DEFAULT_BASE_URL)
    else:
        bound = None
    return EndpointConfig(
        endpoint, base, key, endpoint_source, base_source, key_source, api_key_origin=bound
    )


def save_endpoint(updates: dict[str, str | None]) -> str | None:
    """:func:`save` the dialog's ``runpod_*`` updates, keeping the file's API key bound to
    its origin: a key in ``updates`` is bound to the base URL in force afterwards; a base
    URL on another origin drops the stored key. Returns the origin whose key was dropped,
    None when none was."""
    before = desktop_endpoint()
    updates = dict(updates)
    if "runpod_base_url" in updates and not os.environ.get("RUNPOD_ENDPOINT_BASE_URL"):
        after = origin(str(updates["runpod_base_url"] or "").strip() or DEFAULT_BASE_URL)
    else:
        after = origin(before.url)
    dropped = None
    if str(updates.get("runpod_api_key") or "").strip():
        updates[KEY_ORIGIN] = after
    elif "runpod_api_key" in updates:
        updates[KEY_ORIGIN] = None
    elif before.api_key_source == "file" and before.api_key_origin != after:
        dropped = before.api_key_origin
        updates["runpod_api_key"] = updates[KEY_ORIGIN] = None
    save(updates)
    return dropped


def save(updates: dict[str, str | None]) -> Path:
    """Merge ``updates`` into the config file (None or "" removes a key); owner-only
    permissions and an atomic replace, because the file holds secrets."""
    path = config_path()
    if path is None:
        raise RuntimeError("not inside ComfyUI: no user folder to save settings in")
    data = load()
    for name, value in updates.items():
        if value is None or not str(value).strip():
            data.pop(name, None)
        else:
            data[name] = str(value).strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".comfyui-runpod-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
