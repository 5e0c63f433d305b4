"""Models a job names by URL: fetched once into a cache, verified, shared, bounded.

The cache lives on the RunPod network volume when there is one, so the next job and the
next worker find a model already there. Its layout::

    <cache>/<folder>/<name>        finished files (ComfyUI's loaders list them)
    <cache>/.partial/<key>         downloads in progress, resumed by HTTP range
    <cache>/.locks/<key>           one downloader per file across processes; a job
                                   holds a shared lock on what it uses, so eviction
                                   (least recently used first) passes it by
    <cache>/.meta/<key>.json       where a file came from (its URL without the query)
    <cache>/.meta/<key>.partial.json  where a partial file came from, and its ETag or
                                   Last-Modified: only the same file is resumed

A file appears under its name only after its size and sha256 are checked, and after its
metadata: a download that dies leaves nothing a loader could pick up. Partial files count
toward the cache's cap, and a download without a length is held to it as it streams.
Each download ends at a deadline (``deadline``), whatever the server's pace.

Request headers (private hosts' tokens) and URL queries (signed URLs) are secrets: never
logged, never in errors or results.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..nodes.netguard import redact
from ..nodes.storage import BucketConfig, StorageError, open_object
from .deadline import Deadline
from .errors import JobError, mib
from .urlguard import URLRefused, open_checked_url

log = logging.getLogger(__name__)

#: Where a model may come from (also written straight into a loader's file input).
MODEL_URL_SCHEMES = ("https://", "http://", "s3://")
#: Where the cache goes when a RunPod network volume is mounted.
VOLUME_CACHE = Path("/runpod-volume/comfyui-runpod/models")
_CHUNK = 1 << 20
#: How far ahead a download without a length reserves room under the cache's cap.
_RESERVE_STEP = 64 << 20
#: The flag that sets ``download_timeout_s`` (named when a download runs out of time).
MODEL_DOWNLOAD_FLAG = "--model-download-timeout"
# Matched whole (``fullmatch``): ``$`` would also pass a trailing newline.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ +-]{0,199}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

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
    #: Seconds a download may take in all (less when the job's own time ends sooner):
    #: a server that trickles a byte now and then never trips ``read_timeout_s``.
    download_timeout_s: float = 3600.0
    allow_private_urls: bool = False
    #: Hosts a job's model URLs may name (a host allows its subdomains); empty: any
    #: public host. The operator's own manifest is not limited.
    allowed_hosts: tuple[str, ...] = ()


def public_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def name_from_url(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


def check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise JobError(
            "invalid_input",
            f"{where}: {name!r} is not an allowed model file name (letters, digits, '._ +-', "
            "no folders, at most 200 characters)",
        )
    return name


def check_sha256(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise JobError("invalid_input", f"{where}.sha256 must be 64 hex digits")
    return value.lower()


#: A ComfyUI model folder name (``checkpoints``, ``loras``, ...); checked against the
#: booted ComfyUI's folders before the run.
_FOLDER = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
        if not isinstance(folder, str) or not _FOLDER.fullmatch(folder):
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
        job_deadline: float | None = None,
        trusted: bool = False,
    ) -> bool:
        """Have ``spec`` in the cache; True when it had to be downloaded. ``trusted``: the
        operator's own (the boot manifest), not held to ``allowed_hosts``.

        Call it inside :meth:`in_use` for the same spec, so that eviction cannot take
        the file between this check and the job that loads it. ``job_deadline`` (a
        ``time.monotonic()`` instant) is when the job's own time ends: a download stops
        then at the latest.
        """
        target = self.path_of(spec)
        key = _key(spec)
        if not target.is_file():
            if not trusted:
                self._check_host(spec)
            # One downloader per file, across processes: the others wait here, then find it.
            with self._locked(f"{key}.download", fcntl.LOCK_EX):
                if not target.is_file():
                    deadline = Deadline.within(
                        self.settings.download_timeout_s, MODEL_DOWNLOAD_FLAG, job_deadline
                    )
                    self._download(spec, target, key, bucket, on_progress, deadline)
                    return True
        self._check_same_source(spec, key, target)
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
        """Bytes the cache holds: finished files and partial downloads."""
        return sum(size for _, size, _ in self._entries())

    # -- downloading -----------------------------------------------------------------------

    def _download(
        self,
        spec: ModelSpec,
        target: Path,
        key: str,
        bucket: BucketConfig | None,
        on_progress: ProgressCallback | None,
        deadline: Deadline,
    ) -> None:
        partial = self.root / ".partial" / key
        offset, validator = self._resumable(spec, key)
        started = time.monotonic()
        try:
            with (
                contextlib.ExitStack() as stack,
                deadline,
                self._open(spec, offset, validator, bucket, deadline) as body,
            ):
                if body.start == 0:
                    offset = 0
                    # Where these bytes come from: a later try resumes only the same file.
                    source = {"url": spec.public_url, "validator": body.validator}
                    _write_json(self._partial_source(key), source)
                total = body.total
                if total is not None and total > self.settings.max_file_bytes:
                    raise _too_large(spec, total, self.settings.max_file_bytes)
                room = self._make_room(total, partial) if total is not None else 0
                digest = _sha256_of(partial) if offset else hashlib.sha256()
                written = offset
                report = _Reporter(spec, total, offset, on_progress)
                stack.callback(report.close)
                with partial.open("ab" if offset else "wb") as out:
                    for block in iter(lambda: body.stream.read(_CHUNK), b""):
                        written += len(block)
                        if written > self.settings.max_file_bytes:
                            raise _too_large(spec, written, self.settings.max_file_bytes)
                        if written > room:  # no length given, or more than it said
                            room = self._make_room(written, partial, ahead=_RESERVE_STEP)
                        out.write(block)
                        digest.update(block)
                        report(written)
            if deadline.expired:  # the connection was cut when time ran out
                raise TimeoutError(f"after {written} bytes")
            if total is not None and written != total:
                raise ConnectionError(f"the connection closed after {written} of {total} bytes")
        except (JobError, URLRefused) as exc:
            self._drop_partial(key)  # a refusal, a bad size: nothing to resume
            if isinstance(exc, URLRefused):
                raise _failed(spec, str(exc)) from None
            raise
        except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                self._drop_partial(key)
                raise _failed(spec, f"HTTP {exc.code} {exc.reason}") from None
            # The network died mid-file: keep what came for the next try's HTTP range.
            if partial.is_file() and partial.stat().st_size == 0:
                self._drop_partial(key)
            if deadline.expired:
                raise _failed(spec, f"the download {deadline.describe()}") from None
            reason = redact(str(getattr(exc, "reason", None) or exc), spec.url)
            raise _failed(spec, f"{type(exc).__name__}: {reason}") from None
        if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
            self._drop_partial(key)
            raise JobError(
                "model_checksum_mismatch",
                f"model {spec.name} from {spec.public_url} has sha256 {digest.hexdigest()}, "
                f"not the {spec.sha256} the job expects",
                {"url": spec.public_url, "expected": spec.sha256, "found": digest.hexdigest()},
            )
        meta = {"url": spec.public_url, "sha256": digest.hexdigest(), "size": written}
        try:  # the metadata first: a file never has its name without it
            _write_json(self.root / ".meta" / f"{key}.json", meta)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, target)  # only a verified, complete file gets its name
        except OSError:
            self._drop_partial(key)
            raise
        self._partial_source(key).unlink(missing_ok=True)
        log.info(
            "model %s/%s: %s in %.1fs from %s",
            spec.folder,
            spec.name,
            mib(written),
            time.monotonic() - started,
            spec.public_url,
        )

    def _resumable(self, spec: ModelSpec, key: str) -> tuple[int, str | None]:
        """(bytes to resume from, the validator they were sent under) for a partial file
        that came from this URL under a validator; (0, None) means start again."""
        try:
            size = (self.root / ".partial" / key).stat().st_size
            source = json.loads(self._partial_source(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0, None
        validator = source.get("validator") if isinstance(source, dict) else None
        if size and source.get("url") == spec.public_url and isinstance(validator, str):
            return size, validator
        return 0, None

    @contextlib.contextmanager
    def _open(
        self,
        spec: ModelSpec,
        offset: int,
        validator: str | None,
        bucket: BucketConfig | None,
        deadline: Deadline,
    ) -> Iterator[_Body]:
        """The body from ``offset`` if the source still has the same file there (``If-Range``
        and the answer's ``Content-Range`` say so), else from the start."""
        if spec.url.startswith("s3://"):
            # No validator comes back from S3 here: a partial file is not resumed.
            if bucket is None:
                raise _failed(spec, "s3:// needs bucket credentials (tobucket, s3Config or env)")
            bucket_name, _, object_key = spec.url[len("s3://") :].partition("/")
            try:
                stream, total, _ = open_object(bucket, bucket_name, object_key)
            except StorageError as exc:  # not found, denied, unreachable; or refused
                if exc.code == "invalid_input":
                    raise JobError(exc.code, f"model {spec.name}: {exc}") from None
                raise _failed(spec, str(exc)) from None
            with contextlib.closing(stream):
                deadline.watch_stream(stream)
                yield _Body(_ObjectStream(stream), total, 0, None)
            return
        response = self._request(spec, offset, validator, deadline)
        resumed = bool(offset) and response.status == 206
        if resumed and _range_start(response) != offset:  # not the range asked for
            response.close()
            log.info("model %s: the server did not resume at byte %d; again", spec.name, offset)
            response, resumed = self._request(spec, 0, None, deadline), False
        start = offset if resumed else 0
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) + start if length and length.isdigit() else None
            yield _Body(response, total, start, _validator(response))

    def _request(
        self, spec: ModelSpec, offset: int, validator: str | None, deadline: Deadline
    ) -> http.client.HTTPResponse:
        headers = dict(spec.headers)
        if offset and validator:
            # The rest of the file only if it is still the same file; else all of it.
            headers.update({"Range": f"bytes={offset}-", "If-Range": validator})
        return open_checked_url(
            spec.url,
            timeout_s=deadline.timeout(self.settings.read_timeout_s),
            allow_private=self.settings.allow_private_urls,
            headers=headers,
        )

    # -- bookkeeping -----------------------------------------------------------------------

    def _check_host(self, spec: ModelSpec) -> None:
        """The operator's allow-list (``COMFYUI_RUNPOD_MODEL_HOSTS``), before any byte."""
        allowed = self.settings.allowed_hosts
        if not allowed or spec.url.startswith("s3://"):
            return
        host = (urllib.parse.urlsplit(spec.url).hostname or "").lower()
        if not any(host == a or host.endswith(f".{a}") for a in allowed):
            raise JobError(
                "invalid_input",
                f"model {spec.folder}/{spec.name}: {host} is not among the hosts this worker "
                f"fetches models from ({', '.join(allowed)}; COMFYUI_RUNPOD_MODEL_HOSTS)",
            )

    @contextlib.contextmanager
    def _locked(self, key: str, mode: int) -> Iterator[None]:
        with (self.root / ".locks" / key).open("a+b") as handle:
            fcntl.flock(handle, mode)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _partial_source(self, key: str) -> Path:
        return self.root / ".meta" / f"{key}.partial.json"

    def _drop_partial(self, key: str) -> None:
        (self.root / ".partial" / key).unlink(missing_ok=True)
        self._partial_source(key).unlink(missing_ok=True)

    def _check_same_source(self, spec: ModelSpec, key: str, target: Path) -> None:
        path = self.root / ".meta" / f"{key}.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        if not isinstance(meta, dict):
            if spec.sha256 is None:
                return  # put there by hand, and the job names no checksum: trust it
            # Put there by hand: the job's checksum decides, once (then it is recorded).
            meta = {"sha256": _sha256_of(target).hexdigest(), "size": target.stat().st_size}
            if meta["sha256"] == spec.sha256:
                _write_json(path, meta)
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
        """Everything that counts toward the cap: finished files and partial downloads."""
        return [
            path
            for folder in self.root.iterdir()
            if folder.is_dir() and (folder.name == ".partial" or not folder.name.startswith("."))
            for path in folder.rglob("*")
            if path.is_file()
        ]

    def _entries(self, leave_out: Path | None = None) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of :meth:`_files`, least recently used first; a file
        another process removed since the listing is passed over."""
        entries = []
        for path in self._files():
            if path == leave_out:
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        return sorted(entries)

    def _make_room(self, size: int, partial: Path, ahead: int = 0) -> int:
        """Evict least recently used files (and abandoned partial downloads) not in use
        until ``partial`` can grow to ``size`` bytes, and ``ahead`` more if that is free:
        a download without a length asks again only after that. Returns the size
        ``partial`` may now reach."""
        cap = self.settings.max_cache_bytes
        if cap is None:
            return sys.maxsize
        if size > cap:
            raise JobError(
                "model_too_large",
                f"a model of {mib(size)} cannot fit the {mib(cap)} model cache",
                {"size": size, "limit": cap},
            )
        goal = min(cap, size + ahead)
        entries = self._entries(leave_out=partial)
        used = sum(length for _, length, _ in entries)
        for _, length, path in entries:
            if used + goal <= cap:
                break
            if self._evict(path):
                used -= length
        if used + size > cap:
            raise JobError(
                "model_too_large",
                f"the model cache ({mib(cap)}) is full of models in use; "
                f"{mib(size)} more does not fit",
                {"size": size, "limit": cap},
            )
        return cap - used

    def _evict(self, path: Path) -> bool:
        """Remove ``path`` unless a job uses it (or, for a partial file, a download is
        writing it); whether it went."""
        relative = path.relative_to(self.root)
        partial = relative.parts[0] == ".partial"
        lock = f"{path.name}.download" if partial else _key_of(relative)
        with (self.root / ".locks" / lock).open("a+b") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # in use
            try:
                if partial:
                    self._drop_partial(path.name)
                else:
                    path.unlink(missing_ok=True)
                    (self.root / ".meta" / f"{lock}.json").unlink(missing_ok=True)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        log.info("model cache: evicted %s", relative)
        return True


@dataclass(frozen=True)
class _Body:
    """A download's response: its stream, the whole file's size if known, the offset the
    stream starts at, and the validator (ETag or Last-Modified) a resume must match."""

    stream: IO[bytes] | _ObjectStream
    total: int | None
    start: int
    validator: str | None


class _ObjectStream:
    """An S3 object's body whose failures read as the network's: botocore raises its own
    types (``IncompleteReadError``, ``ResponseStreamingError``) for a cut connection."""

    def __init__(self, body: IO[bytes]) -> None:
        self.body = body

    def read(self, size: int) -> bytes:
        try:
            return self.body.read(size)
        except Exception as exc:  # whatever botocore or urllib3 make of a dead socket
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None


def _range_start(response: http.client.HTTPResponse) -> int | None:
    """Where a 206's ``Content-Range: bytes START-END/TOTAL`` starts (None: unreadable)."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _validator(response: http.client.HTTPResponse) -> str | None:
    """What ``If-Range`` may name: a strong ETag, else Last-Modified."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _sha256_of(path: Path) -> Any:
    digest = hashlib.sha256()
    with path.open("rb") as done:
        for block in iter(lambda: done.read(_CHUNK), b""):
            digest.update(block)
    return digest


def _write_json(path: Path, value: Any) -> None:
    """Write ``path`` whole or not at all (a crash leaves the old one, or none)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(value, out)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class _Reporter:
    """Download progress: to the job's callback at most every 0.5 s (and at the end), and
    to the operator through :class:`DownloadDisplay`."""

    def __init__(
        self, spec: ModelSpec, total: int | None, start: int, send: ProgressCallback | None
    ) -> None:
        self.spec, self.total, self.send, self.last = spec, total, send, 0.0
        self.display = DownloadDisplay(f"{spec.folder}/{spec.name}", total, start)

    def __call__(self, done: int) -> None:
        self.display.update(done)
        now = time.monotonic()
        if self.send is None or (now - self.last < 0.5 and done != self.total):
            return
        self.last = now
        event = {"event": "download", "model": self.spec.name, "bytes": done}
        self.send({**event, "total": self.total})

    def close(self) -> None:
        self.display.close()


