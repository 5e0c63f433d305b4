"""Azure Blob Storage delivery: ``input.toazure`` and the operator's ``AZURE_STORAGE_*`` env.

The job names a container and either a connection string (``AccountName``/``AccountKey``,
or ``BlobEndpoint``/``SharedAccessSignature``) or an ``accountUrl`` plus a ``sasToken``.
With the account key, a private container's ``files`` are SAS-signed read URLs (like the
S3 presigned GETs); a public container's are plain blob URLs. With only a SAS the worker
cannot sign reads, and it never hands the caller's token back: the URLs stay plain.

As with a job's own S3 endpoint (``nodes/storage.py``), a job's account URL is untrusted:
its sockets go through ``netguard.checked_socket`` (public addresses only) unless the
worker allows private URLs; the operator's env account is trusted. Keys and SAS tokens
never reach a log line, an error or a result. ``azure-storage-blob`` is the optional
``azure`` extra: parsing needs nothing, the upload imports it.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import datetime
import functools
import importlib.util
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..nodes.netguard import (
    ALLOW_FLAG,
    URLRefused,
    checked_pools,
    private_first_answer,
    redact,
)
from .errors import JobError

#: Read URLs live as long as S3's presigned GETs may (7 days) unless ``urlExpiry`` says less.
MAX_URL_EXPIRY_S = 7 * 24 * 3600
#: The operator's twins of ``input.toazure``'s fields.
ENV_NAMES = {
    "connectionString": "AZURE_STORAGE_CONNECTION_STRING",
    "accountUrl": "AZURE_STORAGE_ACCOUNT_URL",
    "sasToken": "AZURE_STORAGE_SAS_TOKEN",
    "container": "AZURE_STORAGE_CONTAINER",
    "prefix": "AZURE_STORAGE_PREFIX",
    "urlExpiry": "AZURE_STORAGE_URL_EXPIRY",
}
#: Azure's rule: 3-63 lower-case letters, digits and single hyphens, no hyphen at an end.
_CONTAINER = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
#: Tries per blob (the SDK's own retry policy), and its socket timeouts.
ATTEMPTS = 3
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60


@dataclass(frozen=True)
class AzureConfig:
    """Where a job's files go. Secrets are kept out of ``repr`` so logs stay safe."""

    #: The blob service endpoint (``https://<account>.blob.core.windows.net``), no query.
    account_url: str
    container: str
    account_name: str | None = None
    account_key: str | None = field(default=None, repr=False)
    #: A SAS token without its leading ``?``.
    sas_token: str | None = field(default=None, repr=False)
    prefix: str = "generations"
    url_expiry_s: int = MAX_URL_EXPIRY_S
    #: The job's own account (``input.toazure.<field>``): its connections go to public
    #: addresses only, and a refusal names this field. None: a trusted account.
    guard_field: str | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        """What an error text must never carry: the key, and the token and its signature."""
        sas = self.sas_token or ""
        signatures = [v for k, v in parse_qsl(sas, keep_blank_values=True) if k == "sig"]
        return tuple(s for s in (self.account_key, sas, *signatures) if s)


def resolve_azure(
    toazure: object,
    environ: Mapping[str, str],
    *,
    use_env: bool,
    allow_private: bool = False,
) -> AzureConfig | None:
    """The job's ``input.toazure``, else (when ``use_env``: the job names no other
    destination and no bucket applies) the operator's env account when
    ``AZURE_STORAGE_CONTAINER`` is set, else None. A given but invalid level is an error,
    never a fall-through to the operator's account."""
    if toazure is not None:
        where = "input.toazure"
        if not isinstance(toazure, Mapping):
            raise JobError(
                "invalid_input",
                f"{where} must be an object with container and connectionString (or "
                f"accountUrl and sasToken), not {type(toazure).__name__}",
            )
        unknown = sorted(str(k) for k in toazure if k not in ENV_NAMES)
        if unknown:
            raise JobError(
                "invalid_input",
                f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(ENV_NAMES)})",
            )
        cfg = _parse(toazure, {k: f"{where}.{k}" for k in ENV_NAMES}, where)
        if allow_private:
            return cfg
        endpoint = "connectionString" if toazure.get("connectionString") else "accountUrl"
        return replace(cfg, guard_field=f"{where}.{endpoint}")
    if not use_env or not (environ.get(ENV_NAMES["container"]) or "").strip():
        return None
    values = {k: environ[v] for k, v in ENV_NAMES.items() if (environ.get(v) or "").strip()}
    return _parse(values, {k: f"env {v}" for k, v in ENV_NAMES.items()}, "env AZURE_STORAGE_*")


