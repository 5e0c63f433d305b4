"""Where a job may connect: public addresses only, checked on the socket that is opened.

Checking a name and then letting a library resolve it again to connect leaves a gap: a
rebinding DNS server answers "public" to the check and "127.0.0.1" to the connect. So
:func:`checked_socket` resolves once, checks every address, and connects to one of those
same addresses. The job's URLs (``executor/urlguard.py``), a job's own S3 endpoint
(``storage.py``) and ``serve``'s webhooks all connect through these checks. It lives in
``nodes/`` because the S3 module does, and ``nodes/`` never imports ``executor/``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

#: How an operator lets jobs reach private addresses; refusals quote it.
ALLOW_FLAG = "--allow-private-urls (env COMFYUI_RUNPOD_ALLOW_PRIVATE_URLS=1)"

# Ranges whose addresses carry an IPv4 address in their last 32 bits: NAT64 (RFC 6052)
# translates 64:ff9b::7f00:1 to 127.0.0.1, and the deprecated IPv4-compatible ::/96 may
# be routed to the embedded address too. 6to4 (2002::/16) is decoded by ``sixtofour``.
_EMBEDS_IPV4 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("::/96"))
# RFC 8215 local-use NAT64: reaches whatever the local translator reaches. Python < 3.13
# counts it as global.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


class URLRefused(Exception):
    """The guard will not connect to this URL; ``host`` names the host that was refused.

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
    private, link-local such as cloud metadata, or unspecified addresses), also when an
    IPv6 address only wraps an IPv4 one (mapped, NAT64, 6to4, IPv4-compatible)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _LOCAL_NAT64:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and any(ip in net for net in _EMBEDS_IPV4):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return embedded.is_global
    return ip.is_global


def check_addresses(host: str, addresses: Iterable[str]) -> None:
    """Raise ``PrivateAddress`` unless every address ``host`` resolved to is public."""
    if not all(is_public_address(address) for address in addresses):
        raise PrivateAddress(host, f"{host} resolves to a private or local address")


def resolve_checked(host: str, port: int, allow_private: bool) -> list[Any]:
    """``getaddrinfo`` for a stream socket, once; refused unless every answer is public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnresolvableHost(host, f"cannot resolve {host}: {exc}") from None
    if not allow_private:
        check_addresses(host, [info[4][0] for info in infos])
    return infos


def checked_socket(
    host: str,
    port: int,
    timeout: Any,
    allow_private: bool,
    socket_options: Sequence[tuple[int, int, int]] = (),
) -> socket.socket:
    """Resolve ``host`` once, refuse it if any address is not public, and connect to one
    of exactly those addresses (in resolver order, like ``socket.create_connection``)."""
    infos = resolve_checked(host, port, allow_private)
    if not isinstance(timeout, (int, float)):  # a library's "use the default" marker
        timeout = socket.getdefaulttimeout()
    error: OSError = OSError(f"no address to connect to for {host}")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            for option in socket_options:
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def private_first_answer(url: str) -> PrivateAddress | None:
    """Whether ``url``'s host resolves to a private address now: a job's own storage
    endpoint is refused before the job runs, so the refusal costs no GPU time. Only a
    first answer (blocking DNS): every connection is still checked (``checked_pools``),
    and a name that does not resolve now is left to the upload to report."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        resolve_checked(parts.hostname or "", port, allow_private=False)
    except PrivateAddress as exc:
        return exc
    except URLRefused:
        pass
    return None


def checked_pools(
    http_pool: type, https_pool: type, http_conn: type, https_conn: type
) -> dict[str, type]:
    """urllib3 pool classes (``http_pool``/``https_pool`` or a library's subclasses of
    them, with its connection classes) whose connections open through ``checked_socket``,
    public addresses only; a refusal passes through as ``URLRefused``, and connect
    failures are raised as urllib3's own ``_new_conn`` raises them, so the library
    classifies and retries them as always."""
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    class Checked:
        def _new_conn(self: Any) -> socket.socket:
            try:
                options = self.socket_options or ()
                return checked_socket(self._dns_host, self.port, self.timeout, False, options)
            except TimeoutError as e:
                raise ConnectTimeoutError(self, f"connect to {self.host} timed out") from e
            except OSError as e:
                raise NewConnectionError(self, f"Failed to establish a new connection: {e}") from e

    connections = {
        "http": type("CheckedHTTPConnection", (Checked, http_conn), {}),
        "https": type("CheckedHTTPSConnection", (Checked, https_conn), {}),
    }
    pools = {"http": http_pool, "https": https_pool}
    return {
        scheme: type(f"Checked{base.__name__}", (base,), {"ConnectionCls": connections[scheme]})
        for scheme, base in pools.items()
    }


_QUERY = re.compile(r"\?[^\s'\"<>]+")


def redact(text: str, *urls: str) -> str:
    """``text`` (an error's message) without the query, fragment or credentials of
    ``urls`` and without any other ``?query``: signed URLs carry their secret there, and
    libraries quote URLs in their errors (``InvalidURL`` quotes the whole path)."""
    for url in urls:
        parts = urlsplit(url)
        for secret in (parts.query, parts.fragment, parts.password, parts.username):
            if secret:
                text = text.replace(secret, "…").replace(repr(secret)[1:-1], "…")
    return _QUERY.sub("?…", text)
