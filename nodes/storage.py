"""The project's one S3 module: bucket settings, content types and uploads.

Used by the job's delivery step (output files → bucket URLs) and by the S3 Upload node.
boto3 only: one client per call, our own retries (so a flaky provider costs seconds, not
minutes), and error messages that name the file and bucket but never the credentials.

A job's own endpoint (``input.tobucket``, ``s3Config``) is as untrusted as a URL it names:
its client connects only to public addresses (``netguard``), checked on each socket it
opens. The operator's env bucket and the desktop user's own settings stay trusted.
"""

from __future__ import annotations

import functools
import io
import mimetypes
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit

from .netguard import (
    ALLOW_FLAG,
    URLRefused,
    checked_pools,
    private_first_answer,
    redact,
)

MAX_URL_EXPIRY_S = 7 * 24 * 3600  # S3 rejects presigned URLs valid for longer (SigV4)

# Status codes and S3 error codes worth another try; anything else (no such bucket, access
# denied, bad keys) will fail the same way again, so we report it at once.
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_RETRY_CODES = {"RequestTimeout", "SlowDown", "Throttling", "InternalError", "ServiceUnavailable"}

# Types that mimetypes misses or gets differently across platforms (its table comes partly
# from the OS, so a slim container may not know webp or glb).
_EXTRA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".webm": "video/webm",
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
    ".glb": "model/gltf-binary",
    ".gltf": "model/gltf+json",
    ".obj": "model/obj",
    ".ply": "application/ply",
    ".flac": "audio/flac",
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    # SaveAudioOpus writes .opus files, which are Ogg containers (RFC 7845): browsers play
    # audio/ogg, and platforms disagree on .opus (audio/opus names the bare codec).
    ".opus": "audio/ogg",
    ".json": "application/json",
    ".txt": "text/plain",
    ".safetensors": "application/octet-stream",
}
_DEFAULT_TYPE = "application/octet-stream"


class StorageError(Exception):
    """Base of this module's errors; ``code`` is the job-level error category."""

    code = "storage_error"


class StorageConfigError(StorageError):
    """Bucket settings are missing or malformed (a caller mistake, not an outage)."""

    code = "invalid_input"


class UploadError(StorageError):
    """An upload failed after all attempts."""

    code = "upload_failed"


class EndpointRefused(UploadError):
    """A job's endpoint resolves to an address jobs may not reach: the caller's to fix.

    Raised by reads too; an ``UploadError`` so that delivery keeps a job's outputs, as
    for any upload that failed.
    """

    code = "invalid_input"


@dataclass(frozen=True)
class BucketConfig:
    """Where and how outputs go. Credentials are kept out of ``repr`` so logs stay safe."""

    endpoint_url: str
    access_id: str = field(repr=False)
    access_secret: str = field(repr=False)
    bucket_name: str
    region: str | None = None
    key_prefix: str = "generations"
    url_expiry_s: int = MAX_URL_EXPIRY_S
    public_base_url: str | None = None
    #: Set on a job's own bucket ("input.tobucket.endpointUrl"): its connections go to
    #: public addresses only, and a refusal names this field. None: a trusted bucket.
    guard_field: str | None = None

    def __post_init__(self) -> None:
        # Clamp instead of failing: a too-long expiry is a wish, and S3 would refuse the URL.
        object.__setattr__(self, "url_expiry_s", max(1, min(self.url_expiry_s, MAX_URL_EXPIRY_S)))

    @classmethod
    def from_contract(cls, d: object, where: str) -> BucketConfig:
        """Parse the contract's ``{"endpointUrl", "accessId", "accessSecret", "bucketName"}``.

        Also reads optional ``region``, ``keyPrefix``, ``urlExpiry`` (seconds) and
        ``publicUrl``. ``where`` ("input.tobucket", "s3Config", …) prefixes every error.
        """
        if not isinstance(d, Mapping):
            raise StorageConfigError(
                f"{where}: must be an object with endpointUrl, accessId, accessSecret and "
                f"bucketName (got {type(d).__name__})"
            )
        return _parse(d, where, {k: k for k in _CONTRACT_KEYS})

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> BucketConfig | None:
        """Read ``BUCKET_*`` variables; None when ``BUCKET_ENDPOINT_URL`` is unset or blank."""
        if not (environ.get("BUCKET_ENDPOINT_URL") or "").strip():
            return None
        d = {k: environ[v] for k, v in _ENV_KEYS.items() if (environ.get(v) or "").strip()}
        return _parse(d, "env", _ENV_KEYS)