def _parse(d: Mapping[str, Any], names: Mapping[str, str], where: str) -> AzureConfig:
    """Validate ``toazure``-shaped settings; ``names`` is how errors name each field.
    Errors name fields and what is wrong, never values: a key pasted into the wrong field
    must not end up in a job result."""

    def bad(key: str, problem: str) -> JobError:
        return JobError("invalid_input", f"{names[key]} {problem}")

    def text(key: str) -> str | None:
        value = d.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            raise bad(key, f"must be a string, not {type(value).__name__}")
        return value.strip()

    container = text("container")
    if container is None:
        raise bad("container", "is missing: name the blob container the files go to")
    if not _CONTAINER.fullmatch(container):
        raise bad(
            "container",
            "is not a container name (3-63 lower-case letters, digits and single hyphens)",
        )
    connection, account_url, sas = text("connectionString"), text("accountUrl"), text("sasToken")
    if connection is not None and (account_url is not None or sas is not None):
        other = names["accountUrl" if account_url is not None else "sasToken"]
        raise bad("connectionString", f"and {other} are both given: send one of them")
    if connection is not None:
        account_url, account_name, key, sas = _connection_string(connection, names)
    else:
        if account_url is None:
            raise bad(
                "connectionString",
                f"is missing: send it, or {names['accountUrl']} with {names['sasToken']}",
            )
        if sas is None:
            raise bad("sasToken", f"is missing: {names['accountUrl']} needs a SAS token")
        account_url = _endpoint(account_url, lambda problem: bad("accountUrl", problem))
        account_name, key = None, None
    if sas is not None:
        sas = sas.removeprefix("?")
        if "sig" not in dict(parse_qsl(sas, keep_blank_values=True)):
            field_name = "sasToken" if connection is None else "connectionString"
            raise bad(field_name, "is not a SAS token (no sig=): copy the whole token")
    prefix = d.get("prefix")  # "" (or "/"): blob names without a prefix
    if prefix is not None and not isinstance(prefix, str):
        raise bad("prefix", f"must be a string, not {type(prefix).__name__}")
    _require_sdk(where)
    return AzureConfig(
        account_url=account_url,
        container=container,
        account_name=account_name,
        account_key=key,
        sas_token=sas,
        prefix="generations" if prefix is None else prefix.strip().strip("/"),
        url_expiry_s=_expiry(d.get("urlExpiry"), lambda problem: bad("urlExpiry", problem)),
    )


def _connection_string(
    text: str, names: Mapping[str, str]
) -> tuple[str, str | None, str | None, str | None]:
    """(blob endpoint, account name, account key, SAS) from ``Name=value;…`` as the Azure
    portal shows it (``AccountKey`` values end in ``=``: split at the first one)."""

    def bad(problem: str) -> JobError:
        return JobError(
            "invalid_input",
            f"{names['connectionString']} is not a storage connection string ({problem}; "
            "expected DefaultEndpointsProtocol=https;AccountName=…;AccountKey=…;"
            "EndpointSuffix=… or BlobEndpoint=…;SharedAccessSignature=…)",
        )

    parts: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise bad("a part is not Name=value")
        parts[name.strip().lower()] = value.strip()
    name, key = parts.get("accountname") or None, parts.get("accountkey") or None
    sas = parts.get("sharedaccesssignature") or None
    if key is None and sas is None:
        raise bad("it has neither AccountKey nor SharedAccessSignature")
    if name is not None and not _ACCOUNT.fullmatch(name):
        raise bad("AccountName is not an account name (3-24 lower-case letters and digits)")
    if key is not None:
        if name is None:
            raise bad("AccountKey needs AccountName")
        try:
            base64.b64decode(key, validate=True)
        except binascii.Error:
            raise bad("AccountKey is not base64") from None
    endpoint = parts.get("blobendpoint")
    if not endpoint:
        if name is None:
            raise bad("it names neither BlobEndpoint nor AccountName")
        protocol = parts.get("defaultendpointsprotocol") or "https"
        suffix = parts.get("endpointsuffix") or "core.windows.net"
        endpoint = f"{protocol}://{name}.blob.{suffix}"
    return _endpoint(endpoint, lambda problem: bad(f"its blob endpoint {problem}")), name, key, sas