class DownloadDisplay:
    """One download as a person watching it wants it: a tqdm bar when stderr is a
    terminal; else log lines (RunPod's log view, a file) at most one per 5 % or per 10 s,
    each with percent, rate and ETA, so a multi-GB file is ~20 lines, not thousands."""

    STEP = 0.05
    EVERY_S = 10.0

    def __init__(
        self,
        label: str,
        total: int | None,
        start: int = 0,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.start, self.clock = label, total, start, clock
        self.started = self.last_time = clock()
        self.last_done = self.logged = start
        self.bar = None
        stream = stream or sys.stderr
        if stream.isatty():
            from tqdm import tqdm  # ComfyUI's own requirement: always there beside it

            self.bar = tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=label, file=stream, leave=True, dynamic_ncols=True,
            )  # fmt: skip

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            return
        now = self.clock()
        steps = (lambda n: int(n / self.total / self.STEP)) if self.total else None
        crossed = steps is not None and steps(done) > steps(self.last_done)
        due = crossed or now - self.last_time >= self.EVERY_S or done == self.total
        if due and done != self.logged:
            self.last_time, self.last_done, self.logged = now, done, done
            log.info("%s", self.line(done, now))

    def line(self, done: int, now: float) -> str:
        """``downloading model loras/x.safetensors: 45% of 2048.0 MiB, 85.3 MiB/s, ETA 13s``."""
        rate = (done - self.start) / max(now - self.started, 1e-6)
        speed = f"{rate / 1_048_576:.1f} MiB/s"
        if not self.total:
            return f"downloading model {self.label}: {mib(done)}, {speed}"
        eta = (self.total - done) / rate if rate > 0 else None
        left = "done" if done >= self.total else f"ETA {_duration(eta)}"
        percent = f"{100 * done / self.total:.0f}%"
        return f"downloading model {self.label}: {percent} of {mib(self.total)}, {speed}, {left}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


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
) -> tuple[list[ModelSpec], dict[str, Any]]:
    """The models a job needs (``input.models`` plus URLs written into inputs that list
    model files) and the workflow to run: a copy with each such URL replaced by the cached
    file's name, so ComfyUI validates a plain name. ``workflow`` itself is left as it is:
    it may be an app's stored workflow, or a request ``serve`` retries. A URL in any other
    input (a prompt, a URL loader's ``url``) is text. Folders are checked against the
    booted ComfyUI's; nothing is fetched here."""
    folders = sorted(f for f in folder_paths.folder_names_and_paths if f not in _NOT_MODELS)
    for index, spec in enumerate(explicit):
        if spec.folder not in folders:
            raise JobError(
                "invalid_input",
                f"input.models[{index}].folder {spec.folder!r} is not a ComfyUI model folder"
                f"{_closest(spec.folder, folders)}",
            )
    specs = {spec.url: spec for spec in explicit}
    rewritten = dict(workflow)
    for node_id, node in workflow.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        names: dict[str, str] = {}
        for name, value in inputs.items():
            if not isinstance(value, str) or not value.startswith(MODEL_URL_SCHEMES):
                continue
            class_type = node.get("class_type")
            options = _choices(node_classes, class_type, name)
            if options is None:
                continue  # not a list to choose from: the URL is text
            where = f"node {node_id} ({class_type}) input {name}"
            spec = specs.get(value)
            if spec is None:
                folder = _folder_of(class_type, name, options, folder_paths)
                if folder is None:
                    raise JobError(
                        "invalid_input",
                        f"{where} is a URL, but that input does not name a model file; list "
                        "the model in input.models with its folder instead",
                    )
                spec = ModelSpec(value, folder, check_name(name_from_url(value), where))
                specs[value] = spec
            names[name] = spec.name
        if names:
            rewritten[node_id] = {**node, "inputs": {**inputs, **names}}
    return list(specs.values()), rewritten