_CONTRACT_KEYS = (
    "endpointUrl",
    "accessId",
    "accessSecret",
    "bucketName",
    "region",
    "keyPrefix",
    "urlExpiry",
    "publicUrl",
)
_ENV_KEYS = {
    "endpointUrl": "BUCKET_ENDPOINT_URL",
    "accessId": "BUCKET_ACCESS_KEY_ID",
    "accessSecret": "BUCKET_SECRET_ACCESS_KEY",
    "bucketName": "BUCKET_NAME",
    "region": "BUCKET_REGION",
    "keyPrefix": "BUCKET_KEY_PREFIX",
    "urlExpiry": "BUCKET_URL_EXPIRY",
    "publicUrl": "BUCKET_PUBLIC_URL",
}


def _parse(d: Mapping[str, Any], where: str, names: Mapping[str, str]) -> BucketConfig:
    """Validate contract-shaped settings; ``names`` maps contract keys to what users typed.

    Errors quote field names and types, never values: a secret pasted into the wrong field
    must not end up in a job result.
    """

    def text(key: str, required: bool) -> str | None:
        value = d.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise StorageConfigError(f"{where}: {names[key]} is missing")
            return None
        if not isinstance(value, str):
            raise StorageConfigError(
                f"{where}: {names[key]} must be a string (got {type(value).__name__})"
            )
        return value.strip()

    def http_url(key: str, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StorageConfigError(f"{where}: {names[key]} must be an http(s) URL")
        if parts.username or parts.password:
            raise StorageConfigError(f"{where}: {names[key]} must not contain credentials")
        return value.rstrip("/")

    endpoint = http_url("endpointUrl", text("endpointUrl", True) or "")
    access_id = text("accessId", True) or ""
    access_secret = text("accessSecret", True) or ""
    bucket = text("bucketName", False)
    if bucket is None:
        derived = _split_bucket_endpoint(endpoint)
        if derived is None:
            host = urlsplit(endpoint).hostname
            raise StorageConfigError(
                f"{where}: {names['bucketName']} is missing and cannot be derived from "
                f"{names['endpointUrl']} host {host!r} (expected e.g. "
                "https://my-bucket.s3.us-east-1.amazonaws.com)"
            )
        bucket, endpoint = derived
    region = text("region", False) or _region_from_endpoint(endpoint)

    prefix = d.get("keyPrefix")  # "" (or "/") is a valid choice: keys without a prefix
    if prefix is not None and not isinstance(prefix, str):
        raise StorageConfigError(f"{where}: {names['keyPrefix']} must be a string")
    expiry = d.get("urlExpiry")
    if expiry is None or (isinstance(expiry, str) and not expiry.strip()):
        expiry_s = MAX_URL_EXPIRY_S
    else:
        try:
            if isinstance(expiry, bool) or (isinstance(expiry, float) and not expiry.is_integer()):
                raise ValueError
            expiry_s = int(expiry)
        except (TypeError, ValueError):
            raise StorageConfigError(
                f"{where}: {names['urlExpiry']} must be a whole number of seconds"
            ) from None
        if expiry_s <= 0:
            raise StorageConfigError(f"{where}: {names['urlExpiry']} must be positive")
    public = text("publicUrl", False)

    return BucketConfig(
        endpoint_url=endpoint,
        access_id=access_id,
        access_secret=access_secret,
        bucket_name=bucket,
        region=region,
        key_prefix="generations" if prefix is None else prefix.strip().strip("/"),
        url_expiry_s=expiry_s,
        public_base_url=http_url("publicUrl", public) if public else None,
    )


def _split_bucket_endpoint(endpoint: str) -> tuple[str, str] | None:
    """Find the bucket in a virtual-hosted (or path-style) endpoint URL.

    ``https://b.s3.us-east-1.amazonaws.com`` → ``("b", "https://s3.us-east-1.amazonaws.com")``
    (also Backblaze/Wasabi ``b.s3.<region>.…`` and ``b.<region>.digitaloceanspaces.com``);
    ``https://host/b`` → ``("b", "https://host")`` for R2/MinIO-style URLs.
    """
    parts = urlsplit(endpoint)
    base = f"{parts.scheme}://"
    port = f":{parts.port}" if parts.port else ""
    path = parts.path.strip("/")
    if path and "/" not in path:
        return path, f"{base}{parts.netloc}"
    if path:
        return None
    labels = (parts.hostname or "").split(".")
    for i, label in enumerate(labels[1:], start=1):
        if label == "s3" or label.startswith("s3-"):
            return ".".join(labels[:i]), base + ".".join(labels[i:]) + port
    if len(labels) == 4 and labels[2:] == ["digitaloceanspaces", "com"]:
        return labels[0], base + ".".join(labels[1:]) + port
    return None


def _region_from_endpoint(endpoint: str) -> str | None:
    """``s3.eu-west-1.amazonaws.com`` → ``eu-west-1``: SigV4 signs with the region, so AWS
    (and presigned URLs) need the right one even with a custom endpoint."""
    labels = (urlsplit(endpoint).hostname or "").split(".")
    if labels[0] == "s3" and len(labels) >= 4:
        region = labels[2] if labels[1] == "dualstack" else labels[1]
        return None if region == "amazonaws" else region
    if labels[0].startswith("s3-") and labels[0] not in ("s3-accelerate", "s3-external-1"):
        return labels[0][3:]
    if len(labels) == 3 and labels[1:] == ["digitaloceanspaces", "com"]:
        return labels[0]
    return None


def resolve_bucket(
    tobucket: object,
    s3_config: object,
    environ: Mapping[str, str] | None = None,
    *,
    allow_private: bool = False,
) -> BucketConfig | None:
    """Pick the bucket for a job: ``input.tobucket`` > request ``s3Config`` > env.

    A level that is given (not None) but invalid is an error rather than a fall-through:
    silently uploading to the operator's bucket instead of the caller's would be worse.
    The job's own levels are guarded (public addresses only) unless ``allow_private``.
    """
    for value, where in ((tobucket, "input.tobucket"), (s3_config, "s3Config")):
        if value is not None:
            cfg = BucketConfig.from_contract(value, where)
            guard = None if allow_private else f"{where}.endpointUrl"
            return replace(cfg, guard_field=guard)
    return BucketConfig.from_env(os.environ if environ is None else environ)


def content_type_for(name: str) -> str:
    """The Content-Type to store, so that presigned URLs display in a browser."""
    suffix = Path(name).suffix.lower()
    return _EXTRA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or _DEFAULT_TYPE


@dataclass
class UploadedFile:
    """One stored object: ``path`` is the local file (None for ``upload_bytes``)."""

    path: Path | None
    key: str
    url: str
    content_type: str
    size: int


def object_key(cfg: BucketConfig, key_dir: str, name: str) -> str:
    """``<prefix>/<key_dir>/<name>`` without empty, ``.`` or ``..`` segments."""
    segments = "/".join((cfg.key_prefix, key_dir, name)).split("/")
    return "/".join(s for s in segments if s not in ("", ".", ".."))


def upload_files(
    cfg: BucketConfig,
    files: Sequence[Path],
    key_dir: str,
    *,
    names: Sequence[str] | None = None,
    max_workers: int = 8,
    attempts: int = 3,
    backoff_s: float = 0.5,
) -> list[UploadedFile]:
    """Upload ``files`` in parallel; results come back in input order.

    Each object is ``<key_prefix>/<key_dir>/<name>`` (``name`` defaults to the file name).
    On the first file that fails for good, pending uploads are cancelled and
    ``UploadError`` is raised naming that file.
    """
    paths = [Path(f) for f in files]
    names = [p.name for p in paths] if names is None else list(names)
    if len(names) != len(paths):
        raise ValueError(f"upload_files: {len(paths)} files but {len(names)} names")
    keys = [object_key(cfg, key_dir, n) for n in names]
    if len(set(keys)) != len(keys):
        raise ValueError("upload_files: two files would get the same object key")
    if not paths:
        return []
    workers = max(1, min(max_workers, len(paths)))
    client = _client(cfg, workers)

    def one(i: int) -> UploadedFile:
        path = paths[i]
        return _put(
            client, cfg, keys[i], names[i], lambda: path.open("rb"), path, attempts, backoff_s
        )

    if workers == 1:
        return [one(i) for i in range(len(paths))]
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3-upload")
    try:
        futures = [pool.submit(one, i) for i in range(len(paths))]
        wait(futures, return_when=FIRST_EXCEPTION)  # fail fast, naming the file that failed
        for f in futures:
            if f.done() and (error := f.exception()) is not None:
                raise error
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def upload_bytes(
    cfg: BucketConfig,
    data: bytes,
    key_dir: str,
    name: str,
    content_type: str | None = None,
    *,
    attempts: int = 3,
    backoff_s: float = 0.5,
) -> UploadedFile:
    """Upload in-memory ``data`` (what a node has in hand) with the same retries."""
    key = object_key(cfg, key_dir, name)
    client = _client(cfg, 1)
    return _put(
        client, cfg, key, name, lambda: io.BytesIO(data), None, attempts, backoff_s, content_type
    )


def open_object(
    cfg: BucketConfig, bucket: str, key: str, offset: int = 0
) -> tuple[IO[bytes], int, bool]:
    """Stream ``s3://bucket/key`` with ``cfg``'s endpoint and keys, from ``offset``:
    (body, whole size, whether the body starts at ``offset``). Errors are redacted."""
    client = _client(cfg, 1)
    request = {"Bucket": bucket, "Key": key}
    if offset:
        request["Range"] = f"bytes={offset}-"
    try:
        answer = client.get_object(**request)
    except Exception as e:
        _check_refused(e, cfg)
        _, reason = _classify(e)
        raise StorageError(_redact(reason, cfg)) from None
    resumed = bool(offset) and "ContentRange" in answer
    total = int(answer["ContentLength"]) + (offset if resumed else 0)
    return answer["Body"], total, resumed


def _client(cfg: BucketConfig, workers: int) -> Any:
    """A fresh client: a new Session each time, since the default one is not thread-safe."""
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        connect_timeout=10,
        read_timeout=60,
        retries={"mode": "standard", "total_max_attempts": 1},  # we retry in _put
        max_pool_connections=max(10, workers),
        # botocore ≥ 1.36 adds CRC checksums by default, which several S3-compatible
        # services reject; only send them when an operation requires it.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=cfg.endpoint_url,
        aws_access_key_id=cfg.access_id,
        aws_secret_access_key=cfg.access_secret,
        region_name=cfg.region or "us-east-1",
        config=config,
    )
    if cfg.guard_field is not None:
        _guard(client)
    return client


