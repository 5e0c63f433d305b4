"""Open http(s) URLs that a job names without letting them reach private networks.

Checking an address and then letting urllib resolve the name again to connect leaves a
gap: a rebinding DNS server answers "public" to the check and "127.0.0.1" to the connect.
So the connections here resolve once, check every address, and connect to one of those
same addresses. HTTPS still verifies the certificate for (and sends SNI with) the URL's
host name, and the Host header stays the name. Every redirect hop opens a new connection
through the same classes, so redirects get the same check.

Proxies are not used: the check has to see the address that is actually connected to.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

USER_AGENT = "comfyui-runpod"


class URLRefused(Exception):
    """The guard will not fetch this URL; ``host`` names the host that was refused.

    Not an ``OSError`` on purpose: urllib turns those into ``URLError``, and callers would
    then report a refusal as a network failure.
    """

    def __init__(self, host: str, message: str) -> None:
        super().__init__(message)
        self.host = host


class NotHttpURL(URLRefused):
    """The URL (or a redirect target) is not http(s), or has no host."""


class PrivateAddress(URLRefused):
    """The host resolves to at least one address that is not public."""


class UnresolvableHost(URLRefused):
    """DNS gave no answer for the host."""


def is_public_address(address: str) -> bool:
    """Whether a job may reach ``address``: only globally routable ones (no loopback,
    private, link-local such as cloud metadata, or unspecified addresses)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    return ip.is_global


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
    opener = urllib.request.OpenerDirector()
    for handler in (
        _CheckedHTTPHandler(allow_private),
        _CheckedHTTPSHandler(allow_private),
        _HttpOnlyRedirects(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    return opener.open(request, timeout=timeout_s)


def _require_http(url: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise NotHttpURL(parsed.hostname or "?", "only http(s) URLs are allowed")


def _checked_socket(host: str, port: int, timeout: Any, allow_private: bool) -> socket.socket:
    """Resolve ``host`` once, refuse it if any address is not public, and connect to one
    of exactly those addresses (in resolver order, like ``socket.create_connection``)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnresolvableHost(host, f"cannot resolve {host}: {exc}") from None
    if not allow_private and not all(is_public_address(info[4][0]) for info in infos):
        raise PrivateAddress(host, f"{host} resolves to a private or local address")
    if not isinstance(timeout, (int, float)):  # http.client's "use the default" marker
        timeout = socket.getdefaulttimeout()
    error: OSError = OSError(f"no address to connect to for {host}")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


class _CheckedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, allow_private: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allow_private = allow_private

    def connect(self) -> None:
        self.sock = _checked_socket(self.host, self.port, self.timeout, self.allow_private)


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(
        self, *args: Any, allow_private: bool, context: ssl.SSLContext, **kwargs: Any
    ) -> None:
        super().__init__(*args, context=context, **kwargs)
        self.allow_private, self.tls = allow_private, context

    def connect(self) -> None:
        sock = _checked_socket(self.host, self.port, self.timeout, self.allow_private)
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
    """urllib would follow a redirect to ftp://; only http(s) targets are allowed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        _require_http(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)