#: Folders ComfyUI lists that hold no models.
_NOT_MODELS = frozenset({"custom_nodes", "configs"})


def _closest(folder: str, folders: Sequence[str]) -> str:
    """``; did you mean 'loras'?`` for a near miss (``lora``, ``Checkpoints``), else a few
    folders to choose from: the full list is long and the likely one is lost in it."""
    lowered = {name.lower(): name for name in folders}
    near = difflib.get_close_matches(folder.lower(), list(lowered), n=1, cutoff=0.6)
    if near:
        return f"; did you mean {lowered[near[0]]!r}?"
    common = [f for f in ("checkpoints", "loras", "vae", "text_encoders") if f in folders]
    return f" (e.g. {', '.join(common or folders[:4])}; all: {', '.join(folders)})"


def mentions_url(workflow: Mapping[str, Any]) -> bool:
    """Whether any input value is a model URL (the cheap test before :func:`plan`)."""
    return any(
        isinstance(value, str) and value.startswith(MODEL_URL_SCHEMES)
        for node in workflow.values()
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict)
        for value in node["inputs"].values()
    )


def register(cache: ModelCache, folder_paths: Any, folders: Sequence[str]) -> None:
    """Make ComfyUI's loaders list the cache's files for ``folders`` (once each). The
    folders are made now: ComfyUI's file-list cache fails on a listed folder that is gone."""
    for folder in folders:
        path = cache.root / folder
        path.mkdir(parents=True, exist_ok=True)
        if str(path) not in folder_paths.folder_names_and_paths[folder][0]:
            folder_paths.add_model_folder_path(folder, str(path))


