"""Open http(s) URLs that a job names without letting them reach private networks.

Checking an address and then letting urllib resolve the name again to connect leaves a
gap: a rebinding DNS server answers "public" to the check and "127.0.0.1" to the connect.
So the connections here resolve once, check every address, and connect to one of those
same addresses. HTTPS still verifies the certificate for (and sends SNI with) the URL's
host name, and the Host header stays the name. Every redirect hop opens a new connection
through the same classes, so redirects get the same check.

Proxies are not used: the check has to see the address that is actually connected to.
The checks themselves live in ``nodes/netguard.py`` (the S3 module uses them too).
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

from ..nodes.netguard import NotHttpURL, PrivateAddress, URLRefused, checked_socket

__all__ = ["NotHttpURL", "PrivateAddress", "URLRefused", "open_checked_url", "put_checked_url"]

USER_AGENT = "comfyui-runpod"


def open_checked_url(
    url: str,
    *,
    timeout_s: float,
    allow_private: bool = False,
    headers: Mapping[str, str] | None = None,
) -> http.client.HTTPResponse:
    """GET ``url`` and return the open response (use it as a context manager).

    Raises ``URLRefused`` (one of its subclasses) when the URL may not be fetched,
    ``urllib.error.HTTPError`` for an error status, and ``urllib.error.URLError`` or
    ``OSError`` when the network fails. ``allow_private`` skips only the address check.
    """
    _require_http(url)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    return _checked_opener(allow_private).open(request, timeout=timeout_s)


def put_checked_url(
    url: str,
    body: BinaryIO,
    *,
    size: int,
    content_type: str,
    timeout_s: float,
    allow_private: bool = False,
) -> int:
    """PUT ``size`` bytes of ``body`` to ``url`` (a presigned upload URL) through the same
    guarded connections as :func:`open_checked_url`; return the status.

    The URL's own signature authorizes the upload, so no other header is sent. A redirect
    is an ``HTTPError`` (urllib follows none for PUT): a signed URL names its final place.
    Raises as :func:`open_checked_url` does.
    """
    _require_http(url)
    request = urllib.request.Request(
        url,
        data=body,
        method="PUT",
        headers={
            "User-Agent": USER_AGENT,
            "Content-Type": content_type,
            "Content-Length": str(size),
        },
    )
    with _checked_opener(allow_private).open(request, timeout=timeout_s) as response:
        response.read()
        return response.status


def _checked_opener(allow_private: bool) -> urllib.request.OpenerDirector:
    opener = urllib.request.OpenerDirector()
    for handler in (
        _CheckedHTTPHandler(allow_private),
        _CheckedHTTPSHandler(allow_private),
        _HttpOnlyRedirects(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def _require_http(url: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise NotHttpURL(parsed.hostname or "?", "only http(s) URLs are allowed")


#: Who wants to know of each socket opened in this context (``watching_sockets``).
_socket_watcher: contextvars.ContextVar[Callable[[socket.socket], None] | None] = (
    contextvars.ContextVar("socket_watcher", default=None)
)


@contextlib.contextmanager
def watching_sockets(watch: Callable[[socket.socket], None]) -> Iterator[None]:
    """Call ``watch`` with every socket the URLs opened here connect, redirects included:
    a download's deadline shuts them down (no socket timeout bounds a whole download)."""
    token = _socket_watcher.set(watch)
    try:
        yield
    finally:
        _socket_watcher.reset(token)


def _watched(sock: socket.socket) -> socket.socket:
    watch = _socket_watcher.get()
    if watch is not None:
        watch(sock)
    return sock


class _CheckedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, allow_private: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allow_private = allow_private

    def connect(self) -> None:
        self.sock = _watched(checked_socket(self.host, self.port, self.timeout, self.allow_private))


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(
        self, *args: Any, allow_private: bool, context: ssl.SSLContext, **kwargs: Any
    ) -> None:
        super().__init__(*args, context=context, **kwargs)
        self.allow_private, self.tls = allow_private, context

    def connect(self) -> None:
        sock = _watched(checked_socket(self.host, self.port, self.timeout, self.allow_private))
        # The certificate is checked against the name, not the address we connected to.
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, allow_private: bool) -> None:
        super().__init__()
        self.allow_private = allow_private

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_CheckedHTTPConnection, req, allow_private=self.allow_private)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, allow_private: bool) -> None:
        super().__init__()
        self.allow_private = allow_private
        self.tls = ssl.create_default_context()
        self.tls.set_alpn_protocols(["http/1.1"])

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            _CheckedHTTPSConnection, req, allow_private=self.allow_private, context=self.tls
        )


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects stay on http(s), never go from https down to http, and keep the caller's
    headers (a private host's token) only while scheme, host and port stay the same:
    urllib would copy them to whatever host the redirect names."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        _require_http(newurl)
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if old.scheme == "https" and new.scheme == "http":
            raise NotHttpURL(new.hostname or "?", "a redirect from https to http is refused")
        follow = super().redirect_request(req, fp, code, msg, headers, newurl)
        if follow is not None and _origin(old) != _origin(new):
            follow.headers = {
                k: v for k, v in follow.headers.items() if k.lower() in _CROSS_ORIGIN_HEADERS
            }
        return follow


#: What a redirect to another origin still gets: nothing the job supplied but a range
#: (and the If-Range that keeps a resumed model download to the same file).
_CROSS_ORIGIN_HEADERS = {"user-agent", "range", "if-range"}


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str | None, int | None]:
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname, parts.port or default
