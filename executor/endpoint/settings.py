"""Settings of the local endpoint (``comfyui-runpod serve``), one frozen dataclass.

Defaults follow the hosted API where it has one (``?wait`` 90 s, webhook retried twice
10 s apart); the result retention is one window for ``/run`` and ``/runsync`` alike
(hosted keeps ``/runsync`` results 1 minute only, too short to fetch local files by hand).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_ENDPOINT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    #: The ``<endpoint id>`` in ``/v2/<endpoint id>/...`` (what ``runpod.Endpoint`` takes).
    endpoint_id: str = "local"
    #: When set, every request needs ``Authorization: Bearer <api_key>``.
    api_key: str | None = None
    #: Base of the URLs of local output files (``http://host:port``) when clients reach the
    #: server under another name; by default the address the request came to.
    public_url: str | None = None
    #: How long a finished job's status and local files stay available.
    retention_s: float = 30 * 60
    #: ``/runsync`` waits this long unless ``?wait=`` (ms) says otherwise, at most max.
    default_wait_ms: int = 90_000
    max_wait_ms: int = 300_000
    #: Webhook POSTs: tries in all, the pause between them, and each try's timeout.
    webhook_attempts: int = 3
    webhook_retry_delay_s: float = 10.0
    webhook_timeout_s: float = 10.0
    #: How often queued jobs past their ttl and expired results are swept away (reads
    #: check expiry themselves, so this only bounds how long memory and files linger).
    sweep_interval_s: float = 1.0
    #: Webhooks may go to loopback and private addresses (``--allow-private-urls``).
    allow_private_urls: bool = False
    #: Browser origins (``https://app.example``) that may call the API; any other page's
    #: requests are refused (a local endpoint is otherwise open to every site you visit).
    allow_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _ENDPOINT_ID.fullmatch(self.endpoint_id):
            raise ValueError(
                f"endpoint id {self.endpoint_id!r}: use 1-64 letters, digits, '_' or '-'"
            )
        if self.retention_s <= 0 or self.webhook_attempts < 1 or self.sweep_interval_s <= 0:
            raise ValueError("retention, webhook attempts and sweep interval must be positive")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty")
        object.__setattr__(self, "allow_origins", tuple(map(origin_of, self.allow_origins)))

    @property
    def prefix(self) -> str:
        return f"/v2/{self.endpoint_id}"

    @property
    def loopback(self) -> bool:
        return self.host in _LOOPBACK


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` as browsers send it in ``Origin`` (lower case, no default
    port, no path); ValueError for anything else."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    extra = parts.path not in ("", "/") or parts.query or parts.fragment or parts.username
    if parts.scheme not in ("http", "https") or not parts.hostname or extra:
        raise ValueError(f"origin {url!r}: use scheme://host[:port], e.g. https://app.example")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")
