"""Models a job names by URL: fetched once into a cache, verified, shared, bounded.

The cache lives on the RunPod network volume when there is one, so the next job and the
next worker find a model already there. Its layout::

    <cache>/<folder>/<name>        finished files (ComfyUI's loaders list them)
    <cache>/.partial/<key>         downloads in progress, resumed by HTTP range
    <cache>/.locks/<key>           one downloader per file across processes; a job
                                   holds a shared lock on what it uses, so eviction
                                   (least recently used first) passes it by
    <cache>/.meta/<key>.json       where a file came from (its URL without the query)

A file appears under its name only after its size and sha256 are checked: a download
that dies leaves nothing a loader could pick up. Request headers (private hosts' tokens)
and URL queries (signed URLs) are secrets: never logged, never in errors or results.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..nodes.storage import BucketConfig, StorageError, open_object
from .errors import JobError, mib
from .urlguard import URLRefused, open_checked_url

log = logging.getLogger(__name__)

#: Where a model may come from (also written straight into a loader's file input).
MODEL_URL_SCHEMES = ("https://", "http://", "s3://")
#: Where the cache goes when a RunPod network volume is mounted.
VOLUME_CACHE = Path("/runpod-volume/comfyui-runpod/models")
_CHUNK = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ +-]{0,199}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")

ProgressCallback = Callable[[dict[str, Any]], None]


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``COMFYUI_RUNPOD_MODEL_CACHE``, else the network volume's, else a per-user folder."""
    if environ.get("COMFYUI_RUNPOD_MODEL_CACHE"):
        return Path(environ["COMFYUI_RUNPOD_MODEL_CACHE"]).expanduser()
    if VOLUME_CACHE.parent.parent.is_dir():
        return VOLUME_CACHE
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "comfyui-runpod" / "models"


@dataclass(frozen=True)
class ModelSpec:
    """One model a job needs: where from, which ComfyUI model folder, under which name."""

    url: str
    folder: str
    name: str
    sha256: str | None = None
    #: Request headers for private hosts (e.g. Authorization): secrets.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def public_url(self) -> str:
        """The URL as errors and logs may show it: no query, no credentials."""
        return public_url(self.url)


@dataclass(frozen=True)
class ModelSettings:
    cache_dir: Path
    #: Least recently used files go when the cache would grow past this (None: no cap).
    max_cache_bytes: int | None = None
    #: A single file larger than this is refused (``model_too_large``).
    max_file_bytes: int = 64 * 1024**3
    #: Seconds without a byte before a download is given up.
    read_timeout_s: float = 60.0
    allow_private_urls: bool = False