def _guard(client: Any) -> None:
    """Make this one client open its sockets with ``checked_socket`` (public addresses
    only, the checked address is the one connected to; TLS still verifies the host name).

    botocore has no public hook for this, so the client's own urllib3 pool classes are
    swapped; if botocore changes shape, guarded uploads fail loudly instead of silently
    going unchecked. Proxies would hide the real address, so a guarded client has none.
    """
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    pools = getattr(session, "_pool_classes_by_scheme", None)
    manager = getattr(session, "_manager", None)
    if not isinstance(pools, dict) or manager is None or not hasattr(session, "_proxy_config"):
        raise RuntimeError("this botocore cannot guard a job's S3 endpoint; pin botocore")
    guarded = _guarded_pools()
    session._pool_classes_by_scheme = guarded
    manager.pool_classes_by_scheme = guarded
    session._proxy_config.proxy_url_for = lambda url: None


@functools.cache
def _guarded_pools() -> dict[str, type]:
    """botocore's urllib3 pools, their connections through ``checked_socket``."""
    from botocore import awsrequest

    return checked_pools(
        awsrequest.AWSHTTPConnectionPool,
        awsrequest.AWSHTTPSConnectionPool,
        awsrequest.AWSHTTPConnection,
        awsrequest.AWSHTTPSConnection,
    )


