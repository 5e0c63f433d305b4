"""pytest plugin: a real S3 API (moto's server) on loopback HTTP, plus a fault-injecting proxy.

Load with ``pytest_plugins = ["s3server"]``. Everything talks real HTTP, so the code under
test exercises boto3's whole stack (signing, connections, retries) rather than a mock.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

TEST_ACCESS_ID = "AKIA-TEST-ID-12345"
TEST_ACCESS_SECRET = "SECRET-TEST-67890"


@dataclass
class S3Server:
    """A running moto server: ``endpoint_url``, a ``client()`` and ``make_bucket``."""

    endpoint_url: str
    host: str
    port: int

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=TEST_ACCESS_ID,
            aws_secret_access_key=TEST_ACCESS_SECRET,
            region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}", host, port)
    finally:
        server.stop()


def bucket_contract(server: S3Server | str, bucket: str, **overrides: Any) -> dict[str, Any]:
    """The job contract's bucket object for ``server``; ``overrides`` replace or add keys
    (a value of None removes the key)."""
    endpoint = server if isinstance(server, str) else server.endpoint_url
    d: dict[str, Any] = {
        "endpointUrl": endpoint,
        "accessId": TEST_ACCESS_ID,
        "accessSecret": TEST_ACCESS_SECRET,
        "bucketName": bucket,
    }
    d.update(overrides)
    return {k: v for k, v in d.items() if v is not None}


def closed_port_url() -> str:
    """An http URL on loopback where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class S3Proxy:
    """A loopback HTTP proxy in front of an S3 server that can fail or slow down PUTs.

    ``fail_puts``: how many PUTs (counted from the start) get a 500 InternalError;
    ``put_delay_s``: sleep before forwarding each PUT. It records ``puts`` (all PUTs seen,
    failed ones included) and ``max_in_flight`` (most PUTs being served at once).
    """

    upstream: S3Server
    fail_puts: int = 0
    put_delay_s: float = 0.0
    puts: int = 0
    max_in_flight: int = 0
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> S3Proxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and answers Expect: 100-continue

            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "PUT":
                    n = proxy._put_started()
                    try:
                        if n <= proxy.fail_puts:
                            self._send(500, {"Content-Type": "application/xml"}, _INJECTED)
                            return
                        time.sleep(proxy.put_delay_s)
                        self._forward(body)
                    finally:
                        proxy._put_done()
                else:
                    self._forward(body)

            def _forward(self, body: bytes) -> None:
                up = proxy.upstream
                conn = http.client.HTTPConnection(up.host, up.port, timeout=30)
                skip = {"host", "connection", "expect", "transfer-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                skip = {"connection", "transfer-encoding", "content-length"}
                headers = {k: v for k, v in resp.getheaders() if k.lower() not in skip}
                self._send(resp.status, headers, data)

            def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _put_started(self) -> int:
        with self._lock:
            self.puts += 1
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            return self.puts

    def _put_done(self) -> None:
        with self._lock:
            self._in_flight -= 1


_INJECTED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>injected failure</Message></Error>"
)