def public_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def name_from_url(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


def check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise JobError(
            "invalid_input",
            f"{where}: {name!r} is not an allowed model file name (letters, digits, '._ +-', "
            "no folders, at most 200 characters)",
        )
    return name


def check_sha256(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.match(value):
        raise JobError("invalid_input", f"{where}.sha256 must be 64 hex digits")
    return value.lower()


#: A ComfyUI model folder name (``checkpoints``, ``loras``, ...); checked against the
#: booted ComfyUI's folders before the run.
_FOLDER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def parse_specs(value: Any, where_all: str) -> list[ModelSpec]:
    """``input.models`` (or a boot manifest's list) as specs; ``where_all`` names it."""
    if value is None:
        return []
    shape = f'{where_all} must be a list of {{"url", "folder", "name"?, "sha256"?, "headers"?}}'
    if not isinstance(value, list):
        raise JobError("invalid_input", shape)
    specs = []
    for index, item in enumerate(value):
        where = f"{where_all}[{index}]"
        if not isinstance(item, Mapping):
            raise JobError("invalid_input", f"{where} must be an object: {shape}")
        url = item.get("url")
        if not isinstance(url, str) or not url.startswith(MODEL_URL_SCHEMES):
            raise JobError("invalid_input", f"{where}.url must be an http(s):// or s3:// URL")
        folder = item.get("folder")
        if not isinstance(folder, str) or not _FOLDER.match(folder):
            raise JobError(
                "invalid_input", f"{where}.folder must name a ComfyUI model folder, e.g. loras"
            )
        headers = item.get("headers") or {}
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise JobError("invalid_input", f"{where}.headers must map names to strings")
        name = check_name(item.get("name") or name_from_url(url), f"{where}.name")
        sha256 = check_sha256(item.get("sha256"), where)
        specs.append(ModelSpec(url, folder, name, sha256, dict(headers)))
    return specs


def read_manifest(path: Path) -> list[ModelSpec]:
    """A boot manifest (YAML or JSON): ``models: [{url, folder, name?, sha256?}]``."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise JobError("invalid_input", f"model manifest {path}: {exc}") from None
    items = document.get("models") if isinstance(document, dict) else document
    return parse_specs(items, f"{path}: models")


class ModelCache:
    """Downloads into, reads from and evicts out of one cache folder (thread-safe and
    safe across processes that share the folder, through file locks)."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.root = settings.cache_dir
        for sub in (".partial", ".locks", ".meta"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def path_of(self, spec: ModelSpec) -> Path:
        return self.root / spec.folder / spec.name

    def ensure(
        self,
        spec: ModelSpec,
        *,
        bucket: BucketConfig | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> bool:
        """Have ``spec`` in the cache; True when it had to be downloaded.

        Call it inside :meth:`in_use` for the same spec, so that eviction cannot take
        the file between this check and the job that loads it.
        """
        target = self.path_of(spec)
        key = _key(spec)
        if not target.is_file():
            # One downloader per file, across processes: the others wait here, then find it.
            with self._locked(f"{key}.download", fcntl.LOCK_EX):
                if not target.is_file():
                    self._download(spec, target, key, bucket, on_progress)
                    return True
        self._check_same_source(spec, key)
        _touch(target)
        return False

    @contextlib.contextmanager
    def in_use(self, specs: Sequence[ModelSpec]) -> Iterator[None]:
        """Hold shared locks on ``specs`` while a job runs: eviction passes them by."""
        with contextlib.ExitStack() as stack:
            for spec in specs:
                stack.enter_context(self._locked(_key(spec), fcntl.LOCK_SH))
            yield

    def size(self) -> int:
        return sum(path.stat().st_size for path in self._files())

    # -- downloading -----------------------------------------------------------------------

    def _download(
        self,
        spec: ModelSpec,
        target: Path,
        key: str,
        bucket: BucketConfig | None,
        on_progress: ProgressCallback | None,
    ) -> None:
        partial = self.root / ".partial" / key
        offset = partial.stat().st_size if partial.is_file() else 0
        started = time.monotonic()
        try:
            with self._open(spec, offset, bucket) as (stream, total, resumed):
                if not resumed:
                    offset = 0
                if total is not None and total > self.settings.max_file_bytes:
                    raise _too_large(spec, total, self.settings.max_file_bytes)
                if total is not None:
                    self._make_room(total - offset, keep=target)
                digest = hashlib.sha256()
                if offset:
                    with partial.open("rb") as done:
                        for block in iter(lambda: done.read(_CHUNK), b""):
                            digest.update(block)
                written = offset
                report = _Reporter(spec, total, on_progress)
                with partial.open("ab" if offset else "wb") as out:
                    for block in iter(lambda: stream.read(_CHUNK), b""):
                        written += len(block)
                        if written > self.settings.max_file_bytes:
                            raise _too_large(spec, written, self.settings.max_file_bytes)
                        out.write(block)
                        digest.update(block)
                        report(written)
            if total is not None and written != total:
                raise ConnectionError(f"the connection closed after {written} of {total} bytes")
        except (JobError, URLRefused) as exc:
            partial.unlink(missing_ok=True)  # a refusal, a bad size: nothing to resume
            if isinstance(exc, URLRefused):
                raise _failed(spec, str(exc)) from None
            raise
        except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                partial.unlink(missing_ok=True)
                raise _failed(spec, f"HTTP {exc.code} {exc.reason}") from None
            # The network died mid-file: keep what came for the next try's HTTP range.
            if partial.is_file() and partial.stat().st_size == 0:
                partial.unlink()
            reason = getattr(exc, "reason", None) or exc
            raise _failed(spec, f"{type(exc).__name__}: {reason}") from None
        if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
            partial.unlink(missing_ok=True)
            raise JobError(
                "model_checksum_mismatch",
                f"model {spec.name} from {spec.public_url} has sha256 {digest.hexdigest()}, "
                f"not the {spec.sha256} the job expects",
                {"url": spec.public_url, "expected": spec.sha256, "found": digest.hexdigest()},
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, target)  # only a verified, complete file gets its name
        meta = {"url": spec.public_url, "sha256": digest.hexdigest(), "size": written}
        (self.root / ".meta" / f"{key}.json").write_text(json.dumps(meta), encoding="utf-8")
        log.info(
            "model %s/%s: %s in %.1fs from %s",
            spec.folder,
            spec.name,
            mib(written),
            time.monotonic() - started,
            spec.public_url,
        )

    @contextlib.contextmanager
    def _open(
        self, spec: ModelSpec, offset: int, bucket: BucketConfig | None
    ) -> Iterator[tuple[IO[bytes], int | None, bool]]:
        """(body stream, total size or None, whether it starts at ``offset``)."""
        if spec.url.startswith("s3://"):
            if bucket is None:
                raise _failed(spec, "s3:// needs bucket credentials (tobucket, s3Config or env)")
            bucket_name, _, object_key = spec.url[len("s3://") :].partition("/")
            try:
                body, total, resumed = open_object(bucket, bucket_name, object_key, offset)
            except StorageError as exc:  # not found, denied, unreachable
                raise _failed(spec, str(exc)) from None
            with contextlib.closing(body):
                yield body, total, resumed
            return
        headers = dict(spec.headers)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = open_checked_url(
            spec.url,
            timeout_s=self.settings.read_timeout_s,
            allow_private=self.settings.allow_private_urls,
            headers=headers,
        )
        with response:
            resumed = offset > 0 and response.status == 206
            length = response.headers.get("Content-Length")
            total = None
            if length and length.isdigit():
                total = int(length) + (offset if resumed else 0)
            yield response, total, resumed

    # -- bookkeeping -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, key: str, mode: int) -> Iterator[None]:
        with (self.root / ".locks" / key).open("a+b") as handle:
            fcntl.flock(handle, mode)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _check_same_source(self, spec: ModelSpec, key: str) -> None:
        try:
            meta = json.loads((self.root / ".meta" / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # put there by hand: trust it
        if spec.sha256 is not None and meta.get("sha256") != spec.sha256:
            raise JobError(
                "model_checksum_mismatch",
                f"model {spec.folder}/{spec.name} in the cache has sha256 {meta.get('sha256')}, "
                f"not the {spec.sha256} the job expects; give it another name",
                {"url": spec.public_url, "expected": spec.sha256, "found": meta.get("sha256")},
            )
        if meta.get("url") not in (None, spec.public_url):
            raise JobError(
                "invalid_input",
                f"model {spec.folder}/{spec.name} is already cached from another URL "
                f"({meta.get('url')}); give this one another name",
            )

    def _files(self) -> list[Path]:
        return [
            path
            for folder in self.root.iterdir()
            if folder.is_dir() and not folder.name.startswith(".")
            for path in folder.rglob("*")
            if path.is_file()
        ]

    def _make_room(self, incoming: int, keep: Path) -> None:
        """Evict least recently used files not in use until ``incoming`` bytes fit."""
        cap = self.settings.max_cache_bytes
        if cap is None:
            return
        if incoming > cap:
            raise JobError(
                "model_too_large",
                f"a model of {mib(incoming)} cannot fit the {mib(cap)} model cache",
                {"size": incoming, "limit": cap},
            )
        files = sorted(self._files(), key=lambda p: p.stat().st_mtime)
        used = sum(p.stat().st_size for p in files)
        for path in files:
            if used + incoming <= cap:
                return
            if path == keep:
                continue
            key = _key_of(path.relative_to(self.root))
            with (self.root / ".locks" / key).open("a+b") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a running job uses it
                size = path.stat().st_size
                path.unlink(missing_ok=True)
                (self.root / ".meta" / f"{key}.json").unlink(missing_ok=True)
                fcntl.flock(handle, fcntl.LOCK_UN)
            used -= size
            log.info("model cache: evicted %s (%s)", path.relative_to(self.root), mib(size))
        if used + incoming > cap:
            raise JobError(
                "model_too_large",
                f"the model cache ({mib(cap)}) is full of models in use; "
                f"{mib(incoming)} more does not fit",
                {"size": incoming, "limit": cap},
            )


class _Reporter:
    """Download progress, at most every 0.5 s (and at the end)."""

    def __init__(self, spec: ModelSpec, total: int | None, send: ProgressCallback | None):
        self.spec, self.total, self.send, self.last = spec, total, send, 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self.send is None or (now - self.last < 0.5 and done != self.total):
            return
        self.last = now
        event = {"event": "download", "model": self.spec.name, "bytes": done}
        self.send({**event, "total": self.total})


def _key(spec: ModelSpec) -> str:
    return _key_of(Path(spec.folder) / spec.name)


def _key_of(relative: Path) -> str:
    return hashlib.sha256(relative.as_posix().encode()).hexdigest()[:32]


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)  # the eviction order: least recently used first


def _failed(spec: ModelSpec, reason: str) -> JobError:
    return JobError(
        "model_download_failed",
        f"model {spec.name} from {spec.public_url}: {reason}",
        {"url": spec.public_url, "reason": reason},
    )


def _too_large(spec: ModelSpec, size: int, limit: int) -> JobError:
    return JobError(
        "model_too_large",
        f"model {spec.name} from {spec.public_url} is {mib(size)}, over the {mib(limit)} "
        "limit per model file",
        {"url": spec.public_url, "size": size, "limit": limit},
    )


#: Loader inputs that name a model file, and the folder they list: a URL written straight
#: into one of them is fetched into that folder. Other inputs are matched by their list.
_FOLDER_OF_INPUT = {
    "ckpt_name": "checkpoints",
    "lora_name": "loras",
    "vae_name": "vae",
    "control_net_name": "controlnet",
    "unet_name": "diffusion_models",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "clip_name4": "text_encoders",
    "style_model_name": "style_models",
    "gligen_name": "gligen",
    "hypernetwork_name": "hypernetworks",
}
_FOLDER_OF_CLASS_INPUT = {
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
}


def plan(
    explicit: Sequence[ModelSpec],
    workflow: dict[str, Any],
    node_classes: Mapping[str, Any],
    folder_paths: Any,
) -> list[ModelSpec]:
    """The models a job needs: ``input.models`` plus URLs written into loaders' file
    inputs (each replaced by the cached file's name, so ComfyUI validates a plain name).
    Folders are checked against the booted ComfyUI's; nothing is fetched here."""
    folders = folder_paths.folder_names_and_paths
    for index, spec in enumerate(explicit):
        if spec.folder not in folders or spec.folder in ("custom_nodes", "configs"):
            raise JobError(
                "invalid_input",
                f"input.models[{index}].folder {spec.folder!r} is not a ComfyUI model folder "
                f"(e.g. {', '.join(sorted(f for f in folders if f != 'custom_nodes')[:8])})",
            )
    specs = {spec.url: spec for spec in explicit}
    for node_id, node in workflow.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for name, value in inputs.items():
            if not isinstance(value, str) or not value.startswith(MODEL_URL_SCHEMES):
                continue
            class_type = node.get("class_type")
            where = f"node {node_id} ({class_type}) input {name}"
            spec = specs.get(value)
            if spec is None:
                folder = _folder_of(class_type, name, node_classes, folder_paths)
                if folder is None:
                    raise JobError(
                        "invalid_input",
                        f"{where} is a URL, but that input does not name a model file; list "
                        "the model in input.models with its folder instead",
                    )
                spec = ModelSpec(value, folder, check_name(name_from_url(value), where))
                specs[value] = spec
            inputs[name] = spec.name
    return list(specs.values())


def mentions_url(workflow: Mapping[str, Any]) -> bool:
    """Whether any input value is a model URL (the cheap test before :func:`plan`)."""
    return any(
        isinstance(value, str) and value.startswith(MODEL_URL_SCHEMES)
        for node in workflow.values()
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict)
        for value in node["inputs"].values()
    )


def progress_line(event: dict[str, Any]) -> None:
    """A boot manifest's progress: one line per file and update, on stderr."""
    total = event.get("total")
    size = f"{mib(event['bytes'])} of {mib(total)}" if total else mib(event["bytes"])
    log.info("downloading model %s: %s", event["model"], size)


def register(cache: ModelCache, folder_paths: Any, folders: Sequence[str]) -> None:
    """Make ComfyUI's loaders list the cache's files for ``folders`` (once each). The
    folders are made now: ComfyUI's file-list cache fails on a listed folder that is gone."""
    for folder in folders:
        path = cache.root / folder
        path.mkdir(parents=True, exist_ok=True)
        if str(path) not in folder_paths.folder_names_and_paths[folder][0]:
            folder_paths.add_model_folder_path(folder, str(path))


def _folder_of(
    class_type: Any, name: str, node_classes: Mapping[str, Any], folder_paths: Any
) -> str | None:
    folder = _FOLDER_OF_CLASS_INPUT.get((class_type, name)) or _FOLDER_OF_INPUT.get(name)
    if folder is not None:
        return folder
    try:  # a loader we do not know: the folder whose file list is this input's choices
        spec = node_classes[class_type].INPUT_TYPES()
        options = {**spec.get("required", {}), **spec.get("optional", {})}[name][0]
    except Exception:
        return None
    if not isinstance(options, list) or not options:
        return None
    matches = [
        folder
        for folder in folder_paths.folder_names_and_paths
        if folder not in ("custom_nodes", "configs")
        and folder_paths.get_filename_list(folder) == options
    ]
    return matches[0] if len(matches) == 1 else None
