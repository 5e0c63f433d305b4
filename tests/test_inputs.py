"""Input media downloads: the private-address guard holds against DNS rebinding.

No traffic leaves loopback. A rebinding DNS server cannot exist here, so the tests fake one
by patching ``socket.getaddrinfo`` for made-up ``.test`` names, and patch ``is_global`` (the
"may a job reach this address" predicate) so that 127.0.0.2 counts as public while
127.0.0.1 stays private. Two servers share one port, one on each of those addresses.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from comfyui_runpod.executor.errors import JobError, mib
from comfyui_runpod.executor.inputs import MediaSettings, materialize
from comfyui_runpod.executor.request import InputMedia
from reliability_kit import pixel, png_bytes

PUBLIC, PRIVATE = "127.0.0.2", "127.0.0.1"  # as far as the patched predicate is concerned


class Site:
    """A loopback HTTP(S) server: ``/in.png`` a PNG of ``color``, ``/to?<url>`` a 302 to
    ``<url>``. Records the paths, Host headers and TLS server names it was asked for."""

    def __init__(self, address: str, port: int, color: tuple[int, int, int]) -> None:
        site = self
        self.hits: list[str] = []
        self.hosts: list[str] = []
        self.server_names: list[str | None] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                site.hits.append(self.path)
                site.hosts.append(self.headers.get("Host", ""))
                if self.path.startswith("/to?"):
                    self.send_response(302)
                    self.send_header("Location", self.path[4:])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = png_bytes(color)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def use_tls(self, cert: Path, key: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)

    def start(self) -> Site:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sites() -> Iterator[tuple[Site, Site]]:
    """(public, private): one server on 127.0.0.2 and one on 127.0.0.1, same port."""
    for _ in range(20):
        public = Site(PUBLIC, 0, (0, 200, 0))
        try:
            private = Site(PRIVATE, public.port, (200, 0, 0))
            break
        except OSError:  # the port is taken on 127.0.0.1: try another
            public.server.server_close()
    else:
        pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")
    yield public.start(), private.start()
    public.stop()
    private.stop()


class Resolver:
    """Fake DNS for made-up names: ``answers[name](n)`` is the address of the n-th lookup
    of ``name`` (from 1); ``lookups[name]`` counts them. Other names resolve for real."""

    def __init__(self) -> None:
        self.answers: dict[str, Callable[[int], str]] = {}
        self.lookups: dict[str, int] = {}
        self.real = socket.getaddrinfo

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> list:
        if host not in self.answers:
            return self.real(host, port, *args, **kwargs)
        self.lookups[host] = self.lookups.get(host, 0) + 1
        ip = self.answers[host](self.lookups[host])
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, int(port)))]


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    fake = Resolver()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    is_global = ipaddress.IPv4Address.is_global.fget  # type: ignore[attr-defined]
    monkeypatch.setattr(
        ipaddress.IPv4Address, "is_global", property(lambda a: str(a) == PUBLIC or is_global(a))
    )
    return fake


def fetch(tmp_path: Path, url: str, **settings: Any) -> bytes:
    [path] = materialize([InputMedia("in.png", url)], tmp_path / "in", MediaSettings(**settings))
    return path.read_bytes()


def test_rebinding_dns_cannot_reach_a_private_address(tmp_path, sites, resolver):
    public, private = sites
    # The first answer passes the check; every later one is loopback.
    resolver.answers["rebind.test"] = lambda n: PUBLIC if n == 1 else PRIVATE

    data = fetch(tmp_path, f"http://rebind.test:{public.port}/in.png")

    assert private.hits == [], "the download reached the private address the name rebound to"
    assert public.hits == ["/in.png"] and public.hosts == [f"rebind.test:{public.port}"]
    assert pixel(data) == (0, 200, 0)
    assert resolver.lookups["rebind.test"] == 1  # resolved once: checked = connected


@pytest.mark.parametrize(
    ("target", "culprit"),
    [
        ("http://127.0.0.1:{port}/in.png", "127.0.0.1 resolves to a private or local address"),
        ("http://private.test:{port}/in.png", "private.test resolves to a private or local"),
        ("ftp://127.0.0.1:{port}/in.png", "only http(s) URLs are allowed"),
    ],
)
def test_redirects_get_the_same_check(tmp_path, sites, resolver, target, culprit):
    public, private = sites
    resolver.answers["public.test"] = lambda n: PUBLIC
    resolver.answers["private.test"] = lambda n: PRIVATE
    target = target.format(port=private.port)

    with pytest.raises(JobError) as caught:
        fetch(tmp_path, f"http://public.test:{public.port}/to?{target}")

    assert caught.value.code == "invalid_input"
    assert caught.value.message.startswith("input image in.png: ") and culprit in str(caught.value)
    assert public.hits == [f"/to?{target}"] and private.hits == []


def test_allow_private_urls_still_follows_redirects(tmp_path, sites, resolver):
    public, private = sites
    resolver.answers["public.test"] = lambda n: PUBLIC
    url = f"http://public.test:{public.port}/to?http://127.0.0.1:{private.port}/in.png"
    assert pixel(fetch(tmp_path, url, allow_private_urls=True)) == (200, 0, 0)


def test_https_checks_the_certificate_and_sends_sni_for_the_name(tmp_path, resolver, monkeypatch):
    cert, key = self_signed(tmp_path, "secure.test")
    public = Site(PUBLIC, 0, (0, 0, 200))
    public.use_tls(cert, key)
    public.start()
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test certificate
        resolver.answers["secure.test"] = resolver.answers["other.test"] = lambda n: PUBLIC

        assert pixel(fetch(tmp_path, f"https://secure.test:{public.port}/in.png")) == (0, 0, 200)
        assert public.server_names == ["secure.test"]
        assert public.hosts == [f"secure.test:{public.port}"]

        with pytest.raises(JobError, match=r"could not download from other\.test: .*certificate"):
            fetch(tmp_path, f"https://other.test:{public.port}/in.png")
    finally:
        public.stop()


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` only (not for the address it resolves to)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_size_messages_say_mib_like_the_limits(tmp_path):
    cap = MediaSettings().max_bytes  # 50 MiB
    too_big = "A" * (cap // 3 * 4 + 8)  # base64 of just over 50 MiB
    with pytest.raises(JobError) as caught:
        materialize([InputMedia("in.png", too_big)], tmp_path, MediaSettings())
    assert str(caught.value) == "invalid_input: input image in.png is larger than 50.0 MiB"
    assert mib(10 * 1024 * 1024 + 1) == "10.0 MiB" and mib(1_000_000) == "1.0 MiB"