def _endpoint(url: str, bad: Any) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:  # "http://[::1", "http://h:99999"
        raise bad("must be an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad("must be an http(s) URL")
    if parts.username or parts.password:
        raise bad("must not contain credentials")
    if parts.query or parts.fragment:
        raise bad("must not carry a query (send the SAS token on its own)")
    return url.rstrip("/")


def _expiry(value: Any, bad: Any) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return MAX_URL_EXPIRY_S
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        seconds = int(value)
    except (TypeError, ValueError):
        raise bad("must be a whole number of seconds") from None
    if seconds <= 0:
        raise bad("must be positive")
    return min(seconds, MAX_URL_EXPIRY_S)


def _require_sdk(where: str) -> None:
    if importlib.util.find_spec("azure.storage.blob") is None:
        raise JobError(
            "invalid_input",
            f"{where}: this worker has no Azure support: install comfyui-runpod[azure] "
            "(azure-storage-blob), or send another destination",
        )


def check_endpoint(cfg: AzureConfig) -> None:
    """Refuse a job's account on a private address before the job runs
    (``netguard.private_first_answer``); every connection is still checked."""
    if cfg.guard_field is None:
        return
    refused = private_first_answer(cfg.account_url)
    if refused is not None:
        raise _refused(cfg, refused)


def _refused(cfg: AzureConfig, cause: URLRefused) -> JobError:
    return JobError(
        "invalid_input",
        f"{cfg.guard_field}: {cause}, which a job's Azure account may not reach; "
        f"the worker's {ALLOW_FLAG} allows it",
    )


def blob_name(cfg: AzureConfig, key_dir: str, name: str) -> str:
    """``<prefix>/<key_dir>/<name>`` without empty, ``.`` or ``..`` segments (the S3 keys'
    rule, ``storage.object_key``)."""
    segments = "/".join((cfg.prefix, key_dir, name)).split("/")
    return "/".join(s for s in segments if s not in ("", ".", ".."))


def upload_files(
    cfg: AzureConfig,
    paths: Sequence[Path],
    names: Sequence[str],
    content_types: Sequence[str],
    key_dir: str,
    *,
    workers: int = 8,
) -> list[str]:
    """Upload each file as ``blob_name(cfg, key_dir, name)`` with its Content-Type; return
    the URLs for ``files`` in input order. Raises ``JobError``: ``upload_failed`` naming the
    file (or the container), ``invalid_input`` when the guard refuses the account."""
    from azure.storage.blob import BlobSasPermissions, ContentSettings, generate_blob_sas

    _quiet_sdk_logs()
    container = _client(cfg, workers)
    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
        seconds=cfg.url_expiry_s
    )
    with container:
        # With the key: one call says whether reads need a SAS (and that the container is
        # there, before any upload). With only a SAS, no read URL can be signed anyway.
        private = cfg.account_key is not None and _call(
            cfg, "open", lambda: container.get_container_properties()
        ).public_access in (None, "")

        def put(index: int) -> str:
            blob = container.get_blob_client(blob_name(cfg, key_dir, names[index]))
            settings = ContentSettings(content_type=content_types[index])

            def send() -> None:
                with paths[index].open("rb") as body:
                    blob.upload_blob(
                        body, overwrite=True, content_settings=settings, max_concurrency=1
                    )

            _call(cfg, f"upload {names[index]} to", send)
            url = blob.url.split("?", 1)[0]
            if not private:
                return url
            sas = generate_blob_sas(
                cfg.account_name or "",
                cfg.container,
                blob.blob_name,
                account_key=cfg.account_key,
                permission=BlobSasPermissions(read=True),
                expiry=expiry,
            )
            return f"{url}?{sas}"

        with concurrent.futures.ThreadPoolExecutor(
            max(1, min(workers, len(paths))), "comfyui-runpod-azure"
        ) as pool:
            futures = [pool.submit(put, i) for i in range(len(paths))]
            try:
                return [future.result() for future in futures]
            finally:
                for future in futures:
                    future.cancel()