def _choices(node_classes: Mapping[str, Any], class_type: Any, name: str) -> list[Any] | None:
    """The options of ``class_type``'s combo input ``name`` (a V1 list, or a V3
    ``("COMBO", {"options": [...]})``); None for any other input, or an unknown node."""
    try:
        types = node_classes[class_type].INPUT_TYPES()
        entry = {**types.get("required", {}), **types.get("optional", {})}[name]
    except Exception:  # an unknown class, or a node pack's INPUT_TYPES that fails
        return None
    kind = entry[0] if isinstance(entry, (list, tuple)) and entry else None
    if isinstance(kind, list):
        return kind
    extra = entry[1] if kind == "COMBO" and len(entry) > 1 else None
    options = extra.get("options") if isinstance(extra, dict) else None
    return options if isinstance(options, list) else None


def _folder_of(class_type: Any, name: str, options: list[Any], folder_paths: Any) -> str | None:
    """The model folder a combo input lists: known loaders by name, any other by the
    folder whose file list its options are."""
    folder = _FOLDER_OF_CLASS_INPUT.get((class_type, name)) or _FOLDER_OF_INPUT.get(name)
    if folder is not None or not options:
        return folder
    matches = [
        folder
        for folder in folder_paths.folder_names_and_paths
        if folder not in ("custom_nodes", "configs")
        and folder_paths.get_filename_list(folder) == options
    ]
    return matches[0] if len(matches) == 1 else None