def _put(
    client: Any,
    cfg: BucketConfig,
    key: str,
    label: str,
    open_body: Callable[[], IO[bytes]],
    path: Path | None,
    attempts: int,
    backoff_s: float,
    content_type: str | None = None,
) -> UploadedFile:
    """PUT one object with retries; the one code path for files and bytes.

    The body is reopened for every attempt so that a retry never sends a half-read stream.
    """
    ctype = content_type or content_type_for(label)
    size = 0
    for attempt in range(1, max(1, attempts) + 1):
        try:
            body = open_body()
            size = body.seek(0, io.SEEK_END)
            body.seek(0)
        except OSError as e:  # the local file went away: retrying will not help
            raise _upload_error(cfg, label, e.strerror or type(e).__name__) from None
        try:
            with body:
                client.put_object(Bucket=cfg.bucket_name, Key=key, Body=body, ContentType=ctype)
            break
        except Exception as e:
            _check_refused(e, cfg)
            retry, reason = _classify(e)
            if not retry or attempt >= attempts:
                raise _upload_error(cfg, label, _redact(reason, cfg)) from None
            delay = backoff_s * 2 ** (attempt - 1)
            time.sleep(delay * random.uniform(0.5, 1.0))  # jitter: parallel retries spread
    return UploadedFile(path, key, _url(client, cfg, key), ctype, size)