def _call(cfg: AzureConfig, action: str, step: Any) -> Any:
    """Run one SDK call; its failures become one redacted ``upload_failed`` line, "could
    not <action> Azure container …"."""
    from azure.core.exceptions import AzureError, HttpResponseError

    try:
        return step()
    except URLRefused as exc:  # raised by a guarded socket, through the SDK untouched
        raise _refused(cfg, exc) from None
    except HttpResponseError as exc:
        reason = f"HTTP {exc.status_code} {exc.error_code or exc.reason or ''}".strip()
    except (AzureError, OSError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    where = urlsplit(cfg.account_url).netloc
    raise JobError(
        "upload_failed",
        f"could not {action} Azure container {cfg.container} at {where}: {_redact(reason, cfg)}",
    )


def _redact(reason: str, cfg: AzureConfig) -> str:
    for secret in cfg.secrets:
        reason = reason.replace(secret, "***")
    return redact(reason)[:300]


def _client(cfg: AzureConfig, workers: int) -> Any:
    """A container client with short retries (a flaky service costs seconds, not the SDK's
    default minutes) and, for a job's own account, guarded sockets and no proxy."""
    from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
    from azure.storage.blob import ContainerClient, ExponentialRetry

    credential: Any = (
        AzureNamedKeyCredential(cfg.account_name or "", cfg.account_key)
        if cfg.account_key is not None
        else AzureSasCredential(cfg.sas_token or "")
    )
    options: dict[str, Any] = {}
    if cfg.guard_field is not None:
        options["transport"] = _guarded_transport(workers)
    return ContainerClient(
        cfg.account_url,
        cfg.container,
        credential=credential,
        retry_policy=ExponentialRetry(
            initial_backoff=1, increment_base=2, retry_total=ATTEMPTS - 1, random_jitter_range=1
        ),
        connection_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        **options,
    )


def _guarded_transport(workers: int) -> Any:
    """azure-core's requests transport on a session whose urllib3 pools connect through
    ``checked_socket``; ``trust_env`` off: a proxy would hide the real address."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from urllib3.util.retry import Retry

    pools = _guarded_pools()

    class GuardedAdapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter(
        pool_maxsize=max(10, workers),
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),
    )
    for scheme in ("http://", "https://"):
        session.mount(scheme, adapter)
    return RequestsTransport(session=session, session_owner=True, use_env_settings=False)


@functools.cache
def _guarded_pools() -> dict[str, type]:
    """urllib3's own pools, their connections through ``checked_socket`` (as
    ``storage.py`` does for botocore's)."""
    from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.connection import HTTPConnection, HTTPSConnection

    return checked_pools(HTTPConnectionPool, HTTPSConnectionPool, HTTPConnection, HTTPSConnection)


class _NoQuery(logging.Filter):
    """urllib3 logs each request line at DEBUG, query and all: a SAS token's signature."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


@functools.cache
def _quiet_sdk_logs() -> None:
    """The SDK logs every request and response at INFO (noise per blob); urllib3's DEBUG
    request lines would carry a SAS: both are kept out of the worker's log."""
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    logging.getLogger("urllib3.connectionpool").addFilter(_NoQuery())