def check_endpoint(cfg: BucketConfig) -> None:
    """Refuse a job's endpoint that resolves to a private address before the job runs
    (``netguard.private_first_answer``); every connection is still checked (``_guard``)."""
    if cfg.guard_field is None or not cfg.endpoint_url:
        return
    refused = private_first_answer(cfg.endpoint_url)
    if refused is not None:
        raise _refused(cfg, refused)


def _check_refused(e: Exception, cfg: BucketConfig) -> None:
    """Raise ``EndpointRefused`` when ``e`` is the guard refusing the job's endpoint
    (botocore wraps it as the ``error`` of an ``HTTPClientError``)."""
    cause = getattr(e, "kwargs", {}).get("error")
    if isinstance(cause, URLRefused):
        raise _refused(cfg, cause) from None


def _refused(cfg: BucketConfig, cause: URLRefused) -> EndpointRefused:
    return EndpointRefused(
        f"{cfg.guard_field}: {cause}, which a job's bucket may not reach; "
        f"the worker's {ALLOW_FLAG} allows it"
    )


def _classify(e: Exception) -> tuple[bool, str]:
    """(worth retrying?, short reason) from a botocore error.

    Only a transport failure (refused, reset or timed-out connection) or a retryable
    status can succeed on another try; anything else (no credentials, a parameter botocore
    rejects, a bug) would fail the same way again, so it is reported at once, by type.
    """
    from botocore.exceptions import ClientError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(err.get("Code") or status or "error")
        message = str(err.get("Message") or "").strip()
        retry = status in _RETRY_STATUS or code in _RETRY_CODES
        return retry, f"{code}: {message}" if message else code
    return _is_transient(e), f"{type(e).__name__}: {e}"


def _is_transient(e: Exception) -> bool:
    """A connection that failed, closed or timed out, as botocore's own retries see it.

    A TLS failure is usually a certificate problem, which another try will not fix.
    """
    from botocore import exceptions as bc

    if isinstance(e, bc.SSLError):
        return False
    # bc.ConnectionError: refused, endpoint unreachable, connect timeout, proxy;
    # bc.HTTPClientError: read timeout, connection closed mid-request.
    # The builtins cover a socket error that reaches us unwrapped.
    return isinstance(e, (bc.ConnectionError, bc.HTTPClientError, ConnectionError, TimeoutError))


def _redact(reason: str, cfg: BucketConfig) -> str:
    """Belt and braces: providers' messages should not echo keys, but never let them out."""
    for secret in (cfg.access_secret, cfg.access_id):
        if secret:
            reason = reason.replace(secret, "***")
    return redact(reason)[:300]


def _upload_error(cfg: BucketConfig, label: str, reason: str) -> UploadError:
    return UploadError(
        f"upload_failed: could not upload {label} to bucket {cfg.bucket_name}: {reason}"
    )


def _url(client: Any, cfg: BucketConfig, key: str) -> str:
    """A URL the caller can fetch: public when configured, else presigned GET."""
    if cfg.public_base_url:
        return f"{cfg.public_base_url}/{quote(key)}"
    return client.generate_presigned_url(
        "get_object",
        Params={"Bucket": cfg.bucket_name, "Key": key},
        ExpiresIn=cfg.url_expiry_s,
    )
